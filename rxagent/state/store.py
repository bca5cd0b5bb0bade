"""The state store: keyed state folded from events, readable by the LLM and by code.

Writes happen on the event loop, one batch at a time; each applied batch is a
new version (one more than the last), an immutable :class:`Snapshot` (its entries
in :class:`~.levels.Levels`, a persistent map of a few plain dicts, so a new
version shares almost everything with the old one) swapped in with one reference
assignment. A reader, on the loop or on another thread, takes ``store.snapshot``
and never sees half an update.

Versions are published when read: a write that nobody watches (no subscriber of
``changes``) only puts its records in a small dict of writes held back, and the
first reader after it (``snapshot``, ``context()``, ``changes_since()``, a new
``changes`` subscriber, a checkpoint) publishes them all as the newest version,
under the writers' lock; ``get(key)`` reads through them. So a one-row batch (a
source of one message at a time) costs about a dict write, not a snapshot
(docs/architecture.md, "Speed with defaults"). Every version a reader can see is
one the writes made, whole; ``updates`` subscribers get each batch's changes.

Updates are idempotent: each entry remembers the source position of the last
event applied to it, and an event from the same source and partition whose
position is not newer is ignored. Replaying a recording, or a Kafka partition
after a crash, therefore leaves the same state.

This is the query side of CQRS: :meth:`StateStore.context` renders a compact
text for a prompt, :meth:`StateStore.changes_since` tells a reader what changed
since it last looked, and ``changes`` / ``updates`` stream every new version.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from itertools import filterfalse, repeat
from operator import is_
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import immutables
from reactivex import Observable
from reactivex.abc import DisposableBase, ObserverBase, SchedulerBase
from reactivex.subject import BehaviorSubject, Subject
from reactivex.subject.innersubscription import InnerSubscription

from ..events import Event, Position
from ..exceptions import ConfigurationError, StateError
from .durable import (
    Codec,
    CodecName,
    SQLiteBackend,
    codec_for,
    gc_paused,
    store_path,
)
from .levels import GONE, Levels
from .render import (
    context_header,
    context_line,
    fit,
    omitted_line,
)
from .snapshot import (
    LOG_KEYS,
    ChangeLog,
    ChangeSet,
    Entries,
    Entry,
    Record,
    Snapshot,
    StateChange,
    entry_of,
    record_from_durable,
    record_of,
)

__all__ = [
    "DELETE",
    "ChangeSet",
    "Entry",
    "Snapshot",
    "StateChange",
    "StateStore",
    "Update",
    "constant_update",
]


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: Return this from a reducer to delete the key.
DELETE: Final = _Delete()

log = logging.getLogger("rxagent")
_T = TypeVar("_T")

Reducer = Callable[[Any, Event], Any]
#: One update of a batch: (key, function of the old value, event time, position).
Update = tuple[Hashable, Callable[[Any], Any], float | None, Position | None]


class StateStore:
    """Named keyed state. Write with :meth:`sink` in a pipeline (or :meth:`set`
    from code); read with :attr:`snapshot`, :meth:`get`, :meth:`context`,
    :meth:`changes_since`, or by subscribing to :attr:`changes`."""

    def __init__(
        self,
        name: str,
        *,
        clock: Callable[[], float] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        codec: CodecName | Codec = "pickle",
    ) -> None:
        if not name:
            raise ConfigurationError("a state store needs a name")
        self.name = name
        #: Its own clock; None: the clock of the pipeline writing it (:meth:`follow`).
        self._own_clock = clock
        self._pipeline_clock: Callable[[], float] | None = None
        self._clock: Callable[[], float] = self.now  # what subclasses read time with
        # writers, and readers publishing what writers held back (re-entrant: a
        # reducer, run by a writer, may read the store)
        self._lock = threading.RLock()
        # which keys each recent version changed (appended to; replaced when compacted)
        self._log: list[tuple[int, tuple[Hashable, ...]]] = []
        self._log_keys = 0  # keys in self._log, counted with repeats
        self._log_room = 2 * _LOG_MIN  # keys the log may hold before compaction is looked at
        log = ChangeLog.empty(0)
        self._lineage = log.lineage
        records: Levels[Record] = Levels()
        #: the newest published version (immutable; what readers take)
        self._snapshot = Snapshot(name, 0, Entries(records), immutables.Map(), 0.0, self.now, log)
        # the newest version, published or not: the published one with ``_pending``
        # (key -> Record, or GONE) over it; written under the lock, in this order:
        # _version first, then _pending (readers check _pending, then read _version)
        self._pending: dict[Hashable, Any] = {}
        self._version = 0
        self._wall = 0.0
        self._length = 0
        self._tombstones: immutables.Map[Hashable, int] = immutables.Map()
        self._levels = records.dicts()  # the published version's levels (its records)
        self._told = 0  # the newest version handed to ``changes`` (or to be)
        self._changes: BehaviorSubject[Snapshot] = _Changes(self)
        self._updates: Subject[list[StateChange]] = Subject()
        self.ignored = 0  # idempotent replays skipped
        self._durable: _Durable | None = (
            None if state_dir is None else _Durable(self, Path(state_dir), codec_for(codec))
        )
        # keys changed since the last checkpoint (durable stores only)
        self._dirty: set[Hashable] | None = None if state_dir is None else set()

    # -- the clock -------------------------------------------------------------

    def now(self) -> float:
        """The store's time, stamped on each change (``wall_time``) and counted to by
        ``staleness`` and :meth:`context`: its own ``clock`` if given, else the clock
        of the pipeline writing it (virtual under a ``TestScheduler``; see
        docs/architecture.md Decision 8), else wall time (a store no pipeline wrote)."""
        clock = self._own_clock or self._pipeline_clock
        return time.time() if clock is None else clock()

    def follow(self, clock: Callable[[], float]) -> None:
        """Read time from ``clock``, a pipeline's (``ctx.now``), unless the store has a
        clock of its own. The state sink calls this with each batch it writes."""
        self._pipeline_clock = clock

    # -- reading ---------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The current immutable version (published now if writes since the last
        one were held back: nobody was reading)."""
        if self._pending:
            with self._lock:
                return self._published()
        return self._snapshot

    @property
    def version(self) -> int:
        """The current version: it grows by one per applied batch of updates."""
        if self._pending:
            return self._version
        return self._snapshot.version

    def _record(self, key: Hashable) -> Any:
        """The record of ``key`` now, or None (the writes held back first: no version
        is published for one key read)."""
        record = self._pending.get(key)  # the dict of now; a newer one holds newer writes
        if record is None:
            records = self._snapshot._records
            assert records is not None  # a store's own snapshot keeps records
            record = records.get(key)
        elif record is GONE:
            return None
        return record

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key`` now, or ``default``."""
        if self._pending:
            record = self._record(key)
            return default if record is None else record[1]
        return self._snapshot.value(key, default)

    def __getitem__(self, key: Hashable) -> Any:
        return self.snapshot[key]

    def __len__(self) -> int:
        return len(self.snapshot)

    def __contains__(self, key: object) -> bool:
        return key in self.snapshot

    @property
    def changes(self) -> Observable[Snapshot]:
        """Every new snapshot; a new subscriber gets the current one first. While
        anything subscribes, each applied batch publishes its version and tells it
        here; a new subscriber's first snapshot is the newest version (published
        for it if the store had held it back)."""
        return self._changes

    @property
    def updates(self) -> Observable[list[StateChange]]:
        """The changes of each applied batch."""
        return self._updates

    def changes_since(self, version: int) -> ChangeSet:
        """What changed after ``version`` (0: everything). Pass the returned
        ``version`` next time to get only what is new.

        Costs what it returns while ``version`` is within the store's change log
        (the last :data:`~rxagent.state.snapshot.LOG_KEYS` keys changed); older
        than that, every entry is scanned."""
        snap = self.snapshot
        records = snap._records
        tombstones = snap._tombstones
        log = snap._log
        if log is None or records is None or version < log.floor:
            if records is None:
                changed = {k: e for k, e in snap._entries.items() if e.version > version}
            else:
                changed = {k: entry_of(r) for k, r in records.items() if r[2] > version}
            deleted = [k for k, v in tombstones.items() if v > version]
            return ChangeSet(self.name, version, snap.version, changed, deleted)
        changed = {}
        deleted = []
        for key in log.keys_since(version):
            record = records.get(key)
            if record is not None:
                if record[2] > version:
                    changed[key] = entry_of(record)
            elif tombstones.get(key, 0) > version:
                deleted.append(key)
        return ChangeSet(self.name, version, snap.version, changed, deleted)

    def context(
        self,
        max_chars: int = 2000,
        *,
        keys: Iterable[Hashable] | None = None,
        now: float | None = None,
    ) -> str:
        """A compact text of the state for an LLM prompt, at most ``max_chars`` long.

        Most recently updated keys come first; what does not fit is named in a
        last line (``... 12 more keys omitted``), which always fits too. Renders
        only what it shows (newest first, from the store's change log), whatever
        the size of the store.
        """
        snap = self.snapshot
        now = self.now() if now is None else now
        if keys is None:
            entries: Iterable[Entry] = snap.iter_recent()
            total = len(snap)
        else:
            chosen = [e for e in (snap.entry(k) for k in keys) if e is not None]
            entries, total = chosen, len(chosen)
        lines = [context_header(self.name, snap, now)]
        used = len(lines[0])
        omitted = 0
        # keep room for the omission line should anything after an entry be left out
        reserve = len(omitted_line(total)) + 1
        for i, entry in enumerate(entries):
            line = context_line(entry, now)
            if used + 1 + len(line) + (reserve if i < total - 1 else 0) > max_chars:
                omitted = total - i  # this one and everything after it
                break
            lines.append(line)
            used += 1 + len(line)
        if omitted:
            lines.append(omitted_line(omitted))
        return fit("\n".join(lines), max_chars)

    # -- writing -----------------------------------------------------------------

    def set(
        self,
        key: Hashable,
        value: Any,
        *,
        event_time: float | None = None,
        position: Position | None = None,
    ) -> bool:
        """Set one key from code; returns False if ignored as a replay."""
        return bool(self.apply([(key, value, event_time, position)]))

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was there."""
        return bool(self.apply([(key, DELETE, None, None)]))

    def apply(
        self, updates: Iterable[tuple[Hashable, Any, float | None, Position | None]]
    ) -> list[StateChange]:
        """Apply ``(key, new value or DELETE, event time, position)`` updates as one
        version. Returns the changes applied (replays are skipped)."""
        return self.apply_updates((k, constant_update(v), t, p) for k, v, t, p in updates)

    def apply_updates(
        self,
        updates: Iterable[tuple[Hashable, Callable[[Any], Any], float | None, Position | None]],
    ) -> list[StateChange]:
        """Apply ``updates`` (key, function of the old value, event time, position) as one
        new version and return the changes; an update whose position is not newer than
        the entry's is skipped (a replay), and a function returning ``DELETE`` removes
        the key. What sinks with a reducer write through.
        """
        with self._lock:
            version = self._version + 1
            wall = self.now()
            pending = self._pending
            records = self._snapshot._records
            assert isinstance(records, Levels)
            tombstones = self._tombstones
            length = self._length
            written: dict[Hashable, Any] = {}  # this batch: key -> new Record or GONE
            changes: list[StateChange] = []
            for key, compute, event_time, position in updates:
                old = written.get(key, _UNSEEN)
                if old is _UNSEEN:
                    old = pending.get(key)
                    if old is None:
                        old = records.get(key)
                if old is GONE:
                    old = None
                if position is None:
                    source = partition = offset = None
                else:
                    source, partition, offset = position.source, position.partition, position.offset
                    if (
                        old is not None
                        and offset is not None
                        and old[8] is not None
                        and offset <= old[8]
                        and source == old[6]
                        and partition == old[7]
                    ):
                        self.ignored += 1
                        continue
                new_value = compute(None if old is None else old[1])
                if new_value is DELETE:
                    if old is not None:
                        written[key] = GONE
                        length -= 1
                        tombstones = tombstones.set(key, version)
                        changes.append(
                            StateChange(key, old[1], None, version, event_time, wall, True)
                        )
                    continue
                if old is None:
                    length += 1
                    if key in tombstones:
                        tombstones = tombstones.delete(key)
                    changes.append(StateChange(key, None, new_value, version, event_time, wall))
                    written[key] = (
                        key, new_value, version, 1, event_time, wall, source, partition, offset
                    )  # fmt: skip
                    continue
                written[key] = (
                    key, new_value, version, old[3] + 1, event_time, wall, source, partition,
                    offset,
                )  # fmt: skip
                changes.append(StateChange(key, old[1], new_value, version, event_time, wall))
            if not changes:
                return changes
            new = self._commit(version, wall, written, length, tombstones)
        if new is not None:
            self._changes.on_next(new)
        self._updates.on_next(changes)
        return changes

    def write_values(
        self,
        keys: Sequence[Hashable],
        values: Sequence[Any],
        times: Sequence[float | None] | None,
        source: str,
        partition: Hashable,
        offsets: Sequence[int | None] | None,
    ) -> int:
        """Set ``keys[i]`` to ``values[i]`` (event time ``times[i]``, position
        ``(source, partition, offsets[i])``; a value of ``DELETE`` removes the key; of
        a key given twice the last row counts) as one version, skipping replays;
        returns how many keys changed.
        What the state sink without a reducer writes through: the lean form of
        :meth:`apply_updates` (no update functions, no :class:`Position` objects,
        :class:`StateChange` objects only when something subscribed to :attr:`updates`)."""
        n = len(keys)
        if n == 1:
            return self.write_value(
                keys[0],
                values[0],
                None if times is None else times[0],
                source,
                partition,
                None if offsets is None else offsets[0],
            )
        if len(values) != n or (times is not None and len(times) != n):
            raise ValueError("write_values: keys, values and times differ in length")
        if offsets is not None and len(offsets) != n:
            raise ValueError("write_values: keys and offsets differ in length")
        if n <= _FEW:
            return self._write_few(keys, values, times, source, partition, offsets)
        with self._lock:
            version = self._version + 1
            wall = self.now()
            # the writes held back first (GONE there: deleted), then the published levels
            levels = (self._pending, *self._levels)
            # a position's source only with an offset: one source for all rows, or per row
            sources: Iterable[str | None]
            row_offsets: Iterable[int | None]
            if offsets is None:
                sources = repeat(None)
                row_offsets = repeat(None)
            else:
                row_offsets = offsets
                if None in offsets:
                    sources = [None if o is None else source for o in offsets]
                else:
                    sources = repeat(source)
            # every row as a new key's record, in C (a repeated key: its last row); then
            # the rows of keys there already
            written: dict[Hashable, Any] = dict(
                zip(
                    keys,
                    zip(keys, values, repeat(version), repeat(1),
                        repeat(None) if times is None else times, repeat(wall), sources,
                        repeat(partition), row_offsets),
                    strict=True,
                )
            )  # fmt: skip
            olds: dict[Hashable, Any] = {}
            # each key's old record, looked up a level at a time in C (newest first)
            wanted: Any = written.keys()
            for level in levels:
                if level:
                    hit = level.keys() & wanted
                    if hit:
                        olds.update(zip(hit, map(level.__getitem__, hit), strict=True))
                        if len(hit) == len(wanted):
                            break
                        wanted = wanted - hit
            get_old = olds.get
            ignored = 0
            deleted: dict[Hashable, float | None] = {}  # a value of DELETE: key -> event time
            added = len(written)
            for key, old in olds.items():
                if old is GONE:
                    continue  # deleted: written as a new key
                added -= 1
                row = written[key]
                offset = row[8]
                if (
                    offset is not None
                    and old[8] is not None
                    and offset <= old[8]
                    and source == old[6]
                    and partition == old[7]
                ):
                    ignored += 1
                    del written[key]
                    continue
                if row[1] is DELETE:
                    written[key] = GONE
                    deleted[key] = row[4]
                    continue
                written[key] = (
                    key, row[1], version, old[3] + 1, row[4], wall, row[6], partition, offset,
                )  # fmt: skip
            if True in map(is_, values, repeat(DELETE)):
                # a DELETE of a key not there: nothing to write
                for key in [k for k, r in written.items() if r is not GONE and r[1] is DELETE]:
                    del written[key]
                    added -= 1
            self.ignored += ignored
            if not written:
                return 0
            listening = bool(self._updates.observers)
            new = self._commit_rows(version, wall, written, added, deleted)
        if new is not None:
            self._changes.on_next(new)
        if listening:
            self._tell_rows(version, wall, written, get_old, deleted)
        return len(written)

    def _write_few(
        self,
        keys: Sequence[Hashable],
        values: Sequence[Any],
        times: Sequence[float | None] | None,
        source: str,
        partition: Hashable,
        offsets: Sequence[int | None] | None,
    ) -> int:
        """:meth:`write_values` of a few rows (up to :data:`_FEW`): :meth:`write_value`'s
        steps row by row, one version for all. The columnar form's passes in C (a record
        per row zipped from nine columns, set operations over the levels' keys, a look for
        ``DELETE``) cost ~4 µs whatever the row count: at a WebSocket's moderate rates a
        batch is a row or two, and that was twice a one-row write."""
        with self._lock:
            version = self._version + 1
            wall = self.now()
            pending = self._pending
            levels = self._levels
            written: dict[Hashable, Any] = {}
            olds: dict[Hashable, Any] = {}
            deleted: dict[Hashable, float | None] = {}  # a value of DELETE: key -> event time
            added = 0
            ignored = 0
            # of a key given twice the last row counts, checked against the stored record
            for key, i in dict(zip(keys, range(len(keys)), strict=True)).items():
                value = values[i]
                event_time = None if times is None else times[i]
                offset = None if offsets is None else offsets[i]
                old = pending.get(key)
                if old is None:
                    for level in levels:
                        old = level.get(key)
                        if old is not None:
                            break
                if old is None or old is GONE:
                    if value is DELETE:
                        continue  # a DELETE of a key not there: nothing to write
                    added += 1
                    record: Any = (
                        key, value, version, 1, event_time, wall,
                        None if offset is None else source, partition, offset,
                    )  # fmt: skip
                elif (
                    offset is not None
                    and old[8] is not None
                    and offset <= old[8]
                    and source == old[6]
                    and partition == old[7]
                ):
                    ignored += 1
                    continue
                elif value is DELETE:
                    record = GONE
                    deleted[key] = event_time
                else:
                    record = (
                        key, value, version, old[3] + 1, event_time, wall,
                        None if offset is None else source, partition, offset,
                    )  # fmt: skip
                written[key] = record
                olds[key] = old
            self.ignored += ignored
            if not written:
                return 0
            listening = bool(self._updates.observers)
            new = self._commit_rows(version, wall, written, added, deleted)
        if new is not None:
            self._changes.on_next(new)
        if listening:
            self._tell_rows(version, wall, written, olds.get, deleted)
        return len(written)

    def _commit_rows(
        self,
        version: int,
        wall: float,
        written: dict[Hashable, Any],
        added: int,
        deleted: dict[Hashable, float | None],
    ) -> Snapshot | None:
        """:meth:`_commit` of a :meth:`write_values` batch (under the lock): ``added`` of
        its keys new (their tombstones dropped), ``deleted`` ones tombstoned."""
        tombstones = self._tombstones
        if (added and tombstones) or deleted:
            mutation = tombstones.mutate()
            if added:
                for key, record in written.items():
                    if record is not GONE:
                        mutation.pop(key, None)
            for key in deleted:
                mutation[key] = version
            tombstones = mutation.finish()
        length = self._length + added - len(deleted)
        return self._commit(version, wall, written, length, tombstones)

    def _tell_rows(
        self,
        version: int,
        wall: float,
        written: dict[Hashable, Any],
        get_old: Callable[[Hashable], Any],
        deleted: dict[Hashable, float | None],
    ) -> None:
        """Tell :attr:`updates` the changes of a :meth:`write_values` batch (after the lock;
        ``get_old``: each key's record before it, None for a new key)."""
        told: list[StateChange] = []
        for k, r in written.items():
            o = get_old(k)
            old_value = None if o is None or o is GONE else o[1]
            if r is GONE:
                told.append(StateChange(k, old_value, None, version, deleted[k], wall, True))
            else:
                told.append(StateChange(k, old_value, r[1], version, r[4], wall))
        self._updates.on_next(told)

    def write_value(
        self,
        key: Hashable,
        value: Any,
        event_time: float | None,
        source: str,
        partition: Hashable,
        offset: int | None,
    ) -> int:
        """:meth:`write_values` of one key (one message at a time): 1 if it changed,
        0 if skipped as a replay (or a ``DELETE`` of a key not there). As lean as a
        write of one key into a snapshot store can be: nothing is published unless
        :attr:`changes` has observers (or many keys were held back)."""
        lock = self._lock
        lock.acquire()  # acquire/release: ~100 ns less than a with block
        try:
            version = self._version + 1
            clock = self._own_clock or self._pipeline_clock  # self.now(), inlined
            wall = time.time() if clock is None else clock()
            pending = self._pending
            old = pending.get(key)
            if old is None:
                for level in self._levels:
                    old = level.get(key)
                    if old is not None:
                        break
            tombstones = self._tombstones
            if old is None or old is GONE:
                if value is DELETE:
                    return 0
                old = None
                record: Any = (
                    key, value, version, 1, event_time, wall,
                    None if offset is None else source, partition, offset,
                )  # fmt: skip
                self._length += 1
                if tombstones and key in tombstones:
                    self._tombstones = tombstones.delete(key)
            elif (
                offset is not None
                and old[8] is not None
                and offset <= old[8]
                and source == old[6]
                and partition == old[7]
            ):
                self.ignored += 1
                return 0
            elif value is DELETE:
                record = GONE
                self._length -= 1
                self._tombstones = tombstones.set(key, version)
            else:
                record = (
                    key, value, version, old[3] + 1, event_time, wall,
                    None if offset is None else source, partition, offset,
                )  # fmt: skip
            self._version = version
            self._wall = wall
            pending[key] = record
            self._log.append((version, (key,)))
            self._log_keys += 1
            if self._log_keys > self._log_room:
                self._compact_log()
            if self._dirty is not None:
                self._dirty.add(key)
            listening = self._updates.observers
            new = None
            if self._changes.observers:
                self._told = version
                new = self._published()
            elif len(pending) > _PENDING:
                self._published()
        finally:
            lock.release()
        if new is not None:
            self._changes.on_next(new)
        if listening:
            old_value = None if old is None else old[1]
            if record is GONE:
                change = StateChange(key, old_value, None, version, event_time, wall, True)
            else:
                change = StateChange(key, old_value, value, version, event_time, wall)
            self._updates.on_next([change])
        return 1

    # -- versions: published when read ------------------------------------------------------

    def _commit(
        self,
        version: int,
        wall: float,
        written: dict[Hashable, Any],
        length: int,
        tombstones: immutables.Map[Hashable, int],
    ) -> Snapshot | None:
        """Make ``written`` (records, or GONE) version ``version``, holding ``length``
        keys (under the lock). Held back in ``_pending`` unless :attr:`changes` has
        subscribers (then published and returned, to be told after the lock) or
        ``_pending`` grew past :data:`_PENDING` keys (then published)."""
        self._version = version
        self._wall = wall
        self._length = length
        self._tombstones = tombstones
        pending = self._pending
        pending.update(written)
        self._log.append((version, tuple(written)))
        self._log_keys += len(written)
        if self._log_keys > self._log_room:
            self._compact_log()
        if self._dirty is not None:
            self._dirty.update(written)
        if self._changes.observers:
            self._told = version
            return self._published()
        if len(pending) > _PENDING:
            self._published()
        return None

    def _published(self) -> Snapshot:
        """The newest version as a snapshot (under the lock): the writes held back,
        if any, over the last published version, swapped in."""
        pending = self._pending
        if not pending:
            return self._snapshot
        records = self._snapshot._records
        assert isinstance(records, Levels)
        records = records.updated(pending, self._length, own=True)
        self._levels = records.dicts()
        self._snapshot = new = Snapshot(
            self.name,
            self._version,
            Entries(records),
            self._tombstones,
            self._wall,
            self.now,
            ChangeLog(self._log, len(self._log), self._lineage),
        )
        self._pending = {}  # after the swap: a reader that saw it empty finds the new one
        return new

    def _install(self, new: Snapshot) -> None:
        """Make ``new`` (built over :meth:`_published`) the newest version (under the
        lock); the caller tells :attr:`changes`."""
        records = new._records
        assert isinstance(records, Levels)
        self._levels = records.dicts()
        self._version = new.version
        self._wall = new.wall_time
        self._length = len(records)
        self._tombstones = new._tombstones
        self._told = new.version
        self._snapshot = new

    def _compact_log(self) -> None:
        """Compact the change log (under the lock) once it holds more than twice
        ``LOG_KEYS`` keys (or twice the keys the store knows, live or deleted, if
        fewer, but at least :data:`_LOG_MIN`): only the last change of each key kept
        (what readers use), walking back from the newest batch until every key the
        store knows was seen (what is older changed nothing a reader can ask about)
        or ``LOG_KEYS`` distinct keys were kept (then the floor rises: older readers
        scan). A store of a few keys written one version at a time compacts a short
        log often, never a long one at once."""
        records = self._snapshot._records
        assert isinstance(records, Levels)
        pending = self._pending
        tombstones = self._tombstones
        known = self._length + len(tombstones)
        room = self._log_room = 2 * min(LOG_KEYS, max(known, _LOG_MIN))
        if self._log_keys <= room:
            return
        seen: set[Hashable] = set()
        kept: list[tuple[int, tuple[Hashable, ...]]] = []
        floor = self._lineage.floor
        count = 0
        covered = 0  # keys seen that the store knows (not released ones)
        for at, changed in reversed(self._log):
            fresh = tuple(filterfalse(seen.__contains__, changed))
            if count + len(fresh) > LOG_KEYS:
                floor = at  # this batch and older ones are not in the log any more
                break
            seen.update(fresh)
            count += len(fresh)
            if fresh:
                kept.append((at, fresh))
                # a key held back is known (live, or deleted: then it has a tombstone)
                covered += sum(1 for k in fresh if k in pending or k in records or k in tombstones)
                if covered >= known:
                    break  # every key's last change is kept: the rest is superseded
        kept.reverse()
        self._log = kept
        self._log_keys = count
        if floor != self._lineage.floor:
            self._lineage = ChangeLog.empty(floor).lineage

    def _new_log(self, floor: int) -> ChangeLog:
        """An empty change log: everything is at or below ``floor`` (under the lock)."""
        self._log = []
        self._log_keys = 0
        log = ChangeLog.empty(floor)
        self._lineage = log.lineage
        return log

    # -- durability ----------------------------------------------------------------

    @property
    def durable(self) -> bool:
        """True when the store keeps its entries in a state directory."""
        return self._durable is not None

    @property
    def path(self) -> Path | None:
        """The store's file in its state directory (None for a memory-only store)."""
        return None if self._durable is None else self._durable.backend.path

    async def open(self) -> None:
        """Restore the entries of a durable store from its state directory (in a
        thread; once: later calls return at once). Pipelines writing the store
        call this before they read their source; call it yourself to read a
        durable store no pipeline has started yet. A memory-only store does nothing."""
        if self._durable is not None:
            await self._durable.open()

    async def checkpoint(self, meta: Mapping[str, Any] | None = None) -> bool:
        """Make every change applied so far durable (one transaction, in a thread).
        Returns False when nothing changed since the last checkpoint. Sources commit
        their offsets only after this returns (docs/state.md)."""
        if self._durable is None:
            return False
        return await self._durable.checkpoint(meta)

    def stored_meta(self) -> dict[str, Any] | None:
        """The metadata in the state file as of its last checkpoint (or of
        :meth:`open`): what ``checkpoint(meta)`` stored, next to the store's own
        (``version``, ``format``, ...). ``None`` for a memory-only store or one not
        opened yet."""
        durable = self._durable
        return None if durable is None or durable.stored is None else dict(durable.stored)

    async def aclose(self) -> None:
        """Checkpoint what is left and close the state file (durable stores)."""
        if self._durable is not None:
            await self._durable.close()

    def durability(self) -> dict[str, Any]:
        """Checkpoint counters for status: ``{}`` for a memory-only store."""
        return {} if self._durable is None else self._durable.describe()

    def attach_changelog(self, changelog: Changelog) -> None:
        """Partition this durable store by the changelog's input topic: entries follow
        their Kafka partition (restored on assignment, released on revoke) and each
        checkpoint writes the changes to the changelog first. Called by the pipeline
        of a Kafka source before the store is opened."""
        durable = self._durable
        if durable is None:
            raise StateError(
                f"state {self.name!r}: only a durable store (state_dir=) has a changelog"
            )
        txn = getattr(changelog, "transactions", None)
        if durable.changelog is not None:
            if durable.changelog.topic != changelog.topic:
                raise StateError(
                    f"state {self.name!r} is written from changelog {durable.changelog.topic!r} "
                    f"already; a second Kafka pipeline ({changelog.topic!r}) cannot write it"
                )
            if txn is not None and getattr(durable.changelog, "transactions", None) is not txn:
                # a new run of an exactly-once source: its transactions from now on
                durable.changelog = changelog
                txn.on_commit(durable.committed)
            return
        if durable.opening is not None:
            raise StateError(f"state {self.name!r}: a changelog must be attached before open()")
        durable.changelog = changelog
        if txn is not None:
            # exactly-once: the local file is written once the changelog records of a
            # checkpoint are committed (with the source's offsets), never before
            txn.on_commit(durable.committed)

    async def assign_partitions(self, partitions: Iterable[Hashable]) -> None:
        """Restore the state of source ``partitions`` (a store with a changelog)."""
        if self._durable is not None:
            await self._durable.assign(list(partitions))

    async def revoke_partitions(self, partitions: Iterable[Hashable]) -> None:
        """Release the state of source ``partitions`` (a store with a changelog)."""
        if self._durable is not None:
            await self._durable.revoke(list(partitions))

    def owns(self, partition: Hashable) -> bool:
        """False for a partition of a changelog-backed store's input topic that is not
        assigned here: its events belong to another worker."""
        durable = self._durable
        return durable is None or durable.changelog is None or durable.owns(partition)

    def _merge(self, restored: Mapping[Hashable, Entry | Record]) -> None:
        """Add restored entries or records (a partition assigned here) as one version."""
        if not restored:
            return
        records = _records(restored)
        with self._lock:
            snap = self._published()
            version = max(snap.version + 1, max(r[2] for r in records.values()))
            wall = self.now()
            old = snap._records
            assert isinstance(old, Levels)
            # restored entries keep their versions: the log starts over above them
            new = Snapshot(
                self.name,
                version,
                Entries(old.merged(records)),
                snap._tombstones,
                wall,
                self.now,
                self._new_log(version),
            )
            self._install(new)
        self._changes.on_next(new)
        if self._updates.observers:
            self._updates.on_next(
                [StateChange(r[0], None, r[1], version, r[4], r[5]) for r in records.values()]
            )

    def _release(self, keys: list[Hashable]) -> None:
        """Drop the entries of partitions that moved to another worker (not deletions:
        no tombstones, no changes; readers see them gone from the snapshot)."""
        if not keys:
            return
        with self._lock:
            snap = self._published()
            records = snap._records
            assert isinstance(records, Levels)
            new = Snapshot(
                self.name,
                snap.version + 1,
                Entries(records.without(keys)),
                snap._tombstones,
                self.now(),
                self.now,
                snap._log,  # released keys are skipped by readers (no entry, no tombstone)
            )
            self._install(new)
            if self._dirty is not None:
                self._dirty.difference_update(keys)
        self._changes.on_next(new)

    def _restore(self, entries: Mapping[Hashable, Entry | Record], version: int) -> None:
        """Replace the contents with restored ``entries`` (or records; on the loop, before
        any write)."""
        records = entries if isinstance(entries, Levels) else Levels(_records(entries))
        with self._lock:
            wall = self.now()
            # restored entries keep their versions: the log starts above them
            version = max(version, max((r[2] for r in records.values()), default=0))
            self._pending = {}
            new = Snapshot(
                self.name,
                version,
                Entries(records),
                immutables.Map(),
                wall,
                self.now,
                self._new_log(version),
            )
            self._install(new)
        self._changes.on_next(new)
        if records and self._updates.observers:
            self._updates.on_next(
                [StateChange(r[0], None, r[1], r[2], r[4], r[5]) for r in records.values()]
            )

    def sink(
        self,
        *,
        key: str | int | Callable[[Any], Hashable] | None = None,
        reducer: Reducer | None = None,
        value: str | int | Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> Any:
        """A :class:`rxagent.sinks.StateSink` that folds events into this store
        (typed as such: ``rxagent.sinks.StateSink(store, ...)``).

        ``key``: field name or function of the value (default: the event's key).
        ``reducer(old, event) -> new`` (``old`` is None for a new key; return
        ``DELETE`` to remove it); without one the value (or ``value(...)`` of it)
        replaces the old one, and of several rows of one key in a batch only the
        newest is applied (and only its ``value(...)`` computed).
        """
        # the sink is a consumer of the store and lives with the other sinks, which
        # register it (register_sink): the store does not import its consumer
        if _sink_factory is None:  # only if rxagent.sinks was never imported
            raise RuntimeError("StateStore.sink() needs rxagent.sinks: import rxagent first")
        return _sink_factory(self, key=key, reducer=reducer, value=value, name=name)

    def __repr__(self) -> str:
        return f"<StateStore {self.name!r} v{self.version} keys={len(self)}>"


_UNSEEN: Final[Any] = object()

#: Most keys the writes held back (no version published: nobody read) may change
#: before the writer publishes them anyway, so that a reader never waits on more.
_PENDING: Final = 2048

#: Batches of at most this many rows are written row by row (``_write_few``); larger ones
#: in columns, their old records looked up a level at a time. By callgrind, per row: a
#: store of 10 keys replaced 2 / 16 / 64 at a time, 18.2k / 5.4k / 4.2k instructions row
#: by row against 24.8k / 7.8k / 5.8k in columns; new keys into a store growing to 200k,
#: 23.9k / 13.2k / 11.4k row by row against 28.7k / 12.6k / 9.9k at 2 / 8 / 16 a batch
#: (each row a miss on every level, which the set intersections find faster in C).
_FEW: Final = 8

#: The least number of keys a change log holds before it is compacted (a store of a
#: few keys compacts a log of twice this many, often, instead of one of 2 * LOG_KEYS).
_LOG_MIN: Final = 1024


class _Changes(BehaviorSubject[Snapshot]):
    """A store's :attr:`~StateStore.changes`: a behavior subject whose writer (the
    store) publishes and tells each version while it has observers, and a new
    observer's first snapshot is the newest version, published for it if the store
    held it back (no observer, no reader)."""

    def __init__(self, store: StateStore) -> None:
        self._store: StateStore | None = None
        super().__init__(store._snapshot)
        self._store = store

    @property
    def value(self) -> Snapshot:
        """The newest version, as a behavior subject's ``value`` is its last one:
        while nothing observes, the store holds versions back, and reading this
        publishes them (as :attr:`StateStore.snapshot` does)."""
        store = self._store
        if store is None or self.observers or self.is_disposed:
            return self._value
        return store.snapshot

    @value.setter
    def value(self, value: Snapshot) -> None:
        self._value = value

    def _subscribe_core(
        self, observer: ObserverBase[Snapshot], scheduler: SchedulerBase | None = None
    ) -> DisposableBase:
        store = self._store
        assert store is not None  # set in __init__
        with self.lock:
            self.check_disposed()
            if self.is_stopped:
                return super()._subscribe_core(observer, scheduler)
            # under the store's lock: a write after this sees the observer (and tells
            # its version); one before it is in the snapshot published here
            with store._lock:
                snap = store._published()
                if snap.version > store._told:
                    # held back, so told to nobody: it is the current value
                    self.value = snap
                    store._told = snap.version
                self.observers.append(observer)
            # outside the store's lock (the observer may write the store), as
            # BehaviorSubject does: a write telling a newer version waits for this lock
            observer.on_next(self.value)
            return InnerSubscription(self, observer)


def _records(entries: Mapping[Hashable, Entry | Record]) -> dict[Hashable, Record]:
    """Entries (or records already) as records."""
    return {k: e if isinstance(e, tuple) else record_of(e) for k, e in entries.items()}


#: What :meth:`StateStore.sink` builds: :mod:`rxagent.sinks.state_sink` registers
#: ``StateSink`` here when it is imported (``import rxagent`` does).
_sink_factory: Callable[..., Any] | None = None


def register_sink(factory: Callable[..., Any]) -> None:
    """Make ``factory(store, key=, reducer=, value=, name=)`` what :meth:`StateStore.sink`
    returns."""
    global _sink_factory
    _sink_factory = factory


def constant_update(value: Any) -> Callable[[Any], Any]:
    """An update function that sets ``value`` whatever the old value was."""
    return lambda _old: value


class Changelog(Protocol):
    """What a durable store needs of a changelog (:class:`rxagent.kafka.KafkaChangelog`)."""

    topic: str
    input_topic: str

    def ensure_topic(self) -> int: ...

    def produce(self, records: list[tuple[int, bytes, bytes | None]]) -> dict[int, int]: ...

    def read(
        self, starts: Mapping[int, int | None]
    ) -> Iterable[tuple[int, list[tuple[bytes, bytes | None, int]]]]: ...

    def close(self) -> None: ...


def part_text(partition: Hashable) -> str:
    """How a source partition is named in the state file (``topic/3`` for Kafka)."""
    if isinstance(partition, tuple) and len(partition) == 2:
        return f"{partition[0]}/{partition[1]}"
    return str(partition)


#: A checkpoint waiting for its transaction: (transaction number, rows, deleted keys,
#: changelog ends per partition, metadata).
_Staged = tuple[
    int, list[tuple[bytes, "str | None", bytes]], list[bytes], dict[int, int], dict[str, Any]
]


class _Durable:
    """A store's state file (and changelog, when a Kafka source writes the store):
    restore at open or on partition assignment, one transaction per checkpoint, all
    in a thread of the store's own (the loop only swaps the set of changed keys)."""

    def __init__(self, store: StateStore, state_dir: Path, codec: Codec) -> None:
        self.store = store
        self.backend = SQLiteBackend(
            store_path(state_dir, store.name), store=store.name, codec=codec
        )
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.opening: asyncio.Future[None] | None = None
        self.lock: asyncio.Lock | None = None
        self.checkpoints = 0
        self.checkpoint_keys = 0
        self.checkpoint_bytes = 0
        self.last_checkpoint: float | None = None
        self.last_duration: float | None = None
        self.restored = 0
        self.restore_seconds: float | None = None
        # partitioned state (a changelog attached): the input partitions held here,
        # and per partition the changelog offset the local rows reflect
        self.changelog: Changelog | None = None
        self.owned: set[Hashable] = set()
        self.offsets: dict[str, int] = {}
        self.restoring: str | None = None
        self.restored_changes = 0
        self.restore_read = 0  # changelog records read by the restore running now (progress)
        self.released = 0
        # the entries as of the last checkpoint: where a deleted key's tombstone goes
        self.last_entries: Levels[Record] = Levels()
        # the file's metadata as of open() and the last checkpoint (stored_meta())
        self.stored: dict[str, Any] | None = None
        # exactly-once: checkpoints whose changelog records are in a transaction not
        # committed yet, written to the local file once it is (store thread only):
        # (transaction, rows, deleted keys, changelog ends per partition, metadata)
        self.staged: list[_Staged] = []

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"rxagent-state-{self.store.name}"
            )
        result: _T = await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        return result

    def input_partition(self, partition: Hashable) -> int | None:
        """The changelog partition of an entry from ``partition`` (None: not from the
        changelog's input topic, so kept locally only)."""
        changelog = self.changelog
        if (
            changelog is not None
            and isinstance(partition, tuple)
            and len(partition) == 2
            and partition[0] == changelog.input_topic
        ):
            return int(partition[1])
        return None

    def owns(self, partition: Hashable) -> bool:
        return partition in self.owned or self.input_partition(partition) is None

    # -- opening and restoring -----------------------------------------------------------

    async def open(self) -> None:
        if self.opening is None:
            self.opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self.opening)

    async def _open(self) -> None:
        started = time.monotonic()
        entries, version = await self.run(self._load)
        self.store._restore(entries, version)
        self.restored = len(entries)
        self.restore_seconds = time.monotonic() - started
        if self.changelog is None:
            log.info(
                "state %r: restored %d keys (version %d) from %s in %.2fs",
                self.store.name,
                len(entries),
                version,
                self.backend.path,
                self.restore_seconds,
            )

    def _load(self) -> tuple[Levels[Record], int]:
        meta = self.backend.open()
        self.stored = dict(meta)
        version = int(meta.get("version", 0))
        if self.changelog is not None:
            # partitioned: entries are restored per partition as they are assigned
            self.changelog.ensure_topic()
            if meta.get("changelog_topic") not in (None, self.changelog.topic):
                raise StateError(
                    f"state {self.store.name!r}: {self.backend.path} holds the state of "
                    f"changelog {meta.get('changelog_topic')!r}, not {self.changelog.topic!r} "
                    "(another consumer group or store): use another state directory"
                )
            self.offsets = {k: int(v) for k, v in (meta.get("changelog") or {}).items()}
            return Levels(), version
        with gc_paused():
            entries: Levels[Record] = Levels(
                {
                    key: record_from_durable(key, record)
                    for key, _part, record in self.backend.rows()
                }
            )
        self.last_entries = entries
        return entries, version

    async def assign(self, partitions: list[Hashable]) -> None:
        """Restore the state of ``partitions`` before their events are processed:
        the local rows, brought up to date from the changelog."""
        await self.open()
        mine = [p for p in partitions if self.input_partition(p) is not None]
        if not mine or self.changelog is None:
            return
        started = time.monotonic()
        restored, changes = await self.run(self._restore_parts, mine)
        self.owned.update(mine)
        self.store._merge(restored)
        self.last_entries = self.last_entries.merged(restored)
        seconds = time.monotonic() - started
        self.restored += len(restored)
        self.restored_changes += changes
        self.restore_seconds = seconds
        log.info(
            "state %r: restored %s: %d keys (%d changelog records read) in %.2fs",
            self.store.name,
            ", ".join(sorted(map(part_text, mine))),
            len(restored),
            changes,
            seconds,
        )

    def _restore_parts(self, partitions: list[Hashable]) -> tuple[dict[Hashable, Record], int]:
        with gc_paused():
            return self._restore_parts_now(partitions)

    def _restore_parts_now(self, partitions: list[Hashable]) -> tuple[dict[Hashable, Record], int]:
        changelog = self.changelog
        assert changelog is not None
        backend = self.backend
        topic = changelog.input_topic
        numbers = {p: n for p in partitions if (n := self.input_partition(p)) is not None}
        starts = {n: self.offsets.get(part_text(p)) for p, n in numbers.items()}
        self.restoring = ", ".join(sorted(map(part_text, numbers)))
        self.restore_read = changes = 0
        rebuild: list[int] = []
        for number, chunk in changelog.read(starts):
            text = part_text((topic, number))
            start = starts[number]
            if number in rebuild:
                continue
            if start is not None and chunk[0][2] < start:
                # the changelog is not what the local rows were built from (recreated):
                # this partition is rebuilt from the changelog alone
                log.warning(
                    "state %r: changelog %s partition %d restarts below offset %d; "
                    "rebuilding %s from the changelog",
                    self.store.name,
                    changelog.topic,
                    number,
                    start,
                    text,
                )
                rebuild.append(number)
                continue
            changes += self._apply_changelog(text, chunk)
            self.restore_read = changes
        for number in rebuild:
            text = part_text((topic, number))
            self.offsets.pop(text, None)
            backend.delete_part(text, self._meta())
            for _, chunk in changelog.read({number: None}):
                changes += self._apply_changelog(text, chunk)
                self.restore_read = changes
        restored: dict[Hashable, Record] = {}
        for partition in numbers:
            for key, _part, record in backend.rows(part_text(partition)):
                restored[key] = record_from_durable(key, record)
        self.restoring = None
        return restored, changes

    def _apply_changelog(self, part: str, chunk: list[tuple[bytes, bytes | None, int]]) -> int:
        """Write a chunk of one partition's changelog records to the local rows, with
        the changelog offset they now reflect (one transaction); returns its length."""
        puts: list[tuple[bytes, str | None, bytes]] = [
            (k, part, v) for k, v, _ in chunk if v is not None
        ]
        deletes = [k for k, v, _ in chunk if v is None]
        self.offsets[part] = chunk[-1][2] + 1
        self.backend.write(puts, deletes, self._meta())
        return len(chunk)

    async def revoke(self, partitions: list[Hashable]) -> None:
        """Let go of ``partitions``: their entries leave this worker (the new owner
        restores them); changes not yet checkpointed are dropped (their offsets were
        not committed either, so the new owner replays those events)."""
        mine = [p for p in partitions if p in self.owned]
        if not mine:
            return
        self.owned.difference_update(mine)
        texts = {part_text(p) for p in mine}
        snap = self.store.snapshot
        keys = await self.run(_keys_of, snap, texts)
        self.store._release(keys)
        self.last_entries = self.last_entries.without(keys)
        self.released += len(keys)
        log.info(
            "state %r: released %s (%d keys)",
            self.store.name,
            ", ".join(sorted(texts)),
            len(keys),
        )

    # -- checkpoints ------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        if self.changelog is None:
            return {}
        return {"changelog_topic": self.changelog.topic, "changelog": dict(self.offsets)}

    async def checkpoint(self, meta: Mapping[str, Any] | None) -> bool:
        await self.open()
        if self.lock is None:
            self.lock = asyncio.Lock()
        # one checkpoint at a time; one that waited covers every change up to its start
        async with self.lock:
            store = self.store
            dirty = store._dirty
            if not dirty and meta is None:
                return False
            snap = store.snapshot  # published before the dirty keys are taken
            store._dirty = set()
            # status of the disk write, not stream time: its duration (monotonic) and
            # when it was made (wall, for "checkpoint 3.2s ago")
            started = time.monotonic()
            try:
                written = await self.run(self._write, snap, dirty or set(), dict(meta or {}))
            except BaseException:
                # not durable: those keys are still to be written
                assert store._dirty is not None
                store._dirty |= dirty or set()
                raise
            assert isinstance(snap._records, Levels)
            self.last_entries = snap._records
            if meta and self.stored is not None:
                self.stored.update(meta)
            self.checkpoints += 1
            self.checkpoint_keys += len(dirty or ())
            self.checkpoint_bytes += written
            self.last_checkpoint = time.time()
            self.last_duration = time.monotonic() - started
            return True

    def _write(self, snap: Snapshot, dirty: set[Hashable], meta: dict[str, Any]) -> int:
        entries = snap._records
        assert entries is not None
        previous = self.last_entries
        backend = self.backend
        encoded: list[tuple[bytes, str | None, bytes]] = []
        deletes: list[bytes] = []
        records: list[tuple[int, bytes, bytes | None]] = []
        for key in dirty:
            entry = entries.get(key)
            if entry is None:
                key_bytes = backend.codec.dumps(key)
                deletes.append(key_bytes)
                old = previous.get(key)
                if old is not None and old[6] is not None:
                    number = self.input_partition(old[7])
                    if number is not None:
                        records.append((number, key_bytes, None))
                continue
            # entry[1:] is the durable record (snapshot.entry_record); entry[6] the source
            key_bytes, entry_bytes = backend.encode(key, entry[1:])
            has_position = entry[6] is not None
            encoded.append((key_bytes, part_text(entry[7]) if has_position else None, entry_bytes))
            if has_position:
                number = self.input_partition(entry[7])
                if number is not None:
                    records.append((number, key_bytes, entry_bytes))
        txn = None if self.changelog is None else getattr(self.changelog, "transactions", None)
        if txn is not None:
            return self._stage(txn, records, encoded, deletes, {**meta, "version": snap.version})
        if self.changelog is not None and records:
            # the changelog first, every delivery confirmed; then the local rows that
            # say which changelog offset they reflect
            topic = self.changelog.input_topic
            for number, end in self.changelog.produce(records).items():
                self.offsets[part_text((topic, number))] = end
        return backend.write(encoded, deletes, {**meta, **self._meta(), "version": snap.version})

    # -- exactly-once: the local file follows the committed transactions ------------------

    def _stage(
        self,
        txn: Any,
        records: list[tuple[int, bytes, bytes | None]],
        encoded: list[tuple[bytes, str | None, bytes]],
        deletes: list[bytes],
        meta: dict[str, Any],
    ) -> int:
        """Produce the changelog records into the source's open transaction (every
        delivery confirmed) and keep the local rows until that transaction commits:
        a crash before the commit must not leave the local file ahead of the
        changelog (a replay would skip those events, and the changelog would never
        get their changes). Store thread."""
        assert self.changelog is not None
        ends: dict[int, int] = {}
        number = txn.number
        if records:
            ends = self.changelog.produce(records)
            number = getattr(self.changelog, "last_transaction", None)
            if number is None:
                number = txn.number
        elif not self.staged:
            # nothing for the changelog, nothing waiting: written now, in order
            number = -1
        self.staged.append((number, encoded, deletes, ends, meta))
        self.write_staged(txn.committed)
        return sum(len(k) + len(e) for k, _, e in encoded)

    def committed(self, number: int) -> None:
        """The source's transaction ``number`` committed (transaction thread): write
        the local rows staged for it, in the store's thread."""
        executor = self.executor
        if executor is None:
            return
        try:
            executor.submit(self._write_committed, number)
        except RuntimeError:  # closed: the changelog has them, a restore reads them
            return

    def _write_committed(self, number: int) -> None:
        try:
            self.write_staged(number)
        except Exception as error:  # the file lags; a restore reads the rest from the changelog
            log.error("state %r: writing a committed checkpoint: %s", self.store.name, error)

    def write_staged(self, committed: int) -> None:
        """Write, in order, the staged checkpoints of transactions up to ``committed``."""
        assert self.changelog is not None
        topic = self.changelog.input_topic
        while self.staged and self.staged[0][0] <= committed:
            _number, encoded, deletes, ends, meta = self.staged[0]
            for partition, end in ends.items():
                self.offsets[part_text((topic, partition))] = end
            self.backend.write(encoded, deletes, {**meta, **self._meta()})
            del self.staged[0]

    async def close(self) -> None:
        if self.opening is None:
            return
        try:
            await self.checkpoint(None)
        finally:
            if self.executor is not None:
                txn = getattr(self.changelog, "transactions", None)
                if txn is not None and self.staged:
                    # what committed is written; the rest is in no committed transaction
                    await self.run(self._write_committed, txn.committed)
                    self.staged.clear()
                await self.run(self.backend.close)
                if self.changelog is not None:
                    await self.run(self.changelog.close)
                self.executor.shutdown(wait=False)
                self.executor = None
            self.opening = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "path": str(self.backend.path),
            "codec": self.backend.codec.name,
            "checkpoints": self.checkpoints,
            "checkpoint_keys": self.checkpoint_keys,
            "last_checkpoint": self.last_checkpoint,
            "last_checkpoint_seconds": self.last_duration,
            "dirty": len(self.store._dirty or ()),
            **({"staged": len(self.staged)} if self.staged else {}),
            "restored": self.restored,
            "restore_seconds": self.restore_seconds,
        }
        if self.changelog is not None:
            info.update(
                changelog=self.changelog.topic,
                partitions=sorted(map(part_text, self.owned)),
                restoring=self.restoring,
                restore_read=self.restore_read,
                restored_changes=self.restored_changes,
                released=self.released,
            )
        return info


def _keys_of(snap: Snapshot, parts: set[str]) -> list[Hashable]:
    """The keys of ``snap`` whose last event came from one of ``parts``."""
    records = snap._records
    assert records is not None
    return [k for k, r in records.items() if r[6] is not None and part_text(r[7]) in parts]
