"""``python -m bench [name ...]``: run the benchmarks (all by default)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = [
    "pipeline",
    "operators",
    "expressions",
    "backpressure",
    "websocket",
    "websocket_latency",
    "kafka",
    "kafka_job",
    "state_engines",
    "durable_state",
    "activations",
    "many_keys",
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", choices=BENCHMARKS, help="which to run")
    args = parser.parse_args()
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== {name}")
        module.main()


if __name__ == "__main__":
    main()
