"""Per-event transforms: filter, map, key_by, event_time, flat_map, tap.

User functions receive the event's *value* (``lambda v: v["px"] > 100``). Each
stage applies the function to a whole batch with the builtin ``map`` (a loop in
C); if the function raises, the stage redoes that batch row by row so only the
failing events go to dead letters, with the error, and the rest flow on.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from reactivex import Observable

from ..events import Batch, Hold, retain_hold
from ..values import to_key_function
from .base import BatchHandler, Emit, Operator, batch_stage
from .toolkit import EventFunctions, apply, without_failed

__all__ = [
    "event_time",
    "filter",
    "filter_stage",
    "flat_map",
    "key_by",
    "map",
    "per_row_stage",
    "tap",
    "to_key_function",
]


def per_row_stage(
    kind: str,
    fn: Callable[[Any], Any],
    attach: Callable[[Batch, list[Any]], Batch],
    name: str | None,
    many: Callable[[list[Any]], list[Any]] | None = None,
    *,
    events: EventFunctions | None = None,
) -> Operator:
    """A stage computing ``fn(value)`` for every row (map, key_by, event_time, and the
    compiled expressions' stages in rxagent.config.expressions) and attaching the results to
    the batch with ``attach`` (as values, keys or times); rows whose ``fn`` raised
    are dead-lettered and left out. ``many`` and ``events`` are passed on to
    :func:`~rxagent.operators.toolkit.apply`."""

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        class Handler(BatchHandler):
            counted: Any = None  # the pipeline context whose counters ``metrics`` are
            metrics: Any = None

            def on_batch(self, batch: Batch, emit: Emit) -> None:
                if batch.ctx is not self.counted:
                    self.counted, self.metrics = batch.ctx, batch.ctx.stage(stage)
                metrics = self.metrics
                results, ok = apply(batch, fn, stage, many, events=events)
                if ok:
                    batch = without_failed(batch, ok)
                    results = [r for r, good in zip(results, ok, strict=True) if good]
                if results:
                    metrics.events_out += len(results)
                    emit(attach(batch, results))

        return batch_stage(source, lambda _o, _s: Handler(), stage)

    return Operator(kind, build, name)


def filter(predicate: Callable[[Any], Any], *, name: str | None = None) -> Operator:
    """Keep the events whose value satisfies ``predicate``; end the others.

    ::

        --1--2--3--4--|   filter(lambda v: v % 2 == 0)
        -----2-----4--|

    Args:
        predicate: a function of the value; a truthy result keeps the event, a
            falsy one ends it (counted in ``dropped``), and a raising one sends the
            event to dead letters with the error.
        name: the stage's name in status, metrics and dead letters (default:
            ``filter``, numbered when a pipeline has several: ``filter#2``).
    """
    return filter_stage(predicate, name)


def filter_stage(
    predicate: Callable[[Any], Any],
    name: str | None,
    many: Callable[[list[Any]], list[Any]] | None = None,
    *,
    events: EventFunctions | None = None,
) -> Operator:
    """The filter stage, also of compiled expressions (rxagent.config.expressions).

    ``many`` evaluates the predicate over a whole batch at once (``predicate`` is
    still used row by row when ``many`` raises); ``events`` evaluates it on whole
    events instead (:func:`~rxagent.operators.toolkit.apply`)."""

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        class Handler(BatchHandler):
            def on_batch(self, batch: Batch, emit: Emit) -> None:
                metrics = batch.ctx.stage(stage)
                n = len(batch.values)
                mask, ok = apply(batch, predicate, stage, many, events=events)
                if ok:
                    batch = without_failed(batch, ok)
                    mask = [m for m, good in zip(mask, ok, strict=True) if good]
                    n = len(batch.values)
                kept = batch.select(mask)
                out = len(kept.values)
                metrics.dropped += n - out
                if out:
                    metrics.events_out += out
                    emit(kept)

        return batch_stage(source, lambda _o, _s: Handler(), stage)

    return Operator("filter", build, name)


def map(fn: Callable[[Any], Any], *, name: str | None = None) -> Operator:
    """Replace each event's value by ``fn(value)``; key, time and position stay.

    ::

        --1--2--3--|   map(lambda v: v * 10)
        --a--b--c--|   a=10, b=20, c=30

    Args:
        fn: a function of the value giving the new value; one that raises sends
            the event to dead letters with the error.
        name: the stage's name in status, metrics and dead letters (default:
            ``map``, numbered when a pipeline has several: ``map#2``).
    """

    return per_row_stage("map", fn, Batch.with_values, name)


def key_by(key: str | int | Callable[[Any], Hashable], *, name: str | None = None) -> Operator:
    """Set each event's key from its value: a field name or a function.

    Keys drive the per-key operators (windows, throttles, dedup) and state stores.

    Args:
        key: a field name or index (read with ``value[key]``, in C) or a function of
            the value giving a hashable key; a missing field or a raising function
            sends the event to dead letters.
        name: the stage's name in status, metrics and dead letters (default:
            ``key_by``, numbered when a pipeline has several: ``key_by#2``).
    """
    key_fn = to_key_function(key)

    return per_row_stage("key_by", key_fn, Batch.with_keys, name)


def event_time(time: str | Callable[[Any], float | None], *, name: str | None = None) -> Operator:
    """Set each event's event time (epoch seconds) from its value.

    Event-time windows (``time="event"``) and their watermarks read it.

    Args:
        time: a field name or a function of the value giving the time in epoch
            seconds (any number; ``None`` leaves the event without a time).
        name: the stage's name in status, metrics and dead letters (default:
            ``event_time``, numbered when a pipeline has several: ``event_time#2``).
    """
    time_fn = to_key_function(time)

    return per_row_stage(
        "event_time",
        time_fn,
        lambda batch, times: batch.with_times([None if t is None else float(t) for t in times]),
        name,
    )


def flat_map(fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Operator:
    """Replace each event by zero or more events with the values ``fn(value)`` yields.

    The outputs of one input share its hold: the input ends when all of them have.

    Args:
        fn: a function of the value returning an iterable of new values; an empty
            one ends the event (counted in ``dropped``), a raising one sends it to
            dead letters.
        name: the stage's name in status, metrics and dead letters (default:
            ``flat_map``, numbered when a pipeline has several: ``flat_map#2``).
    """

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        class Handler(BatchHandler):
            def on_batch(self, batch: Batch, emit: Emit) -> None:
                ctx = batch.ctx
                metrics = ctx.stage(stage)
                rows: list[int] = []
                values: list[Any] = []
                holds: list[Hold] = []
                for i, value in enumerate(batch.values):
                    try:
                        produced = list(fn(value))
                    except Exception as error:
                        ctx.dead_letter(batch.event(i, take=True), stage, error)
                        continue
                    hold = batch.hold(i)
                    if not produced:
                        metrics.dropped += 1
                        batch.end_row(i)
                        continue
                    # one more end is owed per extra output
                    retain_hold(hold, len(produced) - 1)
                    for out in produced:
                        rows.append(i)
                        values.append(out)
                        holds.append(hold)
                if values:
                    derived = batch.take(rows)
                    derived.values = values
                    derived.holds = holds
                    metrics.events_out += len(values)
                    emit(derived)

        return batch_stage(source, lambda _o, _s: Handler(), stage)

    return Operator("flat_map", build, name)


def tap(fn: Callable[[Any], Any], *, name: str | None = None) -> Operator:
    """Call ``fn(value)`` for its side effect; events pass unchanged.

    A raising ``fn`` sends that event to dead letters.

    Args:
        fn: called with each value; its result is ignored.
        name: the stage's name in status, metrics and dead letters (default:
            ``tap``, numbered when a pipeline has several: ``tap#2``).
    """

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        class Handler(BatchHandler):
            def on_batch(self, batch: Batch, emit: Emit) -> None:
                metrics = batch.ctx.stage(stage)
                _, ok = apply(batch, fn, stage)
                if ok:
                    batch = without_failed(batch, ok)
                if batch.values:
                    metrics.events_out += len(batch.values)
                    emit(batch)

        return batch_stage(source, lambda _o, _s: Handler(), stage)

    return Operator("tap", build, name)
