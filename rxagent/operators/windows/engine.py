"""The engine shared by time windows: clocks, timers, watermark, late events, output.

:class:`WindowHandler` runs one subscription of a time-window stage. Its
subclasses (:mod:`.panes`, :mod:`.sessions`) keep the open windows; this module keeps
what they share, so each decision is written once:

- the *clock*: the scheduler's (virtual in tests), never the wall clock;
- the *watermark* (event time): largest event time seen minus the allowed
  lateness, raised further by idle closes;
- a *heap* of ``(close order, seq, key, window)`` entries: a window leaves it
  when the watermark (or the clock) reaches its close order;
- *late events*: counted, then dropped, dead-lettered or streamed;
- *output*: one batch per batch in (or per timer), windows in close order,
  each row holding the events folded into it;
- *partition release*: a revoked partition's events leave the open windows
  (:meth:`WindowHandler.release`, through a :class:`~rxagent.events.RevokeWatch`);
- *the end*: what the windows still open become when the stream completes
  (:func:`at_end`): final at the end of the input; on a stop, given up uncommitted
  (a source that replays them) or emitted marked ``partial``.

Timer callbacks never raise into the scheduler's loop: an error becomes the
stream's ``on_error``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Hashable, Sequence
from heapq import heappop, heappush
from itertools import islice
from operator import itemgetter, le
from typing import Any, Literal, TypeAlias, cast

from reactivex import abc
from reactivex.subject import Subject

from ...clock import scheduler_clock, snap
from ...context import PipelineContext
from ...events import (
    Batch,
    Event,
    Hold,
    RevokeWatch,
    end_hold,
    fold_holds,
    partition_runs,
    retain_hold,
)
from ...exceptions import ConfigurationError
from ...flow import Flow, Ticket
from ...values import Window
from ..aggregate import Aggregation
from ..base import BatchHandler, Emit
from ..toolkit import apply

__all__ = [
    "SNAP",
    "EmitPartial",
    "Ending",
    "Late",
    "Out",
    "WindowHandler",
    "WindowSpec",
    "at_end",
    "check_emit_partial",
    "give_up",
    "pick",
]

#: A time within this fraction of a pane below a pane boundary counts as on it:
#: ``0.009 / 0.003`` is ``2.9999999999999996`` in floats, and an event at 9 ms
#: belongs to the window that starts there. Far below a nanosecond for panes
#: under a second, and absorbed by rounding for epoch-sized quotients.
SNAP = 1e-9

#: A closed window on its way out: (close order, seq, window, hold, time, position).
Out: TypeAlias = tuple[float, int, Window, Hold, float | None, int | None]
#: A late row and the watermark (or window end) it fell behind.
Late: TypeAlias = list[tuple[int, float]]
#: A window operator's ``emit_partial``: ``"auto"`` (the default), True (always) or False.
EmitPartial: TypeAlias = bool | Literal["auto"]
#: What a window still open when its stream completes becomes (see :func:`at_end`).
Ending: TypeAlias = Literal["final", "partial", "release", "drop"]


def at_end(emit_partial: EmitPartial, ctx: PipelineContext) -> Ending:
    """What the windows still open when the stream completes become.

    At the end of the input (a finite source ran out, ``until_eof``): ``"final"``,
    emitted as they are, which is their final value (``"drop"`` with
    ``emit_partial=False``: ended without output). On a *stop*
    (``ctx.stopping``: drain, SIGTERM, ``--duration``, ``App.stop``):

    - ``"auto"``: ``"release"`` when the source replays what was not committed
      (``ctx.replays_uncommitted``, Kafka): the events are given up uncommitted and
      recomputed after a restart; otherwise ``"partial"``: emitted with
      ``partial=True``;
    - True: ``"partial"`` always (the events end: a Kafka source commits them);
    - False: ``"release"`` when the source replays them, else ``"drop"``.
    """
    if not ctx.stopping:
        return "drop" if emit_partial is False else "final"
    if emit_partial is True:
        return "partial"
    if ctx.replays_uncommitted:
        return "release"
    return "drop" if emit_partial is False else "partial"


def check_emit_partial(value: Any, where: str) -> EmitPartial:
    """``value`` if it is ``"auto"``, True or False; else a ConfigurationError."""
    if value is True or value is False or value == "auto":
        return cast(EmitPartial, value)
    raise ConfigurationError(f"{where}: emit_partial must be 'auto', true or false, got {value!r}")


def give_up(tickets: dict[Ticket, int]) -> int:
    """Release what a window holds (:meth:`~rxagent.flow.Ticket.release`): its events
    end without counting as done, so the watermark stops before them and a source
    that replays what was not committed reads them again. Returns how many."""
    n = 0
    for ticket, count in tickets.items():
        ticket.release(count)
        n += count
    tickets.clear()
    return n


class WindowSpec:
    """A time-window operator's validated options (see :mod:`.timed`)."""

    __slots__ = (
        "aggregation",
        "emit_partial",
        "event",
        "idle",
        "key_fn",
        "kind",
        "late",
        "lateness",
        "scheduler",
        "subject",
    )

    def __init__(
        self,
        kind: str,
        *,
        event: bool,
        key_fn: Callable[[Any], Hashable] | None,
        aggregation: Aggregation,
        lateness: float,
        late: str,
        idle: float | None,
        emit_partial: EmitPartial,
        scheduler: abc.SchedulerBase | None,
    ) -> None:
        self.kind = kind
        self.event = event
        self.key_fn = key_fn
        self.aggregation = aggregation
        self.lateness = lateness
        self.late = late
        self.idle = idle
        self.emit_partial = emit_partial
        self.scheduler = scheduler
        self.subject: Subject[Event] = Subject()


def pick(values: Sequence[Any], rows: Sequence[int]) -> list[Any]:
    """``[values[i] for i in rows]`` with the loop in C."""
    if isinstance(rows, range):
        return list(values[rows.start : rows.stop])
    if len(rows) == 1:
        return [values[rows[0]]]
    return list(itemgetter(*rows)(values))


class _Timer:
    """One pending scheduler action, re-armed only when it must fire earlier."""

    __slots__ = ("due", "fire", "handle", "now", "scheduler")

    def __init__(
        self,
        scheduler: abc.SchedulerBase,
        now: Callable[[], float],
        fire: Callable[[float], None],
    ) -> None:
        self.scheduler = scheduler
        self.now = now
        self.fire = fire
        self.due = math.inf
        self.handle: abc.DisposableBase | None = None

    def arm(self, due: float) -> None:
        if self.handle is not None and self.due <= due:
            return
        self.cancel()
        self.due = due
        self.handle = self.scheduler.schedule_relative(max(0.0, due - self.now()), self._run)

    def _run(self, _scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        due = self.due
        self.handle = None
        self.due = math.inf
        self.fire(due)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.dispose()
            self.handle = None
        self.due = math.inf


class WindowHandler(BatchHandler):
    """One subscription of a time-window stage; subclasses keep the windows."""

    def __init__(
        self,
        spec: WindowSpec,
        stage: str,
        observer: abc.ObserverBase[Batch],
        scheduler: abc.SchedulerBase | None,
    ) -> None:
        self.spec = spec
        self.stage = stage
        self.observer = observer
        self.scheduler = spec.scheduler if spec.scheduler is not None else scheduler
        self.clock: Callable[[], float] | None = None
        self.like: Batch | None = None  # where output batches take ctx, source, partition
        self.heap: list[tuple[Any, int, Hashable, Any]] = []
        self.seq = 0
        self.open = 0  # open windows, a gauge in the stage's metrics
        self.max_time: float | None = None  # event time: the largest seen
        self.wm_floor: float | None = None  # event time: raised by idle closes
        self.clock_floor = -math.inf  # processing time: the clock never goes back
        self.last_arrival = -math.inf
        self.ending: Ending | None = None  # set when the stream completes (at_end)
        self.stopped = False
        self.close_timer: _Timer | None = None
        self.idle_timer: _Timer | None = None
        self.watch = RevokeWatch(self.release)

    # -- what subclasses provide -----------------------------------------------------

    @abstractmethod
    def limit(self, t: float) -> float:
        """What close orders are compared with when the watermark (or clock) is ``t``."""

    @abstractmethod
    def due(self, order: Any) -> float:
        """When a window of close order ``order`` is due, on the clock."""

    @abstractmethod
    def latest_due(self) -> float | None:
        """When the last open window is due (idle close advances the watermark there)."""

    @abstractmethod
    def pop(self, entry: tuple[Any, int, Hashable, Any], limit: float, out: list[Out]) -> None:
        """A heap entry is due: close its window into ``out`` (or push it back)."""

    @abstractmethod
    def add_processing(self, batch: Batch, keys: Sequence[Hashable] | None, now: float) -> None:
        """Assign rows by arrival time ``now``."""

    @abstractmethod
    def add_event(
        self,
        batch: Batch,
        keys: Sequence[Hashable] | None,
        times: list[float],
        ordered: bool,
        out: list[Out],
        late: Late,
    ) -> None:
        """Assign rows by event time; closes windows as the watermark moves row by row."""

    @abstractmethod
    def late_reason(self, t: float, behind: float) -> str:
        """Why an event at ``t``, ``behind`` the watermark, is late (for dead letters)."""

    @abstractmethod
    def release(self, flow: Flow, partitions: frozenset[Hashable]) -> None:
        """Partitions were revoked: release what the open windows hold of them
        (:func:`~rxagent.flow.release_tickets`); a window left with nothing is
        emptied, and :meth:`finish` drops it when it closes."""

    # -- batches -----------------------------------------------------------------------

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        self.watch.see(batch)
        spec = self.spec
        metrics = batch.ctx.stage(self.stage)
        metrics.events_in += len(batch.values)
        if self.clock is None:
            self._bind(batch)
        keys: Sequence[Hashable] | None = batch.keys
        if spec.key_fn is not None:
            keys, ok = apply(batch, spec.key_fn, self.stage)
            if ok:
                rows = [i for i, good in enumerate(ok) if good]
                batch = batch.take(rows)
                keys = [keys[i] for i in rows]
        self.like = batch.shell()  # not the batch: its values die with it
        out: list[Out] = []
        if spec.event:
            batch, keys, times = self._event_times(batch, keys)
            if times:
                self._on_event_batch(batch, keys, times, out)
        else:
            assert self.clock is not None
            now = self.clock()
            if now < self.clock_floor:
                now = self.clock_floor
            self.clock_floor = now
            self.sweep(self.limit(now), out)
            if batch.values:
                self.add_processing(batch, keys, now)
        self._emit(out, emit)
        self._arm()

    def _bind(self, batch: Batch) -> None:
        if self.scheduler is None:
            self.scheduler = batch.ctx.scheduler
        if self.scheduler is None:
            if self.spec.event and self.spec.idle is None:
                return  # event time without idle close needs no clock
            raise ConfigurationError(
                f"{self.spec.kind} {self.stage!r} needs a scheduler for its timers: subscribe "
                "with one (pipelines do) or pass scheduler="
            )
        self.clock = scheduler_clock(self.scheduler)
        if not self.spec.event:
            self.close_timer = _Timer(self.scheduler, self.clock, self._on_close_timer)
        elif self.spec.idle is not None:
            self.idle_timer = _Timer(self.scheduler, self.clock, self._on_idle)

    def _event_times(
        self, batch: Batch, keys: Sequence[Hashable] | None
    ) -> tuple[Batch, Sequence[Hashable] | None, list[float]]:
        """The batch's event times; rows without a finite one are dead-lettered."""
        times = batch.times
        if times is None:
            raise ConfigurationError(
                f"{self.spec.kind} {self.stage!r} windows by event time, but events reached it "
                "without one: put ops.event_time(...) before it, or use time='processing'"
            )
        try:
            valid = all(map(math.isfinite, times))  # type: ignore[arg-type]
        except TypeError:
            valid = False
        if not valid:
            good: list[int] = []
            for i, t in enumerate(times):
                if isinstance(t, int | float) and math.isfinite(t):
                    good.append(i)
                else:
                    batch.ctx.dead_letter(
                        batch.event(i, take=True),
                        self.stage,
                        f"event time {t!r} is not a finite number of seconds",
                    )
            batch = batch.take(good)
            keys = None if keys is None else [keys[i] for i in good]
            times = batch.times
        return batch, keys, cast(list[float], times)

    def _on_event_batch(
        self,
        batch: Batch,
        keys: Sequence[Hashable] | None,
        times: list[float],
        out: list[Out],
    ) -> None:
        # Lateness is decided per row against the watermark *before* that row, so
        # results never depend on how the source cut its batches.
        ordered = all(map(le, times, islice(times, 1, None)))
        late: Late = []
        self.add_event(batch, keys, times, ordered, out, late)
        if late:
            late.sort()  # late events leave in arrival order
            self._late(batch, late)
        top = times[-1] if ordered else max(times)
        if self.max_time is None or top > self.max_time:
            self.max_time = top
        if self.clock is not None:
            self.last_arrival = self.clock()
        self.sweep(self.limit(self.watermark(self.max_time)), out)

    def watermark(self, max_time: float) -> float:
        """The watermark once ``max_time`` is the largest event time seen."""
        wm = snap(max_time - self.spec.lateness)  # an event exactly on it is not late
        floor = self.wm_floor
        return wm if floor is None or wm > floor else floor

    def fold(self, batch: Batch, rows: Sequence[int], into: dict[Ticket, int], extra: int) -> int:
        """Fold ``rows`` into a window's tickets, each row owing ``extra`` more ends
        (the further sliding windows it is in). Returns the rows the batch's own
        ticket still has to ``fold`` (done once per batch)."""
        holds = batch.holds
        if holds is None:
            ticket = batch.ticket
            if ticket is None:
                return 0
            n = len(rows)
            into[ticket] = into.get(ticket, 0) + n
            if extra:
                ticket.retain(extra * n)
            return n
        picked = [holds[i] for i in rows]
        fold_holds(picked, into)
        if extra:
            for hold in picked:
                retain_hold(hold, extra)
        return 0

    def _late(self, batch: Batch, rows: Late) -> None:
        ctx = batch.ctx
        metrics = ctx.stage(self.stage)
        metrics.extra["late"] = metrics.extra.get("late", 0) + len(rows)
        policy = self.spec.late
        if policy == "drop":
            metrics.dropped += len(rows)
            for i, _ in rows:
                batch.end_row(i)
        elif policy == "dead_letter":
            times = cast(list[float], batch.times)
            for i, behind in rows:
                reason = self.late_reason(times[i], behind)
                ctx.dead_letter(batch.event(i, take=True), self.stage, reason)
        else:
            subject = self.spec.subject
            for i, _ in rows:
                event = batch.event(i, take=True)
                try:
                    subject.on_next(event)
                finally:
                    event.end()  # a no-op if a subscriber took it over

    # -- closing -----------------------------------------------------------------------

    def push(self, order: Any, key: Hashable, target: Any) -> None:
        """Schedule ``target`` of ``key`` at ``order`` (a due time or watermark) on the handler's
        heap; ties keep their insertion order."""
        self.seq += 1
        heappush(self.heap, (order, self.seq, key, target))

    def sweep(self, limit: float, out: list[Out]) -> None:
        """Close every window whose close order is at most ``limit``."""
        heap = self.heap
        while heap and heap[0][0] <= limit:
            self.pop(heappop(heap), limit, out)

    def finish(
        self,
        key: Hashable,
        values: list[Any],
        tickets: dict[Ticket, int],
        start: float,
        end: float,
        time: float | None,
        position: int | None,
        order: float,
        seq: int,
        out: list[Out],
    ) -> None:
        """A window closed: aggregate it into ``out`` (if that fails, dead-letter it)."""
        self.open -= 1
        if not values and not tickets:  # emptied: its partition was revoked
            return
        hold: Hold = tuple(tickets.items()) if tickets else None
        assert self.like is not None
        ctx = self.like.ctx
        ending = self.ending
        if ending == "drop":
            ctx.stage(self.stage).dropped += len(values)
            end_hold(hold)
            return
        if ending == "release":
            metrics = ctx.stage(self.stage)
            metrics.extra["released_at_stop"] = metrics.extra.get("released_at_stop", 0) + give_up(
                tickets
            )
            return
        partial = ending == "partial"
        try:
            value = self.spec.aggregation(values)
        except Exception as error:
            window = Window(key, values, len(values), start, end, partial)
            ctx.dead_letter(Event(window, key, time, hold=hold), self.stage, error)
            return
        if partial:
            metrics = ctx.stage(self.stage)
            metrics.extra["partial"] = metrics.extra.get("partial", 0) + 1
        window = Window(key, value, len(values), start, end, partial)
        out.append((order, seq, window, hold, time, position))

    def _emit(self, out: list[Out], emit: Emit) -> None:
        like = self.like
        if like is None:
            return
        metrics = like.ctx.stage(self.stage)
        metrics.extra["open_windows"] = self.open
        if not out:
            return
        if len(out) > 1:
            out.sort(key=itemgetter(0, 1))
        metrics.events_out += len(out)
        holds = [row[3] for row in out]
        # a window's partition is that of its events (one batch per run of rows)
        for partition, a, b in partition_runs(holds, like.partition):
            rows = out[a:b]
            positions = [row[5] for row in rows]
            windows = [row[2] for row in rows]
            emit(
                Batch(
                    windows,
                    ctx=like.ctx,
                    source=like.source,
                    time=like.ctx.now(),
                    holds=holds[a:b],
                    keys=[w.key for w in windows],
                    times=[row[4] for row in rows],
                    positions=None if all(p is None for p in positions) else positions,
                    partition=partition,
                )
            )

    # -- timers --------------------------------------------------------------------------

    def _arm(self) -> None:
        if self.stopped:
            return
        if self.close_timer is not None:
            if self.heap:
                self.close_timer.arm(self.due(self.heap[0][0]))
            else:
                self.close_timer.cancel()
        if self.idle_timer is not None:
            if self.open:
                assert self.spec.idle is not None
                self.idle_timer.arm(self.last_arrival + self.spec.idle)
            else:
                self.idle_timer.cancel()

    def _on_close_timer(self, due: float) -> None:
        if self.stopped:
            return
        try:
            assert self.clock is not None
            # a timer may fire a little early (asyncio's clock is not the scheduler's)
            now = max(self.clock(), due, self.clock_floor)
            self.clock_floor = now
            out: list[Out] = []
            self.sweep(self.limit(now), out)
            self._emit(out, self.observer.on_next)
            self._arm()
        except Exception as error:  # never raise into the scheduler's loop
            self._fail(error)

    def _on_idle(self, due: float) -> None:
        if self.stopped:
            return
        try:
            assert self.clock is not None
            assert self.spec.idle is not None
            if max(self.clock(), due) < self.last_arrival + self.spec.idle:
                self._arm()  # events arrived since the timer was armed
                return
            latest = self.latest_due()
            if latest is None:
                return
            self.wm_floor = latest if self.wm_floor is None else max(self.wm_floor, latest)
            out: list[Out] = []
            self.sweep(self.limit(self.wm_floor), out)
            if self.like is not None:
                metrics = self.like.ctx.stage(self.stage)
                metrics.extra["idle_closes"] = metrics.extra.get("idle_closes", 0) + 1
            self._emit(out, self.observer.on_next)
            self._arm()
        except Exception as error:  # never raise into the scheduler's loop
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        self.dispose()
        self.observer.on_error(error)

    # -- the end -------------------------------------------------------------------------

    def on_completed(self, emit: Emit) -> None:
        self.dispose()
        like = self.like
        out: list[Out] = []
        stopping = like is not None and like.ctx.stopping
        if stopping and self.clock is not None and not self.spec.event:
            # processing time: windows whose end has passed are complete, whatever
            # their timer: they close as usual before the stop decides on the rest
            now = max(self.clock(), self.clock_floor)
            self.sweep(self.limit(now), out)
        self.ending = "final" if like is None else at_end(self.spec.emit_partial, like.ctx)
        self.sweep(math.inf, out)
        self._emit(out, emit)

    def dispose(self) -> None:
        """Stop the timers. Open windows are dropped *without* ending their events:
        they were never processed, so the commit watermark stays before them."""
        self.stopped = True
        self.watch.close()
        for timer in (self.close_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
