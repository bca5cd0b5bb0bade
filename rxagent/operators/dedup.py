"""Dedup: drop events whose id was already seen within a horizon.

At-least-once sources deliver some events twice (a Kafka consumer replays what
it had not committed, a feed resends after a reconnect). ``dedup`` remembers the
ids it let through, for the last ``horizon`` ids and/or ``ttl`` seconds, and
*ends* a repeat (its processing is over: its credit returns and the commit
watermark moves past it), counting it in the stage's ``dropped``.

The work per batch runs in C: ids come from one ``map`` over the values, and
one ``map(seen.setdefault, ids, stamps)`` both looks every id up and remembers
the new ones: each row offers a fresh stamp (a running number), so a row is new
exactly when it gets its own stamp back, repeats inside the batch included.
Only when ids are unhashable, or when a batch with repeats also pushes old ids
past the ``horizon``, does the batch run again row by row, so the horizon is
exact per row, not per batch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from itertools import compress, islice, repeat, starmap
from operator import eq, not_
from typing import Any

from reactivex import Observable, abc

from ..clock import scheduler_clock
from ..events import Batch
from ..exceptions import ConfigurationError
from .base import BatchHandler, Emit, Operator, batch_stage
from .transform import _apply, to_key_function

__all__ = ["dedup"]


def dedup(
    id: str | int | Callable[[Any], Hashable] | None = None,
    *,
    key: str | int | Callable[[Any], Hashable] | None = None,
    horizon: int | None = None,
    ttl: float | None = None,
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> Operator:
    """Let each id through once within the horizon; end and count the repeats.

    - ``id``: a field name or function giving the event's id (a message id, or a
      sequence number); by default the value itself.
    - ``key``: ids are unique per key: a field name or function, by default the
      event's key (``key_by``); events without a key share one scope. Per-key
      sequence numbers dedup as ``dedup("seq", key="sensor")``.
    - ``horizon``: remember the last ``horizon`` ids let through (all keys
      together, so memory stays bounded); ``ttl``: remember each for ``ttl``
      seconds after it was let through. Give one or both: memory must be bounded.

    A repeat is dropped when its id was let through within the horizon; a repeat
    does not extend it. ``ttl`` is processing time on ``scheduler`` (default: the
    pipeline's clock). An id function that raises, or an unhashable id, sends
    that event to dead letters.

    ::

        -a-b-a-c-a-|   dedup(horizon=2)
        -a-b---c-a-|   (the last a: b and c were let through since)
    """
    if id is None:
        id_fn: Callable[[Any], Hashable] | None = None
    else:
        try:
            id_fn = to_key_function(id)
        except TypeError as error:
            raise ConfigurationError(
                f"dedup: id must be a field name or a function, got {id!r}"
            ) from error
    try:
        key_fn = None if key is None else to_key_function(key)
    except TypeError as error:
        raise ConfigurationError(
            f"dedup: key must be a field name or a function, got {key!r}"
        ) from error
    if horizon is None and ttl is None:
        raise ConfigurationError(
            "dedup: give horizon= (how many ids to remember) or ttl= (for how many "
            "seconds), or both: without either, memory grows with every new id"
        )
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int)):
        raise ConfigurationError(f"dedup: horizon must be an int number of ids, got {horizon!r}")
    if horizon is not None and horizon < 1:
        raise ConfigurationError(f"dedup: horizon must be >= 1 ids, got {horizon!r}")
    if ttl is not None and not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise ConfigurationError(f"dedup: ttl must be a number of seconds > 0, got {ttl!r}")

    if key_fn is not None:
        scoped_id: Callable[[Any], Hashable] | None
        if id_fn is None:
            kf = key_fn

            def scoped_id(value: Any) -> Hashable:
                return (kf(value), value)
        else:
            kf, idf = key_fn, id_fn

            def scoped_id(value: Any) -> Hashable:
                return (kf(value), idf(value))
    else:
        scoped_id = id_fn

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        class Handler(BatchHandler):
            def __init__(self) -> None:
                # id -> stamp of the row that let it through
                self.seen: dict[Hashable, int] = {}
                # the remembered ids, oldest first: forgetting pops from the left
                self.order: deque[Hashable] = deque()
                self.next_stamp = 0
                self.let_through = 0  # ids ever appended to ``order``
                self.forgotten = 0  # ids ever popped from it
                # (time, ``let_through`` after the batch) per batch, to forget after ttl
                self.batches: deque[tuple[float, int]] = deque()
                self.clock = None if scheduler is None else scheduler_clock(scheduler)

            def on_batch(self, batch: Batch, emit: Emit) -> None:
                ctx = batch.ctx
                metrics = ctx.stage(stage)
                metrics.events_in += len(batch.values)
                ids: list[Any]
                if scoped_id is None:
                    ids = batch.values
                else:
                    ids, ok = _apply(batch, scoped_id, stage)
                    if ok:  # failed rows were dead-lettered, which ended them
                        keep = [i for i, good in enumerate(ok) if good]
                        batch = batch.take(keep)
                        ids = [ids[i] for i in keep]
                n = len(ids)
                if n == 0:
                    return
                if key_fn is None and batch.keys is not None:
                    ids = list(zip(batch.keys, ids, strict=True))
                now = ctx.now() if self.clock is None else self.clock()
                seen = self.seen
                if ttl is not None:
                    # a nanosecond of slack: clocks that go through datetime round
                    self._expire(now - ttl + 1e-9)
                base = self.next_stamp
                self.next_stamp = base + n
                stamps = range(base, base + n)
                before = len(seen)
                mask: list[bool] | None
                try:
                    mask = list(map(eq, map(seen.setdefault, ids, stamps), stamps))
                except TypeError:  # an unhashable id
                    self._undo(ids, stamps)
                    mask = None
                if mask is not None:
                    added = len(seen) - before
                    excess = 0 if horizon is None else len(seen) - horizon
                    if excess > 0 and added < n and self._at_risk(ids, mask, excess):
                        self._undo(ids, stamps)
                        mask = None
                    else:
                        self.order.extend(compress(ids, mask))
                        self.let_through += added
                        self._forget(excess)
                if mask is None:
                    self._rows(batch, ids, base, emit, metrics)
                else:
                    kept = batch.select(mask)
                    out = len(kept.values)
                    metrics.dropped += n - out
                    if out:
                        metrics.events_out += out
                        emit(kept)
                if ttl is not None:
                    self.batches.append((now, self.let_through))
                metrics.extra["remembered"] = len(seen)

            def _at_risk(self, ids: list[Any], mask: list[bool], excess: int) -> bool:
                """Whether a repeat in this batch found an id that row-by-row eviction
                would have forgotten before that row: then the batch is redone exactly.
                Only the ``excess`` oldest ids are forgotten during the batch."""
                order = self.order
                if excess > len(order):  # more new ids than the horizon: some of them
                    return True
                risky = set(islice(order, excess))
                return any(map(risky.__contains__, compress(ids, map(not_, mask))))

            def _undo(self, ids: list[Any], stamps: range) -> None:
                """Take back the ids this batch added (rare path: exact redo follows)."""
                seen = self.seen
                for ident, stamp in zip(ids, stamps, strict=True):
                    try:
                        if seen.get(ident) == stamp:
                            del seen[ident]
                    except TypeError:
                        pass

            def _forget(self, k: int) -> None:
                """Forget the ``k`` oldest remembered ids, with the loop in C."""
                if k <= 0:
                    return
                self.forgotten += k
                popleft = self.order.popleft
                any(map(self.seen.__delitem__, starmap(popleft, repeat((), k))))

            def _rows(
                self, batch: Batch, ids: list[Any], base: int, emit: Emit, metrics: Any
            ) -> None:
                """The exact path: one row at a time, forgetting as it goes."""
                seen = self.seen
                order = self.order
                keep: list[int] = []
                for i, ident in enumerate(ids):
                    stamp = base + i
                    try:
                        got = seen.setdefault(ident, stamp)
                    except TypeError as error:
                        batch.ctx.dead_letter(
                            batch.event(i, take=True),
                            stage,
                            TypeError(f"dedup {stage!r}: the id {ident!r} is unhashable: {error}"),
                        )
                        continue
                    if got == stamp:
                        keep.append(i)
                        order.append(ident)
                        self.let_through += 1
                        if horizon is not None and len(seen) > horizon:
                            self._forget(1)
                    else:
                        metrics.dropped += 1
                        batch.end_row(i)
                if keep:
                    metrics.events_out += len(keep)
                    emit(batch.take(keep))

            def _expire(self, older_than: float) -> None:
                """Forget the ids let through at or before ``older_than``."""
                batches = self.batches
                upto = None
                while batches and batches[0][0] <= older_than:
                    upto = batches.popleft()[1]
                if upto is not None:
                    # some of them may have left already, pushed out by the horizon
                    self._forget(upto - self.forgotten)

        return batch_stage(source, lambda _o, _s: Handler())

    return Operator("dedup", build, name)
