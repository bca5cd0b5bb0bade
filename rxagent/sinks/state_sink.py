"""The state sink: folds each batch of events into a :class:`~rxagent.state.StateStore`.

The store itself (snapshots, changes, prompt text, durable backends) lives in
:mod:`rxagent.state`; this module only turns rows into updates: it finds each
row's key, computes the new value (a reducer of the old value and the event, or
the event's value), dead-letters rows whose key or reducer failed, and ends the
rest once the store applied them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ..events import Batch, Position
from ..exceptions import ConfigurationError, StateError
from ..state.store import Reducer, StateStore, Update, register_sink
from ..values import to_key_function
from .base import Sink

__all__ = ["StateSink"]


class StateSink(Sink):
    """Folds each event into a :class:`StateStore` (one version per batch) and ends it.

    Usually made by ``store.sink(...)``. An event whose key or reducer fails goes
    to dead letters; the others of its batch are applied.

    Args:
        store: the :class:`StateStore` written to.
        key: the entry each event updates: a field name or a function of the value
            (default: the event's key, ``key_by``; an event without one goes to dead
            letters).
        reducer: ``reducer(old, event) -> new`` folds the event into the entry's old
            value (None when absent; return ``rxagent.DELETE`` to remove the key);
            default: the entry becomes the new value.
        value: what is stored (instead of a reducer): a field name or a function of
            the value (default: the whole value).
        name: the sink's name in status and dead letters (default:
            ``state:<store name>``).
    """

    kind = "state"

    def __init__(
        self,
        store: StateStore,
        *,
        key: str | int | Callable[[Any], Hashable] | None = None,
        reducer: Reducer | None = None,
        value: str | int | Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"state:{store.name}")
        if reducer is not None and value is not None:
            raise ConfigurationError(
                f"state sink {self.name!r}: give a reducer or a value function, not both"
            )
        self.store = store
        self.key_fn = None if key is None else to_key_function(key)
        self.reducer = reducer
        self.value_fn = None if value is None else to_key_function(value)
        # the last pipeline context written from and its counters (one lookup per context)
        self._ctx: Any = None
        self._metrics: Any = None

    def on_batch(self, batch: Batch) -> None:
        ctx = batch.ctx
        store = self.store
        store.follow(ctx.now)  # the store's times are the pipeline's (Decision 8)
        if ctx is self._ctx:
            metrics = self._metrics
        else:
            self._ctx = ctx
            self._metrics = metrics = ctx.stage(self.name)
        values = batch.values
        metrics.events_in += len(values)
        if not store.owns(batch.partition):
            # the partition moved to another worker, which replays these events
            # (their offsets were not committed): they are not ours to apply
            metrics.dropped += len(values)
            batch.end_all()
            return
        if self.reducer is None:
            if len(values) == 1 and self._replace_one(batch, metrics):
                return
            if self._replace_newest(batch, metrics):
                return
        rows: list[int] = []
        updates: list[Update] = []
        failed: set[int] = set()
        times = batch.times
        positions = batch.positions
        keys = batch.keys
        key_fn = self.key_fn
        for i, value in enumerate(batch.values):
            try:
                if key_fn is not None:
                    k = key_fn(value)
                elif keys is not None:
                    k = keys[i]
                else:
                    raise StateError(
                        f"event has no key for state {self.store.name!r}: add ops.key_by(...) "
                        "before this sink or pass key= to store.sink()"
                    )
                if k is None:
                    raise StateError(f"key of event for state {self.store.name!r} is None")
            except Exception as error:
                failed.add(i)
                ctx.dead_letter(batch.event(i, take=True), self.name, error)
                continue
            position = None
            if positions is not None and positions[i] is not None:
                position = Position(batch.source, batch.partition, positions[i])
            rows.append(i)
            updates.append(
                (k, self._compute(batch, i, value), None if times is None else times[i], position)
            )
        while True:
            try:
                changes = self.store.apply_updates(updates)
                break
            except _RowError as row_error:
                # a reducer raised: nothing of this batch was applied; dead-letter
                # that row and apply the others (reducers are expected to be pure)
                at = rows.index(row_error.row)
                del rows[at], updates[at]
                failed.add(row_error.row)
                ctx.dead_letter(batch.event(row_error.row, take=True), self.name, row_error.error)
        metrics.events_out += len(changes)
        if failed:
            for i in range(len(batch.values)):
                if i not in failed:
                    batch.end_row(i)
        else:
            batch.end_all()

    def _replace_one(self, batch: Batch, metrics: Any) -> bool:
        """:meth:`_replace_newest` of a batch of one row (a source of one message at a
        time), through :meth:`~rxagent.state.StateStore.write_value`."""
        value = batch.values[0]
        try:
            if self.key_fn is not None:
                key = self.key_fn(value)
            else:
                keys = batch.keys
                if keys is None:
                    return False
                key = keys[0]
            if key is None:
                return False
            if self.value_fn is not None:
                value = self.value_fn(value)
        except Exception:
            return False
        times = batch.times
        positions = batch.positions
        metrics.events_out += self.store.write_value(
            key,
            value,
            None if times is None else times[0],
            batch.source,
            batch.partition,
            None if positions is None else positions[0],
        )
        batch.end_all()
        return True

    def _replace_newest(self, batch: Batch, metrics: Any) -> bool:
        """Without a reducer only each key's newest row of the batch matters: apply
        those alone (one update per key, not per event), through the store's lean
        :meth:`~rxagent.state.StateStore.write_values`. False: take the general path
        (no keys, a None key, or a key or value function that raised)."""
        values = batch.values
        try:
            keys = list(map(self.key_fn, values)) if self.key_fn is not None else batch.keys
            if keys is None or None in keys:
                return False
            value_fn = self.value_fn
            times = batch.times
            positions = batch.positions
            # without value(): the rows as they are (of a key given twice the store keeps
            # the last row); with it, value() only of each key's newest row (later rows win)
            newest = None if value_fn is None else dict(zip(keys, range(len(values)), strict=True))
            if newest is None or len(newest) == len(values):  # every row its own key
                rows = values if value_fn is None else list(map(value_fn, values))
                chosen = keys
            else:
                index = list(newest.values())
                chosen = list(newest)
                rows = [values[i] for i in index]
                if value_fn is not None:
                    rows = list(map(value_fn, rows))
                if times is not None:
                    times = [times[i] for i in index]
                if positions is not None:
                    positions = [positions[i] for i in index]
        except Exception:
            return False
        changed = self.store.write_values(
            chosen, rows, times, batch.source, batch.partition, positions
        )
        metrics.events_out += changed
        batch.end_all()
        return True

    def _compute(self, batch: Batch, i: int, value: Any) -> Callable[[Any], Any]:
        reducer = self.reducer
        value_fn = self.value_fn

        def compute(old: Any) -> Any:
            try:
                if reducer is not None:
                    return reducer(old, batch.event(i))
                return value if value_fn is None else value_fn(value)
            except Exception as error:
                raise _RowError(i, error) from error

        return compute

    async def recover(self) -> None:
        ctx = self.ctx
        if self.store.durable and ctx is not None:
            changelog = ctx.changelog_for(self.store.name)
            if changelog is not None:
                self.store.attach_changelog(changelog)
        await self.store.open()

    async def partitions_assigned(self, partitions: list[Hashable]) -> None:
        await self.store.assign_partitions(partitions)

    async def partitions_revoked(self, partitions: list[Hashable]) -> None:
        await self.store.revoke_partitions(partitions)

    async def checkpoint(self, meta: Mapping[str, Any] | None = None) -> None:
        stored = self.store.stored_meta()
        if (
            meta is not None
            and stored is not None
            and all(stored.get(name) == value for name, value in meta.items())
        ):
            meta = None  # stored already: no write when nothing else changed either
        await self.store.checkpoint(meta)

    def stored_meta(self) -> Mapping[str, Any] | None:
        return self.store.stored_meta()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind, "name": self.name, "store": self.store.name}
        durability = self.store.durability()
        if durability:
            info["durable"] = durability
        return info


class _RowError(Exception):
    def __init__(self, row: int, error: Exception) -> None:
        super().__init__(str(error))
        self.row = row
        self.error = error


# StateStore.sink() builds a StateSink without the store importing this module
register_sink(StateSink)
