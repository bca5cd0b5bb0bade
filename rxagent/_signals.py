"""Stopping a command cleanly on Ctrl-C or SIGTERM (shared by ``rxagent demo`` and
``rxagent run``): the signal sets an event the command's loop watches, so it can
drain its pipelines and print the final state instead of dying with a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["sleep_or_stop", "stop_on_signals"]


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT and SIGTERM set (on the running loop, where the
    platform allows signal handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
