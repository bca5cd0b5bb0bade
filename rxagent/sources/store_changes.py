"""A source of a state store's changes, so one pipeline reacts to what another folds.

The store's changes are *conflated per key*: while the pipeline has no credit,
a key that changes again replaces its pending change (the newest wins, its
place in line stays where it first changed). A slow consumer therefore sees
every key's latest value and memory stays bounded by the number of keys; the
replaced changes are counted in :attr:`StateChangesSource.conflated`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from .base import Emitter, Source

if TYPE_CHECKING:
    from ..state import StateChange, StateStore

__all__ = ["StateChangesSource", "state_changes"]

_DELETED = object()


class StateChangesSource(Source):
    """One event per changed key of ``store``: value = the new value, key = the
    store's key. Deletions are left out unless ``deletes=True`` (value ``None``).
    With ``initial=True`` (default) the store's current entries come first, so a
    pipeline started after the store was written misses nothing. Runs until the
    pipeline stops.

    Example::

        prices = StateStore("prices")
        moves = Pipeline("alerts", StateChangesSource(prices)).pipe(
            ops.filter(lambda v: abs(v["move_pct"]) > 0.5)).to(alert_sink)

    Args:
        store: the :class:`~rxagent.StateStore` whose changes are read.
        deletes: also emit deletions, with value ``None`` (default False).
        initial: first emit the store's current entries, so a pipeline started
            after the store was written misses nothing (default True).
        name: the source's name in positions, status and dead letters (default:
            ``state``).
        credit: most events in flight from this source at once (read but not yet
            ended by every sink); the source waits for credit beyond it.
        batch_size: most events in one emission (a batch).
    """

    kind = "state"

    def __init__(
        self,
        store: StateStore,
        *,
        deletes: bool = False,
        initial: bool = True,
        name: str | None = None,
        credit: int = 4096,
        batch_size: int = 512,
    ) -> None:
        from ..state import StateStore

        if not isinstance(store, StateStore):
            raise ConfigurationError(f"state source needs a StateStore, got {store!r}")
        super().__init__(name or f"state:{store.name}", credit=credit, batch_size=batch_size)
        self.store = store
        self.deletes = deletes
        self.initial = initial
        self.conflated = 0
        self._pending: dict[Hashable, Any] = {}
        self._readable: asyncio.Event | None = None
        self._emptied: asyncio.Event | None = None  # set while nothing is pending

    def _on_changes(self, changes: list[StateChange]) -> None:
        pending = self._pending
        for change in changes:
            if change.deleted and not self.deletes:
                continue
            if change.key in pending:
                self.conflated += 1
            pending[change.key] = _DELETED if change.deleted else change.new
        if pending and self._readable is not None:
            self._readable.set()
            if self._emptied is not None:
                self._emptied.clear()

    async def run(self, out: Emitter) -> None:
        self._readable = readable = asyncio.Event()
        self._emptied = emptied = asyncio.Event()
        pending = self._pending
        if self.initial:  # the snapshot, then every change after it (same loop turn)
            for key, value in self.store.snapshot.items():
                pending[key] = value
        subscription = self.store.updates.subscribe(self._on_changes)
        position = 0
        try:
            while True:
                while not pending:
                    emptied.set()
                    readable.clear()
                    await readable.wait()
                emptied.clear()
                granted = await out.credit(min(self.batch_size, len(pending)))
                take = min(granted, len(pending))
                keys = list(pending)[:take]
                values = [pending.pop(k) for k in keys]
                values = [None if v is _DELETED else v for v in values]
                out.give_back(granted - take)
                out.emit(values, keys=keys, positions=range(position, position + take))
                position += take
                await asyncio.sleep(0)
        finally:
            subscription.dispose()
            self._readable = None
            self._emptied = None
            emptied.set()

    async def settle(self) -> None:
        """Wait until every change received so far was emitted (a stop drains the
        pipelines writing the store first: what they flushed reaches this one)."""
        emptied = self._emptied
        if emptied is not None and self._pending:
            emptied.clear()  # set again once run() emitted them (or ended)
            await emptied.wait()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "store": self.store.name,
            "pending": len(self._pending),
            "conflated": self.conflated,
        }


def state_changes(store: StateStore, **options: Any) -> StateChangesSource:
    """A source of ``store``'s changes (see :class:`StateChangesSource`)."""
    return StateChangesSource(store, **options)
