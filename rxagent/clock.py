"""Reading a reactivex scheduler's clock in seconds, virtual or wall.

Every time-based piece reads time through its scheduler, so the same code runs
on the asyncio scheduler and on a ``TestScheduler`` in virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from reactivex.abc import SchedulerBase
from reactivex.scheduler import VirtualTimeScheduler

__all__ = ["advance", "is_virtual", "next_due", "scheduler_clock", "scheduler_seconds", "snap"]


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
