"""Whole pipelines in virtual time: a source that plays timed events on the
pipeline's scheduler, and a sink that records when each event arrived.

A :class:`~rxagent.runtime.Pipeline` runs its source as an asyncio task. Started
with a virtual-time scheduler (``await pipeline.start(scheduler=TestScheduler())``),
the :class:`VirtualSource` drives that scheduler's clock itself: before each
emission it advances the clock to the emission's time, which runs every timer of
the pipeline due until then (windows, delays, throttles), in order. An hour of
events runs in milliseconds, and every stage sees the times it would see live.

Credit still bounds the events in flight. When a stage holds all of it until a
timer fires (a ``delay``), the source lets virtual time pass up to the next
scheduled action, as real time would pass while it waited.

:class:`MarbleSink` notes the frame at which each event reached it, so a whole
pipeline can be checked against a marble diagram::

    sink = MarbleSink()
    pipeline = Pipeline("p", marble_source("-a-b-|")).pipe(ops.map(str.upper)).to(sink)
    await pipeline.start(scheduler=TestScheduler())
    await pipeline.wait()
    sink.assert_marbles("-A-B-|")
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from reactivex.scheduler import VirtualTimeScheduler

from ..clock import advance
from ..context import PipelineContext
from ..events import Batch, Event, Position
from ..exceptions import ConfigurationError
from ..sinks.base import Sink
from ..sources.base import Emitter, Source
from .marbles import (
    DEFAULT_FRAME,
    MarbleError,
    Notification,
    assert_notifications,
    parse_letters,
    render_marbles,
    source_exception,
)

__all__ = ["MarbleSink", "TimedEvent", "VirtualSource", "marble_source", "virtual_source"]


@dataclass(frozen=True, slots=True)
class TimedEvent:
    """An event and when it arrives.

    ``arrival``: seconds after the source starts at which the source emits it
    (processing time). ``time``: its event time, when it happened (may lag the
    arrival, and be out of order). ``seq``: its number in a generated stream; a
    duplicate delivery keeps the ``seq`` of the event it repeats.
    """

    arrival: float
    value: Any
    key: Hashable = None
    time: float | None = None
    seq: int | None = None

    def to_event(self, source: str = "virtual") -> Event:
        """The :class:`~rxagent.events.Event` (its position is ``seq``)."""
        position = None if self.seq is None else Position(source, None, self.seq)
        return Event(self.value, self.key, self.time, position)


TimedItem = TimedEvent | tuple[float, Any]


def _timed(item: TimedItem) -> TimedEvent:
    if isinstance(item, TimedEvent):
        return item
    arrival, value = item
    return TimedEvent(float(arrival), value)


class VirtualSource(Source):
    """Emits timed events at their arrival times on the pipeline's virtual-time
    scheduler, driving its clock (see the module docstring).

    ``items``: :class:`TimedEvent` objects or ``(arrival, value)`` pairs, emitted
    in arrival order (a stable sort: same-time items keep their order, and leave
    in one batch). Arrivals count from the scheduler's clock when the source
    starts. Each event's position is its emission index.

    After the last event the source advances the clock to ``until`` (if given),
    then completes, or fails the pipeline with ``error``, or with
    ``forever=True`` stays open like a live feed until the pipeline is drained.

    The source drives the clock only while it plays: a timer due after its end
    (the completion a ``delay`` schedules) waits for the test to advance the
    clock: ``await source.finished()``, then ``scheduler.advance_by(seconds)``.
    """

    kind = "virtual"

    def __init__(
        self,
        items: Iterable[TimedItem],
        *,
        until: float | None = None,
        error: BaseException | None = None,
        forever: bool = False,
        name: str | None = None,
        credit: int = 4096,
        batch_size: int = 512,
    ) -> None:
        super().__init__(name, credit=credit, batch_size=batch_size)
        self.items = sorted((_timed(item) for item in items), key=lambda e: e.arrival)
        if self.items and self.items[0].arrival < 0:
            raise ConfigurationError(
                f"virtual source {self.name!r}: arrivals must be >= 0 seconds after the start, "
                f"got {self.items[0].arrival}"
            )
        if until is not None and self.items and until < self.items[-1].arrival:
            raise ConfigurationError(
                f"virtual source {self.name!r}: until={until} is before the last arrival "
                f"({self.items[-1].arrival})"
            )
        if error is not None and forever:
            raise ConfigurationError(
                f"virtual source {self.name!r}: give error= or forever=True, not both"
            )
        self.until = until
        self.error = error
        self.forever = forever
        self.emitted = 0
        self._finished: asyncio.Event | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "credit": self.credit,
            "events": len(self.items),
            "emitted": self.emitted,
        }

    async def finished(self) -> None:
        """Wait until the source has emitted its last event and reached ``until``
        (then a test may advance the clock for timers due after the end)."""
        if self._finished is None:
            self._finished = asyncio.Event()
        await self._finished.wait()

    async def run(self, out: Emitter) -> None:
        if self._finished is None:
            self._finished = asyncio.Event()
        try:
            await self._play(out)
        finally:
            self._finished.set()
        if self.error is not None:
            raise self.error
        if self.forever:
            await asyncio.get_running_loop().create_future()

    async def _play(self, out: Emitter) -> None:
        scheduler = out.ctx.scheduler
        if not isinstance(scheduler, VirtualTimeScheduler):
            raise ConfigurationError(
                f"virtual source {self.name!r} needs a virtual-time scheduler: start the "
                "pipeline with start(scheduler=TestScheduler()) (reactivex.testing)"
            )
        base = scheduler.now
        items = self.items
        i, n = 0, len(items)
        while i < n:
            at = items[i].arrival
            end = i + 1
            while end < n and end - i < self.batch_size and items[end].arrival == at:
                end += 1
            advance(scheduler, base + timedelta(seconds=at))
            while i < end:
                granted = await out.virtual_credit(end - i)
                self._emit(out, items[i : i + granted])
                i += granted
            # let the loop's own work run (tool calls, sinks' tasks)
            await asyncio.sleep(0)
        if self.until is not None:
            advance(scheduler, base + timedelta(seconds=self.until))

    def _emit(self, out: Emitter, rows: Sequence[TimedEvent]) -> None:
        start = self.emitted
        keys = [r.key for r in rows]
        times = [r.time for r in rows]
        out.emit(
            [r.value for r in rows],
            keys=keys if any(k is not None for k in keys) else None,
            times=times if any(t is not None for t in times) else None,
            positions=range(start, start + len(rows)),
        )
        self.emitted += len(rows)


def virtual_source(
    items: Iterable[TimedItem],
    *,
    until: float | None = None,
    error: BaseException | None = None,
    forever: bool = False,
    name: str | None = None,
    credit: int = 4096,
    batch_size: int = 512,
) -> VirtualSource:
    """A :class:`VirtualSource` over timed events or ``(arrival, value)`` pairs."""
    return VirtualSource(
        items,
        until=until,
        error=error,
        forever=forever,
        name=name,
        credit=credit,
        batch_size=batch_size,
    )


def marble_source(
    diagram: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    frame: float = DEFAULT_FRAME,
    error: Any = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    letter_keys: Mapping[str, Hashable] | None = None,
    letter_times: Mapping[str, float | None] | None = None,
    name: str | None = None,
    credit: int = 4096,
    batch_size: int = 512,
) -> VirtualSource:
    """A :class:`VirtualSource` playing a marble diagram: each value at its frame,
    ``|`` completes the pipeline's stream at its frame, ``#`` fails the pipeline
    there with ``error`` (an exception, or the message of one), and a diagram
    with neither stays open until the pipeline is drained. Frames before a ``^``
    are never emitted.

    ``keys`` and ``times`` set each event's key and event time from its value;
    ``letter_keys`` and ``letter_times`` set them per letter of the diagram
    (``{"a": "AAPL"}``: every ``a`` has the key ``"AAPL"``), as a Kafka message's
    key and timestamp travel beside its value. A letter's own key or time wins
    over what ``keys`` or ``times`` compute. A letter in ``letter_keys`` or
    ``letter_times`` that the diagram never draws as a value is a
    :class:`~rxagent.testing.marbles.MarbleError` (a typo would otherwise pass).
    """
    parsed = parse_letters(diagram, values, error=error, frame=frame)
    key_of: dict[str, Hashable] = dict(letter_keys or {})
    time_of: dict[str, float | None] = dict(letter_times or {})
    drawn = {c for n, c in parsed if n.kind == "N"}
    for argument, letters in (("letter_keys", key_of), ("letter_times", time_of)):
        unknown = [repr(c) for c in letters if c not in drawn]
        if unknown:
            raise MarbleError(
                f"{argument} names {', '.join(unknown)}, not a value of "
                f"{diagram!r} (its letters: {', '.join(sorted(drawn)) or 'none'})"
            )
    items: list[TimedEvent] = []
    until: float | None = None
    failure: BaseException | None = None
    forever = True
    for n, c in parsed:
        if n.frame < 0:
            continue
        if n.kind == "N":
            if until is not None:
                break
            value = n.value
            key = key_of[c] if c in key_of else None if keys is None else keys(value)
            at = time_of[c] if c in time_of else None if times is None else times(value)
            items.append(TimedEvent(n.frame * frame, value, key, at))
        elif until is None:
            until = n.frame * frame
            forever = False
            if n.kind == "E":
                err = n.value
                failure = source_exception(err)
    return VirtualSource(
        items,
        until=until,
        error=failure,
        forever=forever,
        name=name or "marbles",
        credit=credit,
        batch_size=batch_size,
    )


class MarbleSink(Sink):
    """Records each event with the frame at which it arrived (``|`` when the
    stream completes) and compares the recording with a marble diagram.

    Frames count from the pipeline's clock when the pipeline starts. Every row
    is ended on arrival, as a list sink does.
    """

    kind = "marbles"

    def __init__(self, name: str | None = None, *, frame: float = DEFAULT_FRAME) -> None:
        super().__init__(name)
        self.frame = frame
        self.notifications: list[Notification] = []
        self.events: list[Event] = []
        self._origin = 0.0

    def bind(self, ctx: PipelineContext) -> None:
        super().bind(ctx)
        self._origin = ctx.now()

    def _now_frame(self, ctx: PipelineContext) -> int:
        return round((ctx.now() - self._origin) / self.frame)

    def on_batch(self, batch: Batch) -> None:
        at = self._now_frame(batch.ctx)
        events = batch.events()
        self.events.extend(events)
        self.notifications.extend(Notification(at, "N", e.value, e.key) for e in events)
        batch.end_all()

    def on_completed(self) -> None:
        if self.ctx is not None:
            self.notifications.append(Notification(self._now_frame(self.ctx), "C"))

    @property
    def values(self) -> list[Any]:
        """The values that reached the sink, in order."""
        return [e.value for e in self.events]

    def diagram(self, values: Mapping[Any, Any] | Sequence[Any] | None = None) -> str:
        """What arrived, as a marble diagram."""
        return render_marbles(self.notifications, values, frame=self.frame)[0]

    def assert_marbles(
        self, expected: str, values: Mapping[Any, Any] | Sequence[Any] | None = None
    ) -> None:
        """Assert that what arrived matches ``expected`` (frames from the start)."""
        assert_notifications(self.notifications, expected, values, frame=self.frame)
