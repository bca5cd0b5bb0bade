"""Durable state on local disk: one SQLite file per store, written once per checkpoint.

A store with a state directory keeps working in memory exactly as before (an
immutable snapshot per applied batch); what changes is that it remembers which
keys changed since its last checkpoint, and :meth:`StateStore.checkpoint` writes
those entries (value, version, updates, event time, wall time, source position)
in **one transaction**, in a thread of the store's own, then returns. A source
commits its offsets only after that (docs/state.md, "Checkpoints"), so the
entries on disk always cover every event up to the committed offsets; events
after them are replayed on restart and skipped by position where already
applied.

Why SQLite (measured, docs/architecture.md Decision 9): it ships with Python, a
checkpoint of 10,000 dirty keys is one ``executemany`` in one WAL transaction,
``synchronous=FULL`` makes each checkpoint survive power loss as well as
``kill -9`` for one ``fsync`` per checkpoint (once a second, not once per
event), and a restore reads every row with one query.

Entries and keys are encoded by a :class:`Codec`: ``pickle`` (default) restores
exactly what was stored, any Python value; ``json`` stores JSON values only (a
value that is not one fails the checkpoint loudly, naming store and key) and is
safe to read from files others could write.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from .._secrets import touch_private
from ..exceptions import ConfigurationError, StateError

__all__ = [
    "FORMAT",
    "Codec",
    "CodecName",
    "JsonCodec",
    "PickleCodec",
    "SQLiteBackend",
    "codec_for",
    "hashable",
    "store_path",
]

#: The on-disk format; a file written with another one is refused with a clear error.
FORMAT = 1

CodecName = Literal["pickle", "json"]

#: One stored row: key, the partition it belongs to (text, or None), encoded entry
Row = tuple[Hashable, str | None, tuple[Any, ...]]


class Codec(Protocol):
    """Turns keys and entry records into bytes and back."""

    name: str

    def dumps(self, obj: Any) -> bytes:
        """``obj`` as bytes, for the store's backend and changelog."""

    def loads(self, data: bytes) -> Any:
        """The value ``dumps`` made ``data`` from."""


class PickleCodec:
    """Any Python value, restored exactly. Read only files you trust (pickle runs code)."""

    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        """``obj`` pickled (protocol 5): any picklable value round-trips."""
        return pickle.dumps(obj, protocol=5)

    def loads(self, data: bytes) -> Any:
        """The value pickled in ``data`` (only read stores you wrote: unpickling runs code)."""
        return pickle.loads(data)


def hashable(value: Any) -> Any:
    """JSON arrays back to tuples (keys and partitions are hashable)."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    return value


class JsonCodec:
    """JSON values only (dicts, lists, strings, numbers, booleans, None). Keys that
    were tuples come back as tuples; values come back as JSON values."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, default=self._refuse
        )

    @staticmethod
    def _refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is not a JSON value")

    def dumps(self, obj: Any) -> bytes:
        """``obj`` as UTF-8 JSON (pydantic models and dataclasses as their fields)."""
        return self._encoder.encode(obj).encode()

    def loads(self, data: bytes) -> Any:
        """The JSON value in ``data`` (models come back as dicts)."""
        return json.loads(data)


def codec_for(codec: CodecName | Codec) -> Codec:
    """The codec ``codec`` names (``"pickle"`` or ``"json"``), or ``codec`` itself
    when it is one."""
    if not isinstance(codec, str):
        return codec
    if codec == "pickle":
        return PickleCodec()
    if codec == "json":
        return JsonCodec()
    raise ConfigurationError(f"state codec must be 'pickle' or 'json', got {codec!r}")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector around a bulk load (a restore makes a
    million entries that all stay alive: the collections it triggers find nothing to
    free and cost most of the restore, ~4.8x measured at 1M keys). Process-wide, for
    the duration of the load only; the collector's state is put back afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def store_path(state_dir: str | os.PathLike[str], name: str) -> Path:
    """The file of store ``name`` in ``state_dir`` (names are made safe for file names)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(state_dir) / f"{safe}.sqlite3"


class SQLiteBackend:
    """One store's entries in one SQLite file. Not thread-safe: the store calls it
    from its one writer thread only."""

    def __init__(self, path: str | os.PathLike[str], *, store: str, codec: Codec) -> None:
        self.path = Path(path)
        self.store = store
        self.codec = codec
        self._db: sqlite3.Connection | None = None

    # -- opening ---------------------------------------------------------------------

    def open(self) -> dict[str, Any]:
        """Open (creating it if missing) and check the file; returns its metadata."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StateError(
                f"state {self.store!r}: cannot create state directory {self.path.parent}: {error}"
            ) from error
        try:
            touch_private(self.path)  # payloads: 0600 (SQLite gives its -wal/-shm the same)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # a checkpoint must survive power loss too: the offsets committed after it
            # say its events are done (one fsync per checkpoint, not per event)
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries "
                "(key BLOB PRIMARY KEY, part TEXT, entry BLOB NOT NULL) WITHOUT ROWID"
            )
            meta = {name: json.loads(value) for name, value in db.execute("SELECT * FROM meta")}
        except sqlite3.DatabaseError as error:
            raise StateError(
                f"state {self.store!r}: {self.path} is not a usable state file ({error}); "
                "move it away or delete it (`rxagent state FILE STORE --reset`): the store "
                "starts empty, or is rebuilt from its changelog when it has one"
            ) from error
        self._db = db
        if not meta:
            meta = {"format": FORMAT, "store": self.store, "codec": self.codec.name, "version": 0}
            self._write_meta(meta)
            return meta
        if meta.get("format") != FORMAT:
            raise StateError(
                f"state {self.store!r}: {self.path} has format {meta.get('format')!r}, this "
                f"rxagent reads format {FORMAT}; reset it (`rxagent state FILE STORE --reset`) "
                "to rebuild the store"
            )
        if meta.get("codec") != self.codec.name:
            raise StateError(
                f"state {self.store!r}: {self.path} was written with codec "
                f"{meta.get('codec')!r}, the store is configured with {self.codec.name!r}"
            )
        return meta

    def _write_meta(self, meta: dict[str, Any]) -> None:
        db = self._require()
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in meta.items()],
        )

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateError(f"state {self.store!r}: the state file is not open")
        return self._db

    # -- reading -----------------------------------------------------------------------

    def rows(self, part: str | None = None) -> Iterator[Row]:
        """Every stored entry (or those of one partition), decoded."""
        db = self._require()
        loads = self.codec.loads
        if part is None:
            cursor = db.execute("SELECT key, part, entry FROM entries")
        else:
            cursor = db.execute("SELECT key, part, entry FROM entries WHERE part = ?", (part,))
        try:
            while chunk := cursor.fetchmany(4096):
                for key, p, entry in chunk:
                    yield hashable(loads(key)), p, tuple(loads(entry))
        except (sqlite3.DatabaseError, pickle.UnpicklingError, ValueError, EOFError) as error:
            raise StateError(
                f"state {self.store!r}: {self.path} is corrupt ({type(error).__name__}: {error}); "
                "reset it (`rxagent state FILE STORE --reset`) to rebuild the store"
            ) from error

    # -- writing -----------------------------------------------------------------------

    def encode(self, key: Hashable, record: tuple[Any, ...]) -> tuple[bytes, bytes]:
        """A key and its entry record as bytes (a clear error for what cannot be)."""
        try:
            return self.codec.dumps(key), self.codec.dumps(record)
        except (TypeError, ValueError, pickle.PicklingError, AttributeError) as error:
            raise StateError(
                f"state {self.store!r}: cannot store key {key!r} with codec "
                f"{self.codec.name!r}: {error} (store JSON values, or use codec='pickle')"
            ) from error

    def write(
        self,
        encoded: list[tuple[bytes, str | None, bytes]],
        deletes: list[bytes],
        meta: dict[str, Any],
    ) -> int:
        """One checkpoint in one transaction: rows put (encoded key, partition, encoded
        entry: :meth:`encode`), encoded keys deleted, and metadata. Returns the bytes put."""
        db = self._require()
        written = sum(len(k) + len(e) for k, _, e in encoded)
        gone = [(key,) for key in deletes]
        meta = {**meta, "checkpoint_time": time.time()}
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if encoded:
                    db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", encoded)
                if gone:
                    db.executemany("DELETE FROM entries WHERE key = ?", gone)
                self._write_meta(meta)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as error:
            raise StateError(
                f"state {self.store!r}: checkpoint to {self.path} failed: {error}"
            ) from error
        return written

    def delete_part(self, part: str, meta: dict[str, Any]) -> None:
        """Forget one partition's entries (to rebuild them from a changelog)."""
        db = self._require()
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM entries WHERE part = ?", (part,))
        self._write_meta(meta)
        db.execute("COMMIT")

    def close(self) -> None:
        """Close the database; the store is written no more."""
        if self._db is not None:
            self._db.close()
            self._db = None
