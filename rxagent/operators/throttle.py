"""Throttling in time, per key: throttle_first, throttle_last, throttle_latest,
debounce, sample and rate_limit.

Time is the scheduler's (processing time): the one given as ``scheduler=``, else
the one the stage is subscribed with (the pipeline's, or a marble test's
``TestScheduler``), else the batch context's. So every operator here runs in
virtual time in tests.

**The flow-control rule.** An event these operators let through is passed on;
one they let go is *dropped*: ended at once and counted in the stage's
``dropped``. An event kept for later (the latest of a key waiting for the end of
its interval, an event delayed by ``rate_limit``) is *held*: it keeps its
credit until it is emitted, so a source whose credit is all held pauses.

**Timing rules**, the same for every operator here:

- a deadline at time ``T`` is handled before events arriving at ``T``: a stage
  runs the deadlines already due before it looks at a batch, whichever of the
  timer and the batch the scheduler runs first;
- times are kept to the microsecond, the resolution of reactivex's scheduler
  arithmetic, so ``0.001 + 0.003`` and ``0.004`` are the same instant;
- one scheduler timer per stage, set for the earliest deadline over all keys;
  when it fires, every key due is handled and what they release goes out as one
  batch (per source partition).

**Work per batch.** Rows are grouped by key in C (:func:`group_rows`); the
Python loop runs once per *key* of a batch, not per event, and a batch's
dropped rows are ended with one call when they share a ticket. A held event is
taken out as an :class:`Event` (at most one per key and batch, except for
events ``rate_limit`` delays: each of those costs about 1.5 us, but their number
is bounded by the source's credit, which they hold, so the source slows down to
the limit instead).

**Completion** waits for the held events: each goes out when its time comes,
then the stream completes (as RxJS's ``throttle`` and ``audit`` do), so the
spacing and rate invariants hold to the end. ``debounce`` emits its held events
at once: no later event can break the quiet any more.

**Why didn't it fire?** Every event let go is also recorded, per key, in the
pipeline's :class:`~rxagent.context.Suppressions` (``ctx.suppressions``) with a
reason and when the key is eligible again: ``"throttled"`` (``throttle_*``: until
the key's interval ends), ``"debounced"`` (until the quiet period would end),
``"sampled"`` (until the next sample) and ``"rate_limited"`` (``rate_limit`` with
``policy="drop"``: until the key's oldest emission leaves the window). One record
per key and batch, only when something was let go.

**Errors and disposal** forget the held events *without ending them*: they
were never processed, so the commit watermark must not pass them, and a
restarted pipeline reads them again.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from reactivex import Observable, abc

from ..events import Batch, Event
from ..exceptions import ConfigurationError
from .base import Emit, HoldingHandler, Observer, Operator, Scheduler, holding_stage
from .toolkit import (
    Groups,
    KeyArg,
    KeyFunction,
    batches_of,
    bump,
    end_rows,
    key_groups,
    optional_key_function,
    positive_int,
    positive_seconds,
)

if TYPE_CHECKING:
    from ..context import PipelineContext, StageMetrics

__all__ = [
    "debounce",
    "rate_limit",
    "sample",
    "throttle_first",
    "throttle_last",
    "throttle_latest",
]

#: Per-key bookkeeping of expired keys is swept once a table grows past this.
_SWEEP_MIN = 1024


def _seconds_now(scheduler: Scheduler) -> float:
    """The scheduler's time in seconds, to the microsecond (virtual or wall clock)."""
    return round(scheduler.now.timestamp(), 6)


# -- per-key deadlines on one timer ----------------------------------------------------


class _Timed(HoldingHandler):
    """Per-key state of a time-based stage: the scheduler and its clock, the
    events held, and per-key deadlines served by one scheduler timer.

    Deadlines: ``due[key]`` is a key's deadline; the heap has exactly one live
    entry per key (``entries[key]`` is its time, never after ``due[key]``), so a
    deadline pushed later (debounce) costs nothing until its old entry comes up.
    """

    op = "operator"

    def __init__(
        self,
        stage: str,
        key_fn: KeyFunction | None,
        observer: Observer,
        scheduler: Scheduler | None,
        interval: float,
    ) -> None:
        self.stage = stage
        self.key_fn = key_fn
        self.observer = observer
        self.scheduler = scheduler
        self.interval = interval
        self.ctx: PipelineContext | None = None
        self.source = stage
        self.pending: dict[Hashable, Event] = {}  # the latest held event per key
        self.held = 0
        self.due: dict[Hashable, float] = {}
        self.entries: dict[Hashable, float] = {}
        self.heap: list[tuple[float, int, Hashable]] = []
        self.seq = itertools.count()
        self.timer: abc.DisposableBase | None = None
        self.timer_at = math.inf
        self.complete: Callable[[], None] | None = None
        self.closed = False

    # -- time --------------------------------------------------------------------

    def now(self) -> float:
        assert self.scheduler is not None
        return _seconds_now(self.scheduler)

    def after(self, now: float) -> float:
        return round(now + self.interval, 6)

    # -- batches -------------------------------------------------------------------

    def begin(self, batch: Batch) -> tuple[Batch, Groups, float]:
        """Run the deadlines already due, group rows by key (the stage counted the
        batch in)."""
        ctx = self.ctx = batch.ctx
        self.source = batch.source
        if self.scheduler is None:
            self.scheduler = ctx.scheduler
            if self.scheduler is None:
                raise ConfigurationError(
                    f"{self.op} {self.stage!r} needs a scheduler: pass scheduler=, or run it "
                    "in a Pipeline or with a scheduler at subscribe time"
                )
        now = self.now()
        self.poll(now)
        batch, groups = key_groups(batch, self.key_fn, self.stage)
        return batch, groups, now

    def finish(self, batch: Batch, out: list[int], drop: list[int], emit: Emit) -> None:
        """Pass on rows ``out``, drop rows ``drop``; the batch's other rows are held."""
        metrics = batch.ctx.stage(self.stage)
        if drop:
            metrics.dropped += len(drop)
            end_rows(batch, drop)
        if out:
            metrics.events_out += len(out)
            if len(out) == len(batch.values):
                emit(batch)
            else:
                out.sort()  # arrival order across keys
                emit(batch.take(out))

    def keep_latest(self, key: Hashable, batch: Batch, row: int) -> int:
        """Hold ``row`` as the latest event of ``key``; the one it replaces is dropped.
        Returns how many held events were replaced (0 or 1).

        The pending table stays in order of last arrival (what ``sample`` and the
        debounce flush emit in)."""
        old = self.pending.pop(key, None)
        self.pending[key] = batch.event(row, take=True)
        if old is None:
            self.held += 1
            return 0
        old.end()
        batch.ctx.stage(self.stage).dropped += 1
        return 1

    def send(self, events: list[Event], now: float) -> None:
        """Emit held events (their holds move to the emitted rows)."""
        if not events:
            return
        assert self.ctx is not None
        self.held -= len(events)
        self.ctx.stage(self.stage).events_out += len(events)
        for batch in batches_of(events, self.ctx, self.source, now):
            self.observer.on_next(batch)

    # -- deadlines -------------------------------------------------------------------

    def on_due(self, keys: list[Hashable], now: float) -> list[Event]:
        """The deadlines of ``keys`` came: return the held events to emit."""
        return [self.pending.pop(key) for key in keys]

    def set_due(self, key: Hashable, at: float) -> None:
        self.due[key] = at
        entry = self.entries.get(key)
        if entry is None or at < entry:
            self.entries[key] = at
            heapq.heappush(self.heap, (at, next(self.seq), key))
            if at < self.timer_at:
                self.arm(at)

    def poll(self, now: float) -> None:
        """Handle every deadline due at ``now``, then complete if nothing is held."""
        heap, due, entries = self.heap, self.due, self.entries
        keys: list[Hashable] = []
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            if entries.get(key) != at:
                continue  # superseded by an earlier entry for the key
            del entries[key]
            when = due.get(key)
            if when is None:
                continue
            if when <= now:
                del due[key]
                keys.append(key)
            else:  # the deadline moved later: come back then
                entries[key] = when
                heapq.heappush(heap, (when, next(self.seq), key))
        if keys:
            self.send(self.on_due(keys, now), now)
        self.maybe_complete()

    def arm(self, at: float) -> None:
        assert self.scheduler is not None
        if self.timer is not None:
            self.timer.dispose()
        self.timer_at = at
        delay = max(0.0, at - self.now())
        self.timer = self.scheduler.schedule_relative(delay, self.on_timer)

    def on_timer(self, _scheduler: Scheduler, _state: Any = None) -> None:
        at = self.timer_at
        self.timer = None
        self.timer_at = math.inf
        if self.closed:
            return
        try:
            # a timer may fire a little early (asyncio rounds to its clock's
            # resolution): what it was set for is due
            self.poll(max(self.now(), at))
            # deadlines set while polling armed the timer for themselves: an
            # earlier one already in the heap must still come first
            if self.heap and self.heap[0][0] < self.timer_at and not self.closed:
                self.arm(self.heap[0][0])
        except Exception as error:  # never raise into the loop
            self.closed = True
            self.observer.on_error(error)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.dispose()
            self.timer = None
        self.timer_at = math.inf

    # -- lifecycle -------------------------------------------------------------------

    def source_completed(self, complete: Callable[[], None]) -> None:
        self.complete = complete
        self.maybe_complete()

    def maybe_complete(self) -> None:
        if self.complete is not None and self.held == 0:
            complete, self.complete = self.complete, None
            self.cancel_timer()
            complete()

    def dispose(self) -> None:
        # held events are forgotten, not ended: see the module docstring
        self.closed = True
        self.cancel_timer()
        self.pending.clear()
        self.heap.clear()
        self.due.clear()
        self.entries.clear()


def _timed_operator(
    handler: type[_Timed],
    interval: float | timedelta,
    key: KeyArg,
    scheduler: Scheduler | None,
    name: str | None,
    **options: Any,
) -> Operator:
    """The operator running ``handler`` per subscription: arguments checked once,
    here, and named after the handler's ``op``."""
    op = handler.op
    seconds = positive_seconds(op, "interval", interval)
    key_fn = optional_key_function(op, "key", key)

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        return holding_stage(
            source,
            lambda o, s: handler(stage, key_fn, o, scheduler or s, seconds, **options),
            stage,
        )

    return Operator(op, build, name)


def _sweep(
    table: dict[Hashable, Any],
    stale: Callable[[Hashable, Any], bool],
    at: int,
    metrics: StageMetrics,
) -> int:
    """Forget stale keys once ``table`` outgrew ``at``; returns the next size to sweep at.
    The stage's metrics show the keys held (``keys``) and how many were forgotten
    (``keys_evicted``): memory follows the live keys, not every key ever seen."""
    if len(table) > at:
        gone = [k for k, v in table.items() if stale(k, v)]
        for key in gone:
            del table[key]
        if gone:
            bump(metrics, "keys_evicted", len(gone))
        at = max(_SWEEP_MIN, 2 * len(table))
    metrics.extra["keys"] = len(table)
    return at


# -- throttle_first ----------------------------------------------------------------------


class _ThrottleFirst(_Timed):
    op = "throttle_first"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.until: dict[Hashable, float] = {}
        self.sweep_at = _SWEEP_MIN

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        batch, groups, now = self.begin(batch)
        until = self.until
        n = len(batch.values)
        mask = bytearray(n)
        out = 0
        record = batch.ctx.suppressions.record
        for key, rows in groups.items():
            end = until.get(key, -math.inf)
            let_go = len(rows)
            if end <= now:
                mask[rows[0]] = 1
                out += 1
                let_go -= 1
                end = until[key] = self.after(now)
            if let_go:
                record(self.stage, key, "throttled", at=now, until=end, count=let_go)
        metrics = batch.ctx.stage(self.stage)
        metrics.dropped += n - out
        if out:
            metrics.events_out += out
            emit(batch.select(mask))  # ends the other rows
        elif n:
            batch.end_all()
        self.sweep_at = _sweep(until, lambda _k, end: end <= now, self.sweep_at, metrics)


def throttle_first(
    interval: float | timedelta,
    *,
    key: KeyArg = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
) -> Operator:
    """Pass the first event of a key, then drop that key's events for ``interval``
    seconds; the next event after that passes and starts a new interval.

    ``key`` is a field name or function of the value; without it the event's key
    (``key_by``) is used, and events without keys share one interval. Two events
    of a key passed on are never closer than ``interval``. Dropped events are
    ended and counted in ``dropped``; nothing is held.

    ::

        -a-b-c-d-e-|   throttle_first(3 frames)
        -a---c---e-|

    Args:
        interval: after an event passes, its key's events are dropped this long.
        key: throttle per this key: a field name or a function of the value
            (default: the event's key; events without keys share one interval).
        scheduler: the clock (default: the pipeline's; a test's virtual time).
        name: the stage's name in status and dead letters.
    """
    return _timed_operator(_ThrottleFirst, interval, key, scheduler, name)


# -- throttle_last -------------------------------------------------------------------------


class _ThrottleLast(_Timed):
    op = "throttle_last"

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        batch, groups, now = self.begin(batch)
        drop: list[int] = []
        record = batch.ctx.suppressions.record
        for key, rows in groups.items():
            drop.extend(rows[:-1])
            let_go = len(rows) - 1 + self.keep_latest(key, batch, rows[-1])
            end = self.due.get(key)
            if end is None:  # the key's interval starts with this batch
                end = self.after(now)
                self.set_due(key, end)
            if let_go:
                record(self.stage, key, "throttled", at=now, until=end, count=let_go)
        self.finish(batch, [], drop, emit)


def throttle_last(
    interval: float | timedelta,
    *,
    key: KeyArg = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
) -> Operator:
    """Per key, an event starts an interval of ``interval`` seconds; at its end the
    latest event of the interval is emitted (RxJS ``auditTime``, per key).

    The events it replaces are dropped (ended, counted); the latest is held, with
    its credit, until the interval ends. Two events of a key emitted are never
    closer than ``interval``. On completion the held events go out at their
    interval's end, then the stream completes.

    ::

        -a-b-----c---|   throttle_last(3 frames)
        ----b-------c|

    Args:
        interval: an interval's length; its latest event goes out at its end.
        key: throttle per this key: a field name or a function of the value
            (default: the event's key; events without keys share one interval).
        scheduler: the clock (default: the pipeline's; a test's virtual time).
        name: the stage's name in status and dead letters.
    """
    return _timed_operator(_ThrottleLast, interval, key, scheduler, name)


# -- throttle_latest ------------------------------------------------------------------------


class _ThrottleLatest(_Timed):
    op = "throttle_latest"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.until: dict[Hashable, float] = {}  # end of each key's current interval
        self.sweep_at = _SWEEP_MIN

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        batch, groups, now = self.begin(batch)
        until = self.until
        out: list[int] = []
        drop: list[int] = []
        for key, rows in groups.items():
            end = until.get(key, -math.inf)
            first = 0
            if end <= now:  # no interval running: the first event leads
                out.append(rows[0])
                end = until[key] = self.after(now)
                first = 1
            if len(rows) > first:  # the latest trails at the interval's end
                drop.extend(rows[first:-1])
                let_go = len(rows) - first - 1 + self.keep_latest(key, batch, rows[-1])
                self.set_due(key, end)
                if let_go:
                    batch.ctx.suppressions.record(
                        self.stage, key, "throttled", at=now, until=end, count=let_go
                    )
        self.finish(batch, out, drop, emit)
        pending = self.pending
        self.sweep_at = _sweep(
            until,
            lambda k, end: end <= now and k not in pending,
            self.sweep_at,
            batch.ctx.stage(self.stage),
        )

    def on_due(self, keys: list[Hashable], now: float) -> list[Event]:
        events = []
        for key in keys:
            events.append(self.pending.pop(key))
            self.until[key] = self.after(now)  # a trailing emission starts an interval
        return events


def throttle_latest(
    interval: float | timedelta,
    *,
    key: KeyArg = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
) -> Operator:
    """Per key, pass the first event at once and start an interval of ``interval``
    seconds; at its end emit the latest event that came meanwhile, if any, which
    starts the next interval (RxJS ``throttleTime`` with leading and trailing).

    Replaced events are dropped (ended, counted); the trailing one is held, with
    its credit, until the interval ends. Two events of a key emitted are never
    closer than ``interval``.

    ::

        -ab-c------d--|   throttle_latest(4 frames)
        -a---c-----d--|   (b replaced by c, which trails at frame 5)

    Args:
        interval: after an event goes out, the key's next one waits at least this long.
        key: throttle per this key: a field name or a function of the value
            (default: the event's key; events without keys share one interval).
        scheduler: the clock (default: the pipeline's; a test's virtual time).
        name: the stage's name in status and dead letters.
    """
    return _timed_operator(_ThrottleLatest, interval, key, scheduler, name)


# -- debounce -------------------------------------------------------------------------------


class _Debounce(_Timed):
    op = "debounce"

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        batch, groups, now = self.begin(batch)
        drop: list[int] = []
        at = self.after(now)
        record = batch.ctx.suppressions.record
        for key, rows in groups.items():
            drop.extend(rows[:-1])
            let_go = len(rows) - 1 + self.keep_latest(key, batch, rows[-1])
            self.set_due(key, at)
            if let_go:
                record(self.stage, key, "debounced", at=now, until=at, count=let_go)
        self.finish(batch, [], drop, emit)

    def source_completed(self, complete: Callable[[], None]) -> None:
        # nothing can break the quiet any more: emit what waits, in arrival order
        if self.pending:
            events = list(self.pending.values())
            self.pending.clear()
            self.due.clear()
            self.send(events, self.now())
        super().source_completed(complete)


def debounce(
    interval: float | timedelta,
    *,
    key: KeyArg = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
) -> Operator:
    """Per key, emit an event once ``interval`` seconds passed without another
    event of the key; the events it replaces are dropped (ended, counted).

    The waiting event is held, with its credit. On completion the waiting
    events are emitted at once, then the stream completes.

    ::

        -a-b-----c--|   debounce(3 frames)
        ------b-----(c|)

    Args:
        interval: the quiet time: an event goes out once its key had none newer for this long.
        key: throttle per this key: a field name or a function of the value
            (default: the event's key; events without keys share one interval).
        scheduler: the clock (default: the pipeline's; a test's virtual time).
        name: the stage's name in status and dead letters.
    """
    return _timed_operator(_Debounce, interval, key, scheduler, name)


# -- sample ---------------------------------------------------------------------------------

_TICK: Hashable = object()  # the one deadline of sample: its next tick


class _Sample(_Timed):
    op = "sample"

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        batch, groups, now = self.begin(batch)
        drop: list[int] = []
        tick = self.due.get(_TICK)
        if tick is None and groups:
            tick = self.next_tick(now)
            self.set_due(_TICK, tick)
        record = batch.ctx.suppressions.record
        for key, rows in groups.items():
            drop.extend(rows[:-1])
            let_go = len(rows) - 1 + self.keep_latest(key, batch, rows[-1])
            if let_go:
                record(self.stage, key, "sampled", at=now, until=tick, count=let_go)
        self.finish(batch, [], drop, emit)

    def next_tick(self, now: float) -> float:
        """The first multiple of the interval strictly after ``now``."""
        interval = self.interval
        k = math.floor(now / interval) + 1
        while round(k * interval, 6) <= now:
            k += 1
        while round((k - 1) * interval, 6) > now:
            k -= 1
        return round(k * interval, 6)

    def on_due(self, keys: list[Hashable], now: float) -> list[Event]:
        events = list(self.pending.values())
        self.pending.clear()
        return events


def sample(
    interval: float | timedelta,
    *,
    key: KeyArg = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
) -> Operator:
    """Every ``interval`` seconds, emit the latest event of each key that had any
    since the last sample, in one batch; the events they replaced are dropped.

    Samples fall on multiples of ``interval`` on the scheduler's clock (whole
    seconds for ``sample(1.0)``); an event arriving exactly on a sample's time
    goes into the next one. No timer runs while nothing waits. The waiting
    events are held, with their credit. On completion the last sample goes out
    at its time, then the stream completes.

    ::

        -a-b--c-d--|   sample(4 frames)
        ----b---c---(d|)   (samples at frames 4, 8, 12; d came at 8, so goes at 12)

    Args:
        interval: the time between samples (on multiples of it on the clock).
        key: throttle per this key: a field name or a function of the value
            (default: the event's key; events without keys share one interval).
        scheduler: the clock (default: the pipeline's; a test's virtual time).
        name: the stage's name in status and dead letters.
    """
    return _timed_operator(_Sample, interval, key, scheduler, name)


# -- rate_limit -------------------------------------------------------------------------------


class _Log:
    """What one key emitted in the last interval: (expiry, count) entries, oldest first."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[list[Any]] = deque()
        self.total = 0

    def free(self, n: int, now: float) -> int:
        """How many more the key may emit at ``now``."""
        entries = self.entries
        while entries and entries[0][0] <= now:
            self.total -= entries.popleft()[1]
        return n - self.total

    def add(self, expires: float, count: int) -> None:
        entries = self.entries
        if entries and entries[-1][0] == expires:
            entries[-1][1] += count
        else:
            entries.append([expires, count])
        self.total += count


class _RateLimit(_Timed):
    op = "rate_limit"

    def __init__(self, *args: Any, n: int, delay: bool) -> None:
        super().__init__(*args)
        self.n = n
        self.delay = delay
        self.logs: dict[Hashable, _Log] = {}
        self.queues: dict[Hashable, deque[Event]] = {}  # delayed events per key
        self.sweep_at = _SWEEP_MIN

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        batch, groups, now = self.begin(batch)
        n, logs, queues = self.n, self.logs, self.queues
        expires = self.after(now)
        out: list[int] = []
        drop: list[int] = []
        for key, rows in groups.items():
            queue = queues.get(key)
            if queue is None:  # the key has no delayed events: new ones may pass
                log = logs.get(key)
                if log is None:
                    log = logs[key] = _Log()
                free = log.free(n, now)
                m = len(rows)
                if m <= free:
                    out.extend(rows)
                    log.add(expires, m)
                    continue
                if free > 0:
                    out.extend(rows[:free])
                    log.add(expires, free)
                rest = rows[free:]
                if not self.delay:
                    drop.extend(rest)
                    batch.ctx.suppressions.record(
                        self.stage,
                        key,
                        "rate_limited",
                        at=now,
                        until=log.entries[0][0],
                        count=len(rest),
                    )
                    continue
                queue = queues[key] = deque()
                self.set_due(key, log.entries[0][0])
            else:  # behind the key's delayed events, in order
                rest = rows
            queue.extend(batch.event(i, take=True) for i in rest)
            self.held += len(rest)
        self.finish(batch, out, drop, emit)
        self.sweep_at = _sweep(
            logs,
            lambda k, log: log.free(n, now) == n and k not in queues,
            self.sweep_at,
            batch.ctx.stage(self.stage),
        )

    def on_due(self, keys: list[Hashable], now: float) -> list[Event]:
        events: list[Event] = []
        expires = self.after(now)
        for key in keys:
            queue = self.queues[key]
            log = self.logs[key]
            take = min(log.free(self.n, now), len(queue))
            events.extend(queue.popleft() for _ in range(take))
            log.add(expires, take)
            if queue:
                self.set_due(key, log.entries[0][0])
            else:
                del self.queues[key]
        return events

    def dispose(self) -> None:
        super().dispose()
        self.queues.clear()


def rate_limit(
    n: int,
    interval: float | timedelta,
    policy: Literal["delay", "drop"] = "delay",
    *,
    key: KeyArg = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
) -> Operator:
    """At most ``n`` events per key in any ``interval`` seconds (a sliding window:
    an emission counts until ``interval`` after it).

    ``policy="delay"`` holds the excess, with its credit, and emits it as soon as
    the limit allows, in order per key: nothing is lost, and a source whose
    credit is all held pauses. ``policy="drop"`` drops the excess (ended,
    counted in ``dropped``).

    ::

        -(abc)--d---|   rate_limit(2, 4 frames)
        -(ab)c--d---|   policy="delay": c waits until a and b are 4 frames old
        -(ab)---d---|   policy="drop": c is dropped

    Args:
        n: most events per key in any ``interval``.
        interval: the sliding window the limit applies to.
        policy: ``delay`` the excess (held, no loss) or ``drop`` it.
        key: limit per this key: a field name or a function of the value
            (default: the event's key).
        scheduler: the clock (default: the pipeline's; a test's virtual time).
        name: the stage's name in status and dead letters.
    """
    op = _RateLimit.op
    positive_int(op, "n", n)
    if policy not in ("delay", "drop"):
        raise ConfigurationError(f"{op}: policy must be 'delay' or 'drop', got {policy!r}")
    return _timed_operator(_RateLimit, interval, key, scheduler, name, n=n, delay=policy == "delay")
