"""Reading a reactivex scheduler's clock in seconds, virtual or wall.

Every time-based piece reads time through its scheduler, so the same code runs
on the asyncio scheduler and on a ``TestScheduler`` in virtual time; pieces that
await (the tool sink's timeouts and retry waits) wait on it with :func:`sleep`
and :func:`timeout` (docs/architecture.md Decision 8).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from reactivex.abc import SchedulerBase
from reactivex.scheduler import VirtualTimeScheduler

__all__ = [
    "advance",
    "is_virtual",
    "next_due",
    "scheduler_clock",
    "scheduler_seconds",
    "sleep",
    "snap",
    "timeout",
]


def snap(t: float) -> float:
    """``t`` seconds to the microsecond, the resolution of reactivex's clocks.

    Every comparison of a time with a bound made by adding or subtracting
    durations goes through this, on both sides: ``0.001 + 0.008`` is
    ``0.009000000000000001`` and ``0.010 - 0.009`` is ``0.0010000000000000009``
    in floats, and a time exactly on such a bound must count as on it.
    """
    return round(t, 6)


def is_virtual(scheduler: SchedulerBase) -> bool:
    """True for virtual-time schedulers (``TestScheduler`` and kin)."""
    return isinstance(scheduler, VirtualTimeScheduler)


def scheduler_seconds(scheduler: SchedulerBase) -> float:
    """The scheduler's notion of now, in seconds (epoch seconds for wall clocks,
    seconds since the start for a virtual clock started at 0)."""
    if isinstance(scheduler, VirtualTimeScheduler):
        clock: Any = scheduler.clock
        if isinstance(clock, datetime):
            return clock.timestamp()
        return clock.total_seconds() if isinstance(clock, timedelta) else float(clock)
    now: Any = scheduler.now
    if isinstance(now, datetime):
        return now.timestamp()
    return float(now)


def scheduler_clock(scheduler: SchedulerBase) -> Callable[[], float]:
    """A function reading ``scheduler``'s clock in seconds (see :func:`scheduler_seconds`)."""
    return partial(scheduler_seconds, scheduler)


def next_due(scheduler: VirtualTimeScheduler) -> datetime | None:
    """When the earliest action scheduled on a virtual clock is due (None: nothing is).

    reactivex has no public way to ask; every version since 4.0 keeps a
    ``PriorityQueue`` of scheduled items in ``_queue``.
    """
    queue = getattr(scheduler, "_queue", None)
    try:
        return None if not queue else queue.peek().duetime
    except (AttributeError, IndexError):
        return None


def advance(scheduler: VirtualTimeScheduler, to: datetime, *, flush: bool = False) -> None:
    """Advance a virtual clock to ``to``, running what is due. ``advance_to`` the
    current time is a no-op in reactivex, so with ``flush`` actions due *now* run
    by advancing one microsecond (the clock's resolution)."""
    now = scheduler.now
    if to > now:
        scheduler.advance_to(to)
    elif flush:
        scheduler.advance_to(now + timedelta(microseconds=1))


def _on_virtual_clock(
    scheduler: SchedulerBase | None, seconds: float, then: Callable[[], None]
) -> Callable[[], None]:
    """Call ``then`` on the running loop once ``scheduler``'s virtual clock has
    advanced ``seconds``; returns a function that cancels it."""
    assert scheduler is not None
    loop = asyncio.get_running_loop()
    live = [True]

    def fire() -> None:
        if live[0]:
            then()

    def due(_scheduler: Any, _state: Any = None) -> None:
        # the clock is advanced by a test or a virtual source, on the loop or not
        loop.call_soon_threadsafe(fire)

    timer = scheduler.schedule_relative(max(0.0, seconds), due)

    def cancel() -> None:
        live[0] = False
        timer.dispose()

    return cancel


async def sleep(scheduler: SchedulerBase | None, seconds: float) -> None:
    """Wait ``seconds`` of ``scheduler``'s clock: real seconds on a wall clock (or
    no scheduler); on a virtual clock, until the clock has been advanced that far."""
    if scheduler is None or not is_virtual(scheduler):
        await asyncio.sleep(seconds)
        return
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    cancel = _on_virtual_clock(scheduler, seconds, wake)
    try:
        await woken
    finally:
        cancel()


@asynccontextmanager
async def timeout(
    scheduler: SchedulerBase | None, seconds: float | None
) -> AsyncIterator[asyncio.Timeout]:
    """:func:`asyncio.timeout` on ``scheduler``'s clock: on a virtual clock the
    block is cancelled (``scope.expired()`` is then true) once the clock has been
    advanced ``seconds`` past its start."""
    if seconds is None or scheduler is None or not is_virtual(scheduler):
        async with asyncio.timeout(seconds) as scope:
            yield scope
        return
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as scope:
        cancel = _on_virtual_clock(scheduler, seconds, lambda: scope.reschedule(loop.time()))
        try:
            yield scope
        finally:
            cancel()
