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

from collections import deque
from collections.abc import Hashable
from itertools import compress, islice, repeat, starmap
from operator import eq, not_
from typing import TYPE_CHECKING, Any

from reactivex import Observable, abc

from ..clock import scheduler_clock
from ..events import Batch
from ..exceptions import ConfigurationError
from .base import BatchHandler, Emit, Operator, batch_stage
from .toolkit import KeyArg, KeyFunction, apply, ok_rows, optional_key_function, seconds

if TYPE_CHECKING:
    from ..context import StageMetrics

__all__ = ["dedup"]


def _scoped(key_fn: KeyFunction | None, id_fn: KeyFunction | None) -> KeyFunction | None:
    """The function giving a row's id within its key's scope (``None``: the value)."""
    if key_fn is None:
        return id_fn
    kf = key_fn
    if id_fn is None:

        def scoped_id(value: Any) -> Hashable:
            return (kf(value), value)

        return scoped_id
    idf = id_fn

    def scoped_key_id(value: Any) -> Hashable:
        return (kf(value), idf(value))

    return scoped_key_id


class _Dedup(BatchHandler):
    """One subscription's remembered ids: ``seen`` maps each id to the stamp of the
    row that let it through, ``order`` holds them oldest first (forgetting pops
    from the left), ``batches`` the (time, ``let_through``) of each batch for ``ttl``."""

    def __init__(
        self,
        stage: str,
        scoped_id: KeyFunction | None,
        key_of_batch: bool,
        horizon: int | None,
        ttl: float | None,
        scheduler: abc.SchedulerBase | None,
    ) -> None:
        self.stage = stage
        self.scoped_id = scoped_id
        self.key_of_batch = key_of_batch  # ids are scoped by the batch's keys
        self.horizon = horizon
        self.ttl = ttl
        self.seen: dict[Hashable, int] = {}
        self.order: deque[Hashable] = deque()
        self.next_stamp = 0
        self.let_through = 0  # ids ever appended to ``order``
        self.forgotten = 0  # ids ever popped from it
        self.batches: deque[tuple[float, int]] = deque()
        self.clock = None if scheduler is None else scheduler_clock(scheduler)

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        ctx = batch.ctx
        metrics = ctx.stage(self.stage)
        batch, ids = self._ids(batch)
        if not ids:
            return
        now = ctx.now() if self.clock is None else self.clock()
        if self.ttl is not None:
            # a nanosecond of slack: clocks that go through datetime round
            self._expire(now - self.ttl + 1e-9)
        base = self.next_stamp
        self.next_stamp = base + len(ids)
        mask = self._look_up(ids, base)
        if mask is None:
            self._rows(batch, ids, base, emit, metrics)
        else:
            kept = batch.select(mask)
            out = len(kept.values)
            metrics.dropped += len(ids) - out
            if out:
                metrics.events_out += out
                emit(kept)
        if self.ttl is not None:
            self.batches.append((now, self.let_through))
        metrics.extra["remembered"] = len(self.seen)

    def _ids(self, batch: Batch) -> tuple[Batch, list[Any]]:
        """Each row's id; rows whose id function failed were dead-lettered (which
        ended them) and leave the batch."""
        ids: list[Any]
        if self.scoped_id is None:
            ids = batch.values
        else:
            ids, ok = apply(batch, self.scoped_id, self.stage)
            if ok:
                keep = ok_rows(ok)
                batch = batch.take(keep)
                ids = [ids[i] for i in keep]
        if ids and self.key_of_batch and batch.keys is not None:
            ids = list(zip(batch.keys, ids, strict=True))
        return batch, ids

    def _look_up(self, ids: list[Any], base: int) -> list[bool] | None:
        """The fast path, in C: which rows are new (and remember them). ``None``
        when the batch must go row by row (an unhashable id, or a repeat the
        horizon may have forgotten first); then nothing is remembered."""
        seen = self.seen
        n = len(ids)
        stamps = range(base, base + n)
        before = len(seen)
        try:
            mask = list(map(eq, map(seen.setdefault, ids, stamps), stamps))
        except TypeError:  # an unhashable id
            self._undo(ids, stamps)
            return None
        added = len(seen) - before
        excess = 0 if self.horizon is None else len(seen) - self.horizon
        if excess > 0 and added < n and self._at_risk(ids, mask, excess):
            self._undo(ids, stamps)
            return None
        self.order.extend(compress(ids, mask))
        self.let_through += added
        self._forget(excess)
        return mask

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
        self, batch: Batch, ids: list[Any], base: int, emit: Emit, metrics: StageMetrics
    ) -> None:
        """The exact path: one row at a time, forgetting as it goes."""
        seen = self.seen
        order = self.order
        horizon = self.horizon
        stage = self.stage
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


def dedup(
    id: KeyArg = None,
    *,
    key: KeyArg = None,
    horizon: int | None = None,
    ttl: float | None = None,
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> Operator:
    """Let each id through once within the horizon; end and count the repeats.

    Give ``horizon``, ``ttl`` or both: memory must be bounded. Per-key sequence
    numbers dedup as ``dedup("seq", key="sensor")``. A repeat is dropped when its
    id was let through within the horizon; a repeat does not extend it. An id
    function that raises, or an unhashable id, sends that event to dead letters.

    ::

        -a-b-a-c-a-|   dedup(horizon=2)
        -a-b---c-a-|   (the last a: b and c were let through since)

    Args:
        id: a field name or a function of the value giving the event's id (a
            message id, a sequence number); None (default): the value itself.
        key: ids are unique per key: a field name or a function of the value
            (default: the event's key, ``key_by``; events without a key share
            one scope).
        horizon: remember the last this many ids let through, all keys together
            (so memory stays bounded); None: no count bound (give ``ttl``).
        ttl: remember each id this many seconds after it was let through, in
            processing time; None: no time bound (give ``horizon``).
        scheduler: the clock ``ttl`` runs on (default: the pipeline's; a test's
            virtual time).
        name: the stage's name in status, metrics and dead letters (default:
            ``dedup``, numbered when a pipeline has several: ``dedup#2``).
    """
    id_fn = optional_key_function("dedup", "id", id, takes="a field name or a function")
    key_fn = optional_key_function("dedup", "key", key, takes="a field name or a function")
    if horizon is None and ttl is None:
        raise ConfigurationError(
            "dedup: give horizon= (how many ids to remember) or ttl= (for how many "
            "seconds), or both: without either, memory grows with every new id"
        )
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int)):
        raise ConfigurationError(f"dedup: horizon must be an int number of ids, got {horizon!r}")
    if horizon is not None and horizon < 1:
        raise ConfigurationError(f"dedup: horizon must be >= 1 ids, got {horizon!r}")
    if ttl is not None:
        seconds("dedup", "ttl", ttl)
    scoped_id = _scoped(key_fn, id_fn)

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        def make(_o: abc.ObserverBase[Batch], _s: abc.SchedulerBase | None) -> _Dedup:
            return _Dedup(stage, scoped_id, key_fn is None, horizon, ttl, scheduler)

        return batch_stage(source, make, stage)

    return Operator("dedup", build, name)
