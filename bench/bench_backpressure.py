"""Placeholder replaced once the tool activation sink lands."""


def main() -> None:
    print("backpressure benchmark: pending the tool activation sink")
