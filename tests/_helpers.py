"""What the suite's real-time tests share: the time scale, a scaled millisecond, ``until()``
and a sink that stalls (``Stall``).

Import it as ``from _helpers import MS, until`` (``tests/`` is on ``sys.path``: pytest puts
the directory of the root ``conftest.py`` there). It is the suite's own, not shipped in
``rxagent.testing``: a user's pipeline test runs in virtual time (docs/testing.md), where
nothing waits on the machine and there is nothing to poll or stretch.

On a slow or loaded machine set ``RXAGENT_TEST_TIME_SCALE`` (e.g. ``3``): every real-time
wait of the suite (``MS``, ``until()``'s timeout, the ``time_scale`` fixture, the Kafka
broker's start) is multiplied by it. Virtual time is never scaled: a ``TestScheduler`` does
not depend on the machine, so tests in virtual time use ``VIRTUAL_MS``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from rxagent.events import Batch, Event
from rxagent.sinks import Sink
from rxagent.testing.marbles import DEFAULT_FRAME

#: Multiply real-time waits by this on slow machines.
TIME_SCALE = float(os.environ.get("RXAGENT_TEST_TIME_SCALE", "1"))

#: One millisecond of real time (sleeps, tool delays, timeouts on the event loop), scaled.
MS = 0.001 * TIME_SCALE

#: One millisecond of virtual time (a ``TestScheduler``'s; one frame of a marble diagram by
#: default): never scaled.
VIRTUAL_MS = DEFAULT_FRAME


async def until(
    condition: Callable[[], bool], timeout: float = 10.0, *, interval: float = 0.002
) -> None:
    """Wait, without blocking the loop, until ``condition()`` holds; fail after ``timeout``
    seconds (times ``TIME_SCALE``). ``condition`` is polled every ``interval`` seconds."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout * TIME_SCALE:g} s"
        await asyncio.sleep(interval)


class Stall(Sink):
    """Holds every event (and its credit) until ``release()``."""

    kind = "stall"

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Event] = []
        self.released = False
        self.count = 0

    def on_batch(self, batch: Batch) -> None:
        self.count += len(batch)
        if self.released:
            batch.end_all()
        else:
            self.held.extend(batch.events(take=True))

    def release(self) -> None:
        self.released = True
        for event in self.held:
            event.end()
        self.held.clear()
