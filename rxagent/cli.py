"""The ``rxagent`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from . import __version__

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="rxagent")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """rxagent: reactive pipelines that turn live data into agent state and tool calls."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--duration", type=float, default=12.0, show_default=True, help="Seconds to run.")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="Ticks per second.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed of the feed.")
@click.option("--window", type=float, default=5.0, show_default=True, help="Window seconds.")
@click.option(
    "--threshold", type=float, default=0.3, show_default=True, help="Alert on a move of this %."
)
@click.option("--live/--no-live", default=None, help="Live table (default: when on a terminal).")
def demo(
    duration: float, rate: float, seed: int, window: float, threshold: float, live: bool | None
) -> None:
    """Run the market-feed demo: a simulated feed served on 127.0.0.1 (no outside network)
    read over WebSocket, deduplicated, reordered, throttled and windowed into live state,
    with an alert tool activated when a move passes the threshold."""
    from .demo import run_demo

    if live is None:
        live = sys.stdout.isatty()
    try:
        asyncio.run(
            run_demo(
                duration=duration,
                rate=rate,
                seed=seed,
                live=live,
                window=window,
                threshold=threshold,
            )
        )
    except KeyboardInterrupt:  # pragma: no cover - second Ctrl-C
        raise SystemExit(130) from None


if __name__ == "__main__":  # pragma: no cover
    main()
