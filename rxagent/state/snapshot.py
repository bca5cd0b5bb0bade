"""What a store holds and hands out: entries, snapshots, changes.

The value types of :mod:`rxagent.state.store` (re-exported there and by
:mod:`rxagent.state`), apart from the store so that :mod:`.render`, which
renders them as text, and the store, which uses that text, import them without
importing each other. ``iso_time`` and ``key_text`` are the two text forms the
types themselves need (re-exported by :mod:`.render`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import immutables

from ..events import Position
from ..exceptions import StateError
from .durable import hashable

__all__ = [
    "ChangeSet",
    "Entry",
    "Snapshot",
    "StateChange",
    "entry_from_record",
    "entry_record",
    "iso_time",
    "key_text",
]


def iso_time(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC time to the millisecond."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def key_text(key: Hashable) -> str:
    """A key as text: strings as they are, anything else as JSON."""
    return key if isinstance(key, str) else json.dumps(key, default=str)


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's value with its bookkeeping."""

    key: Hashable
    value: Any
    version: int
    updates: int
    event_time: float | None
    wall_time: float
    position: Position | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    """One key changed (``deleted`` when removed)."""

    key: Hashable
    old: Any
    new: Any
    version: int
    event_time: float | None
    wall_time: float
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """What changed after version ``since``, up to ``version``."""

    store: str
    since: int
    version: int
    changed: dict[Hashable, Entry] = field(default_factory=dict)
    deleted: list[Hashable] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.deleted)

    def to_json(self) -> dict[str, Any]:
        """The change set as JSON-ready data: store, versions, changed values by key text, deleted
        keys."""
        return {
            "store": self.store,
            "since": self.since,
            "version": self.version,
            "changed": {key_text(k): e.value for k, e in self.changed.items()},
            "deleted": [key_text(k) for k in self.deleted],
        }


class Snapshot(Mapping[Hashable, Any]):
    """An immutable version of a store: a read-only mapping of key to value."""

    __slots__ = ("_clock", "_entries", "_tombstones", "store", "version", "wall_time")

    def __init__(
        self,
        store: str,
        version: int,
        entries: immutables.Map[Hashable, Entry],
        tombstones: immutables.Map[Hashable, int],
        wall_time: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        #: The store's clock (:meth:`StateStore.now`): what ``staleness`` counts to.
        self._clock = clock
        self.version = version
        self._entries = entries
        self._tombstones = tombstones
        self.wall_time = wall_time

    def __getitem__(self, key: Hashable) -> Any:
        try:
            return self._entries[key].value
        except KeyError:
            raise StateError(f"state {self.store!r} has no key {key!r}") from None

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def entry(self, key: Hashable) -> Entry | None:
        """The entry of ``key`` (value, version, times, position), or None."""
        return self._entries.get(key)

    def entries(self) -> list[Entry]:
        """Every entry, in key insertion order."""
        return list(self._entries.values())

    def iter_entries(self) -> Iterator[Entry]:
        """The entries one by one, in no set order (a reader that stops early pays
        for what it read, not for the whole store)."""
        return iter(self._entries.values())

    def to_dict(self) -> dict[Hashable, Any]:
        """The values by key, as a plain dict."""
        return {k: e.value for k, e in self._entries.items()}

    def staleness(self, key: Hashable | None = None, *, now: float | None = None) -> float | None:
        """Seconds since ``key`` (or, without a key, the store) last changed, as of
        ``now`` (default: the store's clock, which is the pipeline's that writes
        it: virtual in virtual-time tests; wall time for a snapshot without one)."""
        if now is None:
            now = time.time() if self._clock is None else self._clock()
        if key is None:
            return now - self.wall_time if self.version else None
        entry = self._entries.get(key)
        return None if entry is None else now - entry.wall_time

    def as_of(self, key: Hashable | None = None) -> dict[str, Any]:
        """Event time and wall time of the last change, as ISO strings."""
        if key is None:
            return {"version": self.version, "wall_time": iso_time(self.wall_time)}
        entry = self._entries.get(key)
        if entry is None:
            raise StateError(f"state {self.store!r} has no key {key!r}")
        return {
            "version": entry.version,
            "event_time": None if entry.event_time is None else iso_time(entry.event_time),
            "wall_time": iso_time(entry.wall_time),
        }

    def __repr__(self) -> str:
        return f"Snapshot({self.store!r}, version={self.version}, keys={len(self)})"


# -- the durable form of an entry (local files, changelogs, the Kafka state view) ----


def entry_record(entry: Entry) -> tuple[Any, ...]:
    """An entry as the tuple durable files and changelogs keep (:func:`entry_from_record`)."""
    pos = entry.position
    return (
        entry.value,
        entry.version,
        entry.updates,
        entry.event_time,
        entry.wall_time,
        None if pos is None else pos.source,
        None if pos is None else pos.partition,
        None if pos is None else pos.offset,
    )


def entry_from_record(key: Hashable, record: tuple[Any, ...]) -> Entry:
    """The entry of ``key`` a durable record (:func:`entry_record`) holds."""
    value, version, updates, event_time, wall, source, partition, offset = record
    position = None if source is None else Position(source, hashable(partition), offset)
    return Entry(key, value, version, updates, event_time, wall, position)
