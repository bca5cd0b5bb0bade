"""Time windows: tumbling, sliding and session windows, by processing or event time.

This module builds the operators (options, validation, :class:`WindowOperator`);
the windows are kept by :mod:`.panes` and :mod:`.sessions` on the shared
:mod:`.engine`.

Every window *folds* the events it takes in, as :func:`~rxagent.operators.count_window`
does: their credit returns to the source at once, their completion waits for the
:class:`~rxagent.operators.Window` row the window emits, so the commit watermark
never passes an event whose window has not been processed.

**Clocks.** Processing time is the scheduler's clock (the pipeline's asyncio
scheduler, or a ``TestScheduler`` in marble tests): an event belongs to the
window that is open when it arrives, and windows close on timers at their end.
Event time is the batch's ``times`` column (set by ``ops.event_time``): the
*watermark* is the largest event time seen minus ``allowed_lateness``, and a
window closes when the watermark passes its end. Nothing reads the wall clock,
so every test runs in virtual time.

**Output.** A window emits one :class:`~rxagent.operators.Window` row, keyed by
the window's key, whose event time is the latest event time in the window (the
latest arrival, in processing time), so windows of windows line up. Windows
closed at the same moment leave in one batch, in the order they close.
Lateness is decided row by row, against the watermark before each row, so the
windows never depend on how the source cut its batches.

**Late events** are the ones whose windows the watermark has already closed.
They are counted (``extra["late"]``) and then, by ``late=``: dropped (``dropped``),
dead-lettered, or sent to the operator's :attr:`WindowOperator.late` stream. A
late event is ended by the operator right after the late stream's subscribers
got it; a subscriber that must keep it pending (to process it asynchronously)
takes it over with ``kept = event.replace()`` and calls ``kept.end()`` when done.

**Idle close.** The watermark only moves when events arrive, so a quiet feed
would keep its last window forever. With ``idle_timeout`` (scheduler seconds),
a stage that has received nothing for that long advances its watermark to the
end of its latest open window: every open window is emitted, and events that
arrive later for those windows count as late.

**Sliding windows share panes.** A sliding window is cut into panes of
``gcd(size, slide)`` seconds; an event is stored once, in its pane, and each
window it belongs to is built from its panes when it closes. The event stays
pending until *every* window containing it has been emitted and ended: it is
retained once per extra window (as fan-out does), and each window's row holds
one end of it. Tumbling windows are the case ``slide == size`` (one pane per
window, no retain).

**Sessions** (``session_window``) group a key's events whose event times are
less than ``gap`` apart. An event older than the watermark is accepted only if
it falls at or after the start of one of its key's open sessions; it never
starts or extends a session backwards behind the watermark. That rule, with no
per-key memory of closed sessions, keeps every emitted session of a key at
least ``gap`` away from the others.

**Stops.** When the stream completes because the pipeline stops (drain,
SIGTERM, ``--duration``), windows still open are not final: with the default
``emit_partial="auto"`` their events are given up uncommitted when the source
replays what was not committed (Kafka: a restart recomputes them), and are
emitted with ``partial=True`` otherwise (:func:`.engine.at_end`). At the end of
a finite input they are emitted as they are: that is their final value.

**Disposing** the subscription (or an upstream error) drops open windows
*without* ending their events: they were never processed, so the commit
watermark stays before them and a restart replays them (at-least-once).

**Metrics** (``status().stages``): ``in``, ``out`` (windows), ``dropped`` (late
events dropped, and partial windows' events with ``emit_partial=False``),
``dead_lettered``, and in ``extra``: ``late``, ``open_windows``, ``idle_closes``,
``partial`` (windows a stop emitted) and ``released_at_stop`` (events a stop gave
up uncommitted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from datetime import timedelta
from functools import partial
from typing import Any, Literal, TypeAlias

from reactivex import Observable, abc
from reactivex.subject import Subject

from ...events import Batch, Event
from ...exceptions import ConfigurationError
from ...values import to_key_function
from ..aggregate import Aggregation, collect, resolve_aggregation
from ..base import Operator, batch_stage
from .engine import EmitPartial, WindowHandler, WindowSpec, check_emit_partial
from .panes import PaneHandler, Panes
from .sessions import SessionHandler

__all__ = [
    "LatePolicy",
    "TimeDomain",
    "WindowOperator",
    "session_window",
    "sliding_window",
    "tumbling_window",
]

#: What becomes of an event whose windows have closed.
LatePolicy: TypeAlias = Literal["drop", "dead_letter", "stream"]
#: Which clock assigns events to windows.
TimeDomain: TypeAlias = Literal["processing", "event"]
Duration: TypeAlias = float | int | timedelta
KeySpec: TypeAlias = str | int | Callable[[Any], Hashable] | None
AggSpec: TypeAlias = Aggregation | Mapping[str, Aggregation] | Callable[[list[Any]], Any] | None

_MAX_PANES = 100_000  # panes per sliding window; beyond, building each window costs too much


class WindowOperator(Operator):
    """A time-window operator; :attr:`late` is its stream of late events."""

    __slots__ = ("_late",)

    def __init__(
        self,
        kind: str,
        build: Callable[[str, Observable[Batch]], Observable[Batch]],
        name: str | None,
        late: Subject[Event],
    ) -> None:
        super().__init__(kind, build, name)
        self._late = late

    @property
    def late(self) -> Observable[Event]:
        """Late events, with ``late="stream"``. Each is ended right after its
        ``on_next``; a subscriber takes one over with ``event.replace()`` to end it
        later. Shared by every subscription of this operator; never completes."""
        return self._late

    def named(self, name: str) -> WindowOperator:
        return WindowOperator(self.kind, self._build, name, self._late)


def tumbling_window(
    size: Duration,
    *,
    time: TimeDomain = "processing",
    key: KeySpec = None,
    agg: AggSpec = None,
    offset: Duration = 0.0,
    allowed_lateness: Duration = 0.0,
    late: LatePolicy | None = None,
    idle_timeout: Duration | None = None,
    emit_partial: bool | Literal["auto"] = "auto",
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> WindowOperator:
    """Back-to-back windows of ``size`` seconds per key. Each emits a
    :class:`~rxagent.operators.Window` whose ``value`` is ``agg`` over the
    window's values (default: their list, in arrival order) and whose ``start``
    and ``end`` are the window's bounds; windows start at multiples of ``size``
    (plus ``offset``), and windows without events emit nothing.

    ``time="processing"`` (default) puts each event in the window open on the
    scheduler clock when it arrives; windows close on timers at their end.
    ``time="event"`` uses the events' times (``ops.event_time``): a window
    closes once the watermark (largest event time seen minus
    ``allowed_lateness``) passes its end. ``late`` says what becomes of events
    for closed windows: ``"drop"`` (default, counted), ``"dead_letter"``, or
    ``"stream"`` to :attr:`WindowOperator.late`. ``idle_timeout`` closes the
    open windows after that many quiet seconds on the scheduler clock. At the
    end of a finite input, open windows are emitted unless
    ``emit_partial=False``; on a stop see ``emit_partial`` below.

    ``key`` is a field name or a function of the value; without it the event's
    key (``key_by``) is used. Durations are seconds or ``timedelta``.

    ::

        -a-b--c---d-|   tumbling_window(0.004)   (1 ms frames)
        ----x---y---(z|)   x=[a, b], y=[c], z=[d]

    Args:
        size: each window's length, in seconds or a ``timedelta``.
        time: ``"processing"`` (default: the scheduler's clock when an event
            arrives) or ``"event"`` (the events' times, set by ``event_time``).
        key: windows per this key: a field name or a function of the value
            (default: the event's key, ``key_by``; events without keys share
            one window).
        agg: what a window's ``value`` is: an aggregation (``mean("px")``), a
            mapping of names to aggregations (the value is a dict), or a
            function of the list of values; None (default): the list itself.
        offset: windows start at multiples of ``size`` plus this many seconds
            (default 0; e.g. ``18000`` for daily windows from midnight UTC-5).
        allowed_lateness: event time: seconds the watermark stays behind the
            largest event time seen, so a window waits this long for stragglers
            (default 0).
        late: event time: what becomes of an event for a window already closed:
            ``"drop"`` (None, the default: ended and counted in ``dropped``),
            ``"dead_letter"``, or ``"stream"`` (to the operator's ``late``
            stream).
        idle_timeout: event time: close the open windows after this many
            seconds without an event, on the scheduler clock (default None:
            never; otherwise only new events move the watermark).
        emit_partial: what the windows still open become when the stream
            completes. At the end of a finite input they are emitted (their final
            value) unless False. On a stop: ``"auto"`` (default) gives their events
            up uncommitted when the source replays them (Kafka: recomputed after a
            restart) and otherwise emits them with ``partial=True``; True always
            emits them (``partial=True``); False never does.
        scheduler: the clock of processing time and of the timers (default:
            the pipeline's; a test's virtual time).
        name: the stage's name in status, metrics and dead letters (default:
            ``tumbling_window``, numbered when a pipeline has several).
    """
    where = _where("tumbling_window", name)
    width = _seconds(size, where, "size")
    spec = _spec(
        "tumbling_window",
        where,
        time,
        key,
        agg,
        allowed_lateness,
        late,
        idle_timeout,
        emit_partial,
        scheduler,
    )
    geo = _panes(width, width, offset, where)
    return _operator(spec, name, partial(PaneHandler, geo=geo))


def sliding_window(
    size: Duration,
    slide: Duration,
    *,
    time: TimeDomain = "processing",
    key: KeySpec = None,
    agg: AggSpec = None,
    offset: Duration = 0.0,
    allowed_lateness: Duration = 0.0,
    late: LatePolicy | None = None,
    idle_timeout: Duration | None = None,
    emit_partial: bool | Literal["auto"] = "auto",
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> WindowOperator:
    """Windows of ``size`` seconds starting every ``slide`` seconds (hopping
    windows), per key; ``slide`` must not exceed ``size``. An event is in
    ``size / slide`` windows (when ``size`` is a multiple of ``slide``), and
    stays pending until every one of them has been emitted and ended. A
    window's values come pane by pane (``gcd(size, slide)`` seconds each) in
    time order, in arrival order within a pane. Everything else is as in
    :func:`tumbling_window`.

    ::

        -a--b---c----|   sliding_window(0.004, 0.002)   (1 ms frames)
        --v-w-x-y-z-u|   v=[a], w=[a], x=[b], y=[b], z=[c], u=[c]

    Args:
        size: each window's length, in seconds or a ``timedelta``.
        slide: how often a window starts (at most ``size``).
        time: ``"processing"`` (default: the scheduler's clock when an event
            arrives) or ``"event"`` (the events' times, set by ``event_time``).
        key: windows per this key: a field name or a function of the value
            (default: the event's key, ``key_by``; events without keys share
            one window).
        agg: what a window's ``value`` is: an aggregation (``mean("px")``), a
            mapping of names to aggregations (the value is a dict), or a
            function of the list of values; None (default): the list itself.
        offset: windows start at multiples of ``slide`` plus this many seconds
            (default 0; e.g. ``18000`` for daily windows from midnight UTC-5).
        allowed_lateness: event time: seconds the watermark stays behind the
            largest event time seen, so a window waits this long for stragglers
            (default 0).
        late: event time: what becomes of an event for a window already closed:
            ``"drop"`` (None, the default: ended and counted in ``dropped``),
            ``"dead_letter"``, or ``"stream"`` (to the operator's ``late``
            stream).
        idle_timeout: event time: close the open windows after this many
            seconds without an event, on the scheduler clock (default None:
            never; otherwise only new events move the watermark).
        emit_partial: what the windows still open become when the stream
            completes. At the end of a finite input they are emitted (their final
            value) unless False. On a stop: ``"auto"`` (default) gives their events
            up uncommitted when the source replays them (Kafka: recomputed after a
            restart) and otherwise emits them with ``partial=True``; True always
            emits them (``partial=True``); False never does.
        scheduler: the clock of processing time and of the timers (default:
            the pipeline's; a test's virtual time).
        name: the stage's name in status, metrics and dead letters (default:
            ``sliding_window``, numbered when a pipeline has several).
    """
    where = _where("sliding_window", name)
    width = _seconds(size, where, "size")
    step = _seconds(slide, where, "slide")
    if step > width:
        raise ConfigurationError(
            f"{where}: slide ({step:g} s) must not exceed size ({width:g} s); "
            "windows with gaps between them are not supported"
        )
    spec = _spec(
        "sliding_window",
        where,
        time,
        key,
        agg,
        allowed_lateness,
        late,
        idle_timeout,
        emit_partial,
        scheduler,
    )
    geo = _panes(width, step, offset, where)
    if geo.W > _MAX_PANES:
        raise ConfigurationError(
            f"{where}: size {width:g} s and slide {step:g} s make windows of {geo.W} panes "
            f"of {geo.pane:g} s; choose a size that is a multiple of the slide"
        )
    return _operator(spec, name, partial(PaneHandler, geo=geo))


def session_window(
    gap: Duration,
    *,
    time: TimeDomain = "processing",
    key: KeySpec = None,
    agg: AggSpec = None,
    allowed_lateness: Duration = 0.0,
    late: LatePolicy | None = None,
    idle_timeout: Duration | None = None,
    emit_partial: bool | Literal["auto"] = "auto",
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> WindowOperator:
    """Sessions per key: events less than ``gap`` seconds apart share a window,
    which closes ``gap`` seconds after its last event (on the scheduler clock,
    or when the watermark passes that in event time). The
    :class:`~rxagent.operators.Window`'s ``start`` and ``end`` are the times of
    its first and last event; a key's emitted sessions are at least ``gap``
    apart. An out-of-order event may merge two sessions. An event behind the
    watermark joins a session only at or after its start, and is late if it
    would start a session or extend one backwards. Options as in
    :func:`tumbling_window`.

    ::

        -a-b-----c-|   session_window(0.003)   (1 ms frames)
        ------x----(y|)   x=[a, b], y=[c]

    Args:
        gap: a key's session closes after this many seconds (or ``timedelta``)
            without an event of that key.
        time: ``"processing"`` (default: the scheduler's clock when an event
            arrives) or ``"event"`` (the events' times, set by ``event_time``).
        key: windows per this key: a field name or a function of the value
            (default: the event's key, ``key_by``; events without keys share
            one window).
        agg: what a window's ``value`` is: an aggregation (``mean("px")``), a
            mapping of names to aggregations (the value is a dict), or a
            function of the list of values; None (default): the list itself.
        allowed_lateness: event time: seconds the watermark stays behind the
            largest event time seen, so a window waits this long for stragglers
            (default 0).
        late: event time: what becomes of an event for a window already closed:
            ``"drop"`` (None, the default: ended and counted in ``dropped``),
            ``"dead_letter"``, or ``"stream"`` (to the operator's ``late``
            stream).
        idle_timeout: event time: close the open windows after this many
            seconds without an event, on the scheduler clock (default None:
            never; otherwise only new events move the watermark).
        emit_partial: what the windows still open become when the stream
            completes. At the end of a finite input they are emitted (their final
            value) unless False. On a stop: ``"auto"`` (default) gives their events
            up uncommitted when the source replays them (Kafka: recomputed after a
            restart) and otherwise emits them with ``partial=True``; True always
            emits them (``partial=True``); False never does.
        scheduler: the clock of processing time and of the timers (default:
            the pipeline's; a test's virtual time).
        name: the stage's name in status, metrics and dead letters (default:
            ``session_window``, numbered when a pipeline has several).
    """
    where = _where("session_window", name)
    width = _seconds(gap, where, "gap")
    spec = _spec(
        "session_window",
        where,
        time,
        key,
        agg,
        allowed_lateness,
        late,
        idle_timeout,
        emit_partial,
        scheduler,
    )
    return _operator(spec, name, partial(SessionHandler, gap=width))


# -- building --------------------------------------------------------------------------


def _operator(
    spec: WindowSpec, name: str | None, handler: Callable[..., WindowHandler]
) -> WindowOperator:
    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        return batch_stage(source, lambda observer, sched: handler(spec, stage, observer, sched))

    return WindowOperator(spec.kind, build, name, spec.subject)


def _panes(size: float, slide: float, offset: Duration, where: str) -> Panes:
    start = _offset(offset, where)
    try:
        return Panes(size, slide, start)
    except ValueError as error:
        raise ConfigurationError(f"{where}: too small: {error}") from None


def _where(kind: str, name: str | None) -> str:
    return f"{kind}({name!r})" if name else kind


def _spec(
    kind: str,
    where: str,
    time: str,
    key: KeySpec,
    agg: AggSpec,
    allowed_lateness: Duration,
    late: str | None,
    idle_timeout: Duration | None,
    emit_partial: EmitPartial,
    scheduler: abc.SchedulerBase | None,
) -> WindowSpec:
    if time not in ("processing", "event"):
        raise ConfigurationError(f"{where}: time must be 'processing' or 'event', got {time!r}")
    lateness = _seconds(allowed_lateness, where, "allowed_lateness", zero=True)
    if time == "processing":
        for arg, given in (
            ("allowed_lateness", lateness != 0),
            ("late", late is not None),
            ("idle_timeout", idle_timeout is not None),
        ):
            if given:
                raise ConfigurationError(
                    f"{where}: {arg} only applies with time='event'; processing-time windows "
                    "close on timers at their end and see no late events"
                )
    if late not in (None, "drop", "dead_letter", "stream"):
        raise ConfigurationError(
            f"{where}: late must be 'drop', 'dead_letter' or 'stream', got {late!r}"
        )
    return WindowSpec(
        kind,
        event=time == "event",
        key_fn=None if key is None else to_key_function(key),
        aggregation=resolve_aggregation(agg) if agg is not None else collect(),
        lateness=lateness,
        late=late or "drop",
        idle=None if idle_timeout is None else _seconds(idle_timeout, where, "idle_timeout"),
        emit_partial=check_emit_partial(emit_partial, where),
        scheduler=scheduler,
    )


def _seconds(value: Any, where: str, arg: str, *, zero: bool = False) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
        or (seconds == 0 and not zero)
    ):
        need = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise ConfigurationError(f"{where}: {arg} must be {need} or a timedelta, got {value!r}")
    return float(seconds)


def _offset(value: Any, where: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
    ):
        raise ConfigurationError(
            f"{where}: offset must be a finite number of seconds or a timedelta, got {value!r}"
        )
    return float(seconds)
