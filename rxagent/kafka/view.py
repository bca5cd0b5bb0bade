"""The whole state of a partitioned store, whatever the number of workers: a
read-only :class:`StateView` materialized from the store's changelog topic.

Each worker of a consumer group holds the state of its own input partitions only
(docs/state.md); every checkpoint writes the changed entries to the changelog
topic ``rxagent-changelog.<group>.<store>`` (one partition per input partition).
A view reads *every* partition of that topic: first to its end (:meth:`StateView.start`
returns then), then it follows what the workers append, applying deletes
(tombstones). Entries keep what the writer recorded (value, version, update count,
event time, wall time, source position), so ``as_of`` says when the writing worker
applied the change, not when the view read it.

The view is a memory-only :class:`~rxagent.state.StateStore`: readers use the store
API (``snapshot``, ``get``, ``context``, ``changes_since``, ``changes`` and
``updates``), and an MCP server serves it like any store. Writes are refused.

Threads: one consumer thread reads and decodes the records, and hands each poll's
records (at most ``chunk``) to the event loop as one batch, applied as one version;
at most a few batches wait for the loop, so memory stays bounded while catching up
and the loop never blocks on the consumer.

How stale it can be: a change reaches the changelog at the writer's next checkpoint
(``checkpoint_interval``, 1 s by default), and the view within about 0.1 s more;
:meth:`StateView.describe` shows per-partition lag and the time of the newest record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import immutables
from reactivex.subject import BehaviorSubject

from ..exceptions import ConfigurationError, StateError
from ..state.durable import Codec, CodecName, codec_for, hashable
from ..state.snapshot import entry_from_record
from ..state.store import ChangeSet, Entry, Snapshot, StateChange, StateStore, Update
from .changelog import KafkaChangelog, TailBatch, changelog_topic

if TYPE_CHECKING:
    from ..sinks.state_sink import StateSink

__all__ = ["StateView", "state_view"]

log = logging.getLogger("rxagent")

#: batches decoded by the consumer thread that may wait for the loop at once
_IN_FLIGHT = 4
#: least seconds between two warnings about client errors (all are counted)
_WARN_EVERY = 30.0


class _ViewSnapshot(Snapshot):
    """A view's snapshot: also the view version each entry was applied in (entries
    keep the writer's version, which is not comparable across workers)."""

    __slots__ = ("applied",)

    def __init__(
        self,
        store: str,
        version: int,
        entries: immutables.Map[Hashable, Entry],
        tombstones: immutables.Map[Hashable, int],
        wall_time: float,
        applied: immutables.Map[Hashable, int],
    ) -> None:
        super().__init__(store, version, entries, tombstones, wall_time)
        self.applied = applied


@dataclass(slots=True)
class _Partition:
    """What the view knows of one changelog partition (loop side)."""

    offset: int = 0  # the next offset to apply
    high: int | None = None  # the high watermark, when the client knows it
    at_end: bool = False  # read to its end, nothing newer seen since
    records: int = 0
    newest: float | None = None  # timestamp of the newest record applied

    def lag(self) -> int | None:
        if self.at_end:
            return 0
        return None if self.high is None else max(0, self.high - self.offset)


@dataclass(slots=True)
class _Decoded:
    """One poll of the changelog, decoded on the consumer thread."""

    changes: dict[Hashable, tuple[Entry | None, float | None]] = field(default_factory=dict)
    records: dict[int, tuple[int, int, float | None]] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    highs: dict[int, int] = field(default_factory=dict)
    partitions: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class StateView(StateStore):
    """A read-only store holding the whole state of store ``store`` as its changelog
    topic ``topic`` has it, every partition (see the module docstring).

    ``config``: the client settings (``bootstrap.servers``, security; a Kafka
    source's ``config`` will do: consumer-only settings are left out). ``codec``:
    the codec the writers use (``"pickle"`` by default, as theirs). ``name``: the
    view's store name (default ``store``). ``chunk``: most records per batch.

    Use it as an async context manager, or ``await view.start()`` (returns once
    every partition was read to its end) and ``await view.aclose()``.
    """

    def __init__(
        self,
        store: str,
        *,
        topic: str,
        config: Mapping[str, Any],
        codec: CodecName | Codec = "pickle",
        name: str | None = None,
        group_id: str | None = None,
        chunk: int = 2048,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name or store, clock=clock)
        if not config.get("bootstrap.servers"):
            raise ConfigurationError(
                f"state view {self.name!r}: no bootstrap servers (give bootstrap_servers=)"
            )
        if chunk < 1:
            raise ConfigurationError(f"state view {self.name!r}: chunk must be >= 1, got {chunk}")
        self.store = store
        self.topic = topic
        self.group_id = group_id
        self.codec = codec_for(codec)
        self.chunk = chunk
        self.changelog = KafkaChangelog(
            topic=topic, input_topic="", config=config, owner=f"state view {self.name!r}"
        )
        self._snapshot = _ViewSnapshot(
            self.name, 0, immutables.Map(), immutables.Map(), 0.0, immutables.Map()
        )
        self._changes: BehaviorSubject[Snapshot] = BehaviorSubject(self._snapshot)
        self._partitions: dict[int, _Partition] = {}
        self._stop = threading.Event()
        self._slots = threading.Semaphore(_IN_FLIGHT)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._started: float | None = None
        self._warned = 0.0
        #: changelog records applied, and the batches they came in
        self.records = 0
        self.batches = 0
        #: wall time the view was started and when it last applied records
        self.started_at: float | None = None
        self.last_applied_at: float | None = None
        #: seconds the first read to the end took
        self.catch_up_seconds: float | None = None
        #: problems the client reported (it keeps reconnecting), and the last one
        self.client_errors = 0
        self.last_client_error: str | None = None
        #: why the view stopped following the changelog (None while it follows it)
        self.error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> StateView:
        """Start reading (once) and wait until every partition was read to its end.

        Raises :class:`~rxagent.exceptions.StateError` when the brokers cannot be
        reached, the changelog topic does not exist, a record cannot be decoded
        with the codec, or the view was closed first."""
        if self._ready is None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._ready = loop.create_future()
            self._ended = loop.create_future()
            self.started_at = time.time()
            self._started = time.monotonic()
            self._thread = threading.Thread(
                target=self._run, name=f"rxagent-view-{self.name}", daemon=True
            )
            self._thread.start()
        await asyncio.shield(self._ready)
        return self

    async def open(self) -> None:
        """The same as :meth:`start` (a store's ``open`` makes it readable)."""
        await self.start()

    @property
    def ready(self) -> bool:
        """True once every partition was read to its end (the view then follows live)."""
        return self._ready is not None and self._ready.done() and not self._ready.exception()

    @property
    def caught_up(self) -> bool:
        """True when every partition is read to its end now (nothing newer seen)."""
        return self.ready and all(p.at_end for p in self._partitions.values())

    async def aclose(self) -> None:
        """Stop following the changelog and close the consumer (the entries stay readable)."""
        self._stop.set()
        ready, ended = self._ready, self._ended
        if ready is not None and not ready.done():
            ready.set_exception(StateError(f"state view {self.name!r} was closed"))
            ready.exception()  # retrieved: nobody has to wait for it
        if ended is not None:
            await asyncio.shield(ended)

    async def __aenter__(self) -> StateView:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- status -------------------------------------------------------------------------

    def lag(self) -> dict[int, int | None]:
        """Per changelog partition, records not yet applied: 0 when read to its end,
        else behind the high watermark the client knows (None: not known yet)."""
        return {p: part.lag() for p, part in sorted(self._partitions.items())}

    @property
    def newest_record_at(self) -> float | None:
        """When the newest record applied was written to the changelog (epoch seconds)."""
        times = [p.newest for p in self._partitions.values() if p.newest is not None]
        return max(times) if times else None

    def describe(self) -> dict[str, Any]:
        """The view's status: what it reads, how far it is, how fresh (times are epoch
        seconds; ``as_of`` of each entry is when its writer applied it)."""
        if self.error is not None:
            state = "failed"
        elif self._stop.is_set():
            state = "stopped"
        elif self._ready is None:
            state = "not started"
        elif not self.ready:
            state = "catching up"
        else:
            state = "live"
        lags = self.lag()
        known = [v for v in lags.values() if v is not None]
        snap = self._snapshot
        return {
            "store": self.store,
            "changelog": self.topic,
            "group_id": self.group_id,
            "codec": self.codec.name,
            "state": state,
            "caught_up": self.caught_up,
            "lag": sum(known) if known and len(known) == len(lags) else None,
            "keys": len(snap),
            "version": snap.version,
            "records": self.records,
            "batches": self.batches,
            "started_at": self.started_at,
            "catch_up_seconds": self.catch_up_seconds,
            "last_applied_at": self.last_applied_at,
            "newest_record_at": self.newest_record_at,
            "partitions": {
                str(p): {
                    "offset": part.offset,
                    "high_watermark": part.high,
                    "lag": part.lag(),
                    "at_end": part.at_end,
                    "records": part.records,
                    "newest_record_at": part.newest,
                }
                for p, part in sorted(self._partitions.items())
            },
            "client_errors": self.client_errors,
            "last_client_error": self.last_client_error,
            "error": self.error,
        }

    # -- reading (what differs from a store) --------------------------------------------------

    def changes_since(self, version: int) -> ChangeSet:
        """What changed in the view after view version ``version`` (0: everything)."""
        snap = self._snapshot
        applied = snap.applied if isinstance(snap, _ViewSnapshot) else immutables.Map()
        changed = {k: snap._entries[k] for k, v in applied.items() if v > version}
        deleted = [k for k, v in snap._tombstones.items() if v > version]
        return ChangeSet(self.name, version, snap.version, changed, deleted)

    # -- writes are refused ----------------------------------------------------------------

    def _read_only(self) -> StateError:
        return StateError(
            f"state {self.name!r} is a read-only view of changelog {self.topic!r}; "
            "write the store in the pipeline that owns it"
        )

    def apply_updates(self, updates: Iterable[Update]) -> list[StateChange]:
        raise self._read_only()

    def write_values(self, *args: Any, **kwargs: Any) -> int:
        raise self._read_only()

    def write_value(self, *args: Any, **kwargs: Any) -> int:
        raise self._read_only()

    def sink(self, **options: Any) -> StateSink:
        raise self._read_only()

    # -- the consumer thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            # closed on the way out, so the consumer is closed before the view says it ended
            with contextlib.closing(self.changelog.tail(self._stop, chunk=self.chunk)) as tails:
                for tail in tails:
                    decoded = self._decode(tail)
                    while not self._slots.acquire(timeout=0.25):
                        if self._stop.is_set() or self._loop_closed():
                            return
                    if not self._hand(self._take, decoded):
                        return
        except BaseException as error:
            self._hand(self._fail, error)
        finally:
            self._hand(self._end)

    def _loop_closed(self) -> bool:
        return self._loop is None or self._loop.is_closed()

    def _hand(self, fn: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody reads the view any more
            self._stop.set()
            return False
        return True

    def _decode(self, tail: TailBatch) -> _Decoded:
        loads = self.codec.loads
        out = _Decoded(ends=tail.ends, highs=tail.highs, partitions=tail.partitions)
        out.errors = tail.errors
        changes = out.changes
        records = out.records
        for partition, raw_key, raw_value, offset, timestamp in tail.records:
            try:
                key = hashable(loads(raw_key))
                entry = (
                    None if raw_value is None else entry_from_record(key, tuple(loads(raw_value)))
                )
            except Exception as error:
                raise StateError(
                    f"state view {self.name!r}: changelog {self.topic!r} partition {partition} "
                    f"offset {offset} cannot be read with codec {self.codec.name!r} "
                    f"({type(error).__name__}: {error}); give the codec the writers use"
                ) from error
            changes.pop(key, None)  # the latest change of a key, in the order last changed
            changes[key] = (entry, timestamp)
            _, count, newest = records.get(partition, (0, 0, None))
            if timestamp is not None and (newest is None or timestamp > newest):
                newest = timestamp
            records[partition] = (offset + 1, count + 1, newest)
        return out

    # -- on the loop --------------------------------------------------------------------------

    def _take(self, batch: _Decoded) -> None:
        try:
            if self._stop.is_set():
                return
            now = self._clock()
            self._put(batch.changes, now)
            parts = self._partitions
            for p in batch.partitions:
                parts.setdefault(p, _Partition())
            for p, (offset, count, newest) in batch.records.items():
                part = parts.setdefault(p, _Partition())
                part.offset = offset
                part.records += count
                part.at_end = False
                if newest is not None and (part.newest is None or newest > part.newest):
                    part.newest = newest
            for p, high in batch.highs.items():
                parts.setdefault(p, _Partition()).high = high
            for p, end in batch.ends.items():
                part = parts.setdefault(p, _Partition())
                part.at_end = True
                part.offset = max(part.offset, end)
                part.high = max(part.high or 0, end)
            if batch.records:
                self.records += sum(count for _, count, _ in batch.records.values())
                self.batches += 1
                self.last_applied_at = now
            if batch.errors:
                self._client_errors(batch.errors)
            ready = self._ready
            if ready is not None and not ready.done() and all(p.at_end for p in parts.values()):
                assert self._started is not None
                self.catch_up_seconds = time.monotonic() - self._started
                log.info(
                    "state view %r: read changelog %s to its end (%d partitions): %d keys "
                    "from %d records in %.2fs",
                    self.name,
                    self.topic,
                    len(parts),
                    len(self._snapshot),
                    self.records,
                    self.catch_up_seconds,
                )
                ready.set_result(None)
        finally:
            self._slots.release()

    def _put(
        self, changes: Mapping[Hashable, tuple[Entry | None, float | None]], now: float
    ) -> None:
        """Apply decoded records as one version: entries as recorded, tombstones
        deleting their key."""
        if not changes:
            return
        with self._lock:
            snap = self._snapshot
            assert isinstance(snap, _ViewSnapshot)
            recorded = max((e.version for e, _ in changes.values() if e is not None), default=0)
            # never behind a version the writers recorded, so entry versions <= view version
            version = max(snap.version + 1, recorded)
            wall = snap.wall_time
            assert isinstance(snap._entries, immutables.Map)
            entries = snap._entries.mutate()
            tombstones = snap._tombstones.mutate()
            applied = snap.applied.mutate()
            out: list[StateChange] = []
            for key, (entry, timestamp) in changes.items():
                old = entries.get(key)
                if entry is None:
                    if old is None:
                        continue
                    when = now if timestamp is None else timestamp
                    wall = max(wall, when)
                    del entries[key]
                    applied.pop(key, None)
                    tombstones[key] = version
                    out.append(StateChange(key, old.value, None, version, None, when, True))
                    continue
                wall = max(wall, entry.wall_time)
                entries[key] = entry
                applied[key] = version
                tombstones.pop(key, None)
                out.append(
                    StateChange(
                        key,
                        None if old is None else old.value,
                        entry.value,
                        version,
                        entry.event_time,
                        entry.wall_time,
                    )
                )
            if not out:
                return
            new = _ViewSnapshot(
                self.name,
                version,
                entries.finish(),
                tombstones.finish(),
                wall,
                applied.finish(),
            )
            self._snapshot = new
        self._changes.on_next(new)
        self._updates.on_next(out)

    def _client_errors(self, errors: list[str]) -> None:
        self.client_errors += len(errors)
        self.last_client_error = errors[-1]
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning(
                "state view %r: changelog %s: %s (the client keeps reconnecting)",
                self.name,
                self.topic,
                errors[-1],
            )

    def _fail(self, error: BaseException) -> None:
        self.error = f"{type(error).__name__}: {error}"
        ready = self._ready
        if ready is not None and not ready.done():
            if not isinstance(error, StateError):
                error = StateError(f"state view {self.name!r}: {self.error}")
            ready.set_exception(error)
        else:
            log.error(
                "state view %r stopped following changelog %s: %s",
                self.name,
                self.topic,
                self.error,
            )

    def _end(self) -> None:
        ended = self._ended
        if ended is not None and not ended.done():
            ended.set_result(None)
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_exception(StateError(f"state view {self.name!r} was closed"))

    def __repr__(self) -> str:
        return f"<StateView {self.name!r} of {self.topic!r} v{self.version} keys={len(self)}>"


def state_view(
    store: str,
    *,
    group_id: str,
    bootstrap_servers: str | None = None,
    config: Mapping[str, Any] | None = None,
    codec: CodecName | Codec = "pickle",
    name: str | None = None,
    chunk: int = 2048,
) -> StateView:
    """A :class:`StateView` of durable store ``store`` as written by the workers of
    consumer group ``group_id`` (its changelog ``rxagent-changelog.<group>.<store>``).

    ``bootstrap_servers`` (or ``bootstrap.servers`` in ``config``) and the other
    client settings in ``config`` (security; ``"${NAME}"`` values are read from the
    environment) are those of the workers' Kafka source; ``codec`` the one their
    store uses. Nothing connects until :meth:`StateView.start`::

        async with state_view("totals", group_id="order-totals",
                              bootstrap_servers="127.0.0.1:9092") as totals:
            print(totals.context(), totals.describe()["lag"])
    """
    settings = dict(config or {})
    if bootstrap_servers is not None:
        settings["bootstrap.servers"] = bootstrap_servers
    if not group_id:
        raise ConfigurationError(f"state view of {store!r}: group_id is empty")
    return StateView(
        store,
        topic=changelog_topic(group_id, store),
        config=settings,
        codec=codec,
        name=name,
        group_id=group_id,
        chunk=chunk,
    )
