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
from typing import Any, Final

import immutables

from ..events import Position
from ..exceptions import StateError
from .durable import hashable

__all__ = [
    "LOG_KEYS",
    "ChangeLog",
    "ChangeSet",
    "Entries",
    "Entry",
    "Record",
    "Snapshot",
    "StateChange",
    "entry_from_record",
    "entry_of",
    "entry_record",
    "record_from_durable",
    "record_of",
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


#: How a store keeps an entry: a plain tuple ``(key, value, version, updates,
#: event_time, wall_time, source, partition, offset)`` (the position flattened;
#: ``source`` None for none). An exact tuple of atomic values (strings, numbers,
#: None, tuples of them) is untracked by CPython's garbage collector at its first
#: young collection, so a million stored keys add nothing to the full collections
#: that a million :class:`Entry` and :class:`Position` objects made slow
#: (docs/architecture.md, "Many keys"). ``record[1:]`` is the durable form
#: (:func:`entry_record`).
Record = tuple[Any, ...]


# A frozen dataclass's __init__ sets each field through object.__setattr__ (~850 ns for
# an Entry in 3.11); its slots' own setters do the same in under half the time.
_new = object.__new__
_SET_ENTRY = tuple(
    getattr(Entry, f).__set__
    for f in ("key", "value", "version", "updates", "event_time", "wall_time", "position")
)
_SET_POSITION = tuple(getattr(Position, f).__set__ for f in ("source", "partition", "offset"))


def entry_of(record: Record) -> Entry:
    """The :class:`Entry` a store's :data:`Record` stands for (built when read)."""
    k, v, ver, upd, et, wall, pos = _SET_ENTRY
    entry = _new(Entry)
    k(entry, record[0])
    v(entry, record[1])
    ver(entry, record[2])
    upd(entry, record[3])
    et(entry, record[4])
    wall(entry, record[5])
    source = record[6]
    if source is None:
        pos(entry, None)
    else:
        set_source, set_partition, set_offset = _SET_POSITION
        position = _new(Position)
        set_source(position, source)
        set_partition(position, record[7])
        set_offset(position, record[8])
        pos(entry, position)
    return entry


def record_of(entry: Entry) -> Record:
    """An entry as the :data:`Record` a store keeps."""
    pos = entry.position
    if pos is None:
        return (entry.key, entry.value, entry.version, entry.updates, entry.event_time,
                entry.wall_time, None, None, None)  # fmt: skip
    return (entry.key, entry.value, entry.version, entry.updates, entry.event_time,
            entry.wall_time, pos.source, pos.partition, pos.offset)  # fmt: skip


class Entries(Mapping[Hashable, Entry]):
    """A store's entries as a read-only mapping of key to :class:`Entry`, over the
    :class:`~rxagent.state.levels.Levels` of :data:`Record` tuples the store keeps
    (``records``): each entry is built when read, so reading costs what it reads."""

    __slots__ = ("records",)

    def __init__(self, records: Mapping[Hashable, Record]) -> None:
        self.records = records

    def get(self, key: Hashable, default: Any = None) -> Any:
        record = self.records.get(key)
        return default if record is None else entry_of(record)

    def __getitem__(self, key: Hashable) -> Entry:
        record = self.records.get(key)
        if record is None:
            raise KeyError(key)
        return entry_of(record)

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def values(self) -> Any:
        return [entry_of(r) for r in self.records.values()]

    def items(self) -> Any:
        return [(r[0], entry_of(r)) for r in self.records.values()]


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


#: Distinct keys a store's change log keeps (the most recently changed ones): a
#: reader asking for changes since a version before them gets a full scan.
LOG_KEYS: Final = 1 << 17


class _Lineage:
    """What the snapshots of one change log share: the version below which the log
    does not reach (``floor``), and the records changed at or below it, most
    recent first, once a prompt needed them: ``(version, records)``, computed from
    the snapshot of that version (later snapshots hold a subset of them: what was
    written since has a newer version; readers check each record is still theirs)."""

    __slots__ = ("below", "floor")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.below: tuple[int, list[Record]] | None = None


class ChangeLog:
    """Which keys each recent version changed, oldest first: ``batches[:end]`` of a
    list the store only appends to (so readers on other threads read it safely),
    complete for every version above ``lineage.floor``: a key changed after it is
    in the batch of its last change. What makes :meth:`Snapshot.iter_recent` and
    ``changes_since`` cost what they return, not the size of the store."""

    __slots__ = ("batches", "end", "lineage")

    def __init__(
        self, batches: list[tuple[int, tuple[Hashable, ...]]], end: int, lineage: _Lineage
    ) -> None:
        self.batches = batches
        self.end = end
        self.lineage = lineage

    @classmethod
    def empty(cls, floor: int) -> ChangeLog:
        """A log holding nothing: every entry is at or below ``floor``."""
        return cls([], 0, _Lineage(floor))

    @property
    def floor(self) -> int:
        """The newest version the log does not cover."""
        return self.lineage.floor

    def keys_since(self, version: int) -> dict[Hashable, None]:
        """The keys changed after ``version`` (which must be >= ``floor``), newest first."""
        keys: dict[Hashable, None] = {}
        batches = self.batches
        for i in range(self.end - 1, -1, -1):
            at, changed = batches[i]
            if at <= version:
                break
            keys.update(dict.fromkeys(changed))
        return keys


def _recent_order(entries: Iterator[Entry] | list[Entry]) -> list[Entry]:
    out = sorted(entries, key=lambda e: key_text(e.key))
    out.sort(key=lambda e: e.version, reverse=True)
    return out


class Snapshot(Mapping[Hashable, Any]):
    """An immutable version of a store: a read-only mapping of key to value."""

    __slots__ = (
        "_clock",
        "_entries",
        "_log",
        "_records",
        "_tombstones",
        "store",
        "version",
        "wall_time",
    )

    def __init__(
        self,
        store: str,
        version: int,
        entries: Mapping[Hashable, Entry],
        tombstones: immutables.Map[Hashable, int],
        wall_time: float,
        clock: Callable[[], float] | None = None,
        log: ChangeLog | None = None,
    ) -> None:
        self.store = store
        #: The store's clock (:meth:`StateStore.now`): what ``staleness`` counts to.
        self._clock = clock
        self.version = version
        #: key -> Entry: :class:`Entries` over a store's records (or any read-only mapping)
        self._entries = entries
        #: key -> :data:`Record` when ``entries`` is :class:`Entries` (a store's), else None
        self._records: Mapping[Hashable, Record] | None = (
            entries.records if isinstance(entries, Entries) else None
        )
        self._tombstones = tombstones
        self.wall_time = wall_time
        #: which keys recent versions changed (None: not known, readers scan everything)
        self._log = log if self._records is not None else None

    def __getitem__(self, key: Hashable) -> Any:
        records = self._records
        if records is not None:
            record = records.get(key)
            if record is not None:
                return record[1]
        else:
            entry = self._entries.get(key)
            if entry is not None:
                return entry.value
        raise StateError(f"state {self.store!r} has no key {key!r}")

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def entry(self, key: Hashable) -> Entry | None:
        """The entry of ``key`` (value, version, times, position), or None."""
        return self._entries.get(key)

    def value(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` (no :class:`Entry` built)."""
        records = self._records
        if records is not None:
            record = records.get(key)
            return default if record is None else record[1]
        entry = self._entries.get(key)
        return default if entry is None else entry.value

    def entries(self) -> list[Entry]:
        """Every entry, in key insertion order."""
        return list(self._entries.values())

    def iter_entries(self) -> Iterator[Entry]:
        """The entries one by one, in no set order (a reader that stops early pays
        for what it read, not for the whole store)."""
        records = self._records
        if records is not None:
            return map(entry_of, records.values())
        return iter(self._entries.values())

    def iter_recent(self) -> Iterator[Entry]:
        """The entries, most recently changed first (those changed in one version in
        key order, so prompts repeat), one by one: with a change log, a reader that
        stops early pays for what it read (the newest keys), not for the store."""
        log = self._log
        records = self._records
        if log is None or records is None:
            yield from _recent_order(iter(self._entries.values()))
            return
        lineage = log.lineage
        floor = lineage.floor
        batches = log.batches
        for i in range(log.end - 1, -1, -1):
            version, keys = batches[i]
            if version <= floor:
                break
            got = [r for k in keys if (r := records.get(k)) is not None and r[2] == version]
            if len(got) > 1:
                got.sort(key=lambda r: key_text(r[0]))
            for record in got:
                yield entry_of(record)
        # records no batch of the log names: changed at or below the floor
        cached = lineage.below  # (version computed at, records): one reference, thread-safe
        if cached is not None and cached[0] <= self.version:
            below = cached[1]
        else:
            below = sorted(
                (r for r in records.values() if r[2] <= floor), key=lambda r: key_text(r[0])
            )
            below.sort(key=lambda r: r[2], reverse=True)
            if cached is None:
                lineage.below = (self.version, below)
        for record in below:
            if records.get(record[0]) is record:
                yield entry_of(record)

    def to_dict(self) -> dict[Hashable, Any]:
        """The values by key, as a plain dict."""
        records = self._records
        if records is not None:
            return {k: r[1] for k, r in records.items()}
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
    return entry_of(record_from_durable(key, record))


def record_from_durable(key: Hashable, record: tuple[Any, ...]) -> Record:
    """The :data:`Record` of ``key`` a durable record (:func:`entry_record`) holds."""
    value, version, updates, event_time, wall, source, partition, offset = record
    return (key, value, version, updates, event_time, wall, source, hashable(partition), offset)
