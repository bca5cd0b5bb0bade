"""The Kafka source's consumer thread: ``ConsumerThread`` (fetch, pause and resume,
rebalance callbacks, commits, dead letters) and ``PartitionRows``, one partition's messages of
a hop decoded into columns (on the loop, as they are emitted).

Private to :mod:`rxagent.kafka.source`, whose docstring states the guarantees this
code keeps. The consumer knows its source only through :class:`ConsumerSettings`
(what it is told, fixed at start) and :class:`ConsumerStats` (what it reports:
counters, lag, health), and never imports it; it hands batches to the pipeline's
``Emitter`` and has the pipeline's context restore and release partitions' state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import operator
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..events import Event, Position
from ..exceptions import ConfigurationError, DecodeError
from ..sources.base import Emitter
from ..sources.health import SourceHealth
from .common import KafkaPartition, client_config, resolve_config

if TYPE_CHECKING:
    from .transaction import KafkaTransactions

__all__ = [
    "ConsumerSettings",
    "ConsumerStats",
    "ConsumerThread",
    "DaemonThread",
    "PartitionRows",
    "Runs",
]

log = logging.getLogger("rxagent")

#: Commit errors saying our membership or group is not known (any more) to the broker.
_GROUP_GONE = frozenset({25, 22, 16, 15, 69})  # UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION,
# NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, GROUP_ID_NOT_FOUND
_T = TypeVar("_T")


def _column(column: list[_T]) -> list[_T] | None:
    """``None`` for a column of nothing but ``None`` (counted in C), as batches expect."""
    nones: int = column.count(None)  # type: ignore[arg-type]
    return None if nones == len(column) else column


def _slice(column: Sequence[_T] | None, start: int, end: int) -> list[_T] | None:
    return None if column is None else _column(list(column[start:end]))


def _decode_letting_go(
    decode: Callable[[bytes], Any],
    raws: list[Any],
    messages: list[Any],
    values: list[Any],
    none_raises: bool = False,
) -> None:
    """Append ``decode`` of each of ``raws`` to ``values`` and take one message out of
    ``messages`` (same length) per value decoded, first to last, in C: each message
    is freed as the next value is made. If ``decode`` raises at row ``i``, ``values``
    holds the first ``i`` values and ``messages`` the messages from row ``i`` on, in
    order. A ``None`` raw (a tombstone) stays ``None``: ``none_raises`` says ``decode``
    raises for one (the decoders the source builds), so no pass looks for them first;
    the rows from a tombstone on are decoded again, tombstones kept as ``None``."""
    if not none_raises and raws.count(None):
        decode = _keep_none(decode)
    messages.reverse()
    try:
        rest = raws
        while True:
            # zip asks for the next value before it takes the next message: a row that
            # raises keeps its message; zip reuses its result tuple (no allocation); not
            # strict: it stops when the values end, before popping the emptied list
            # (``starmap`` calls ``pop()``: no comparison with a sentinel per message)
            taken = itertools.starmap(messages.pop, itertools.repeat(()))
            try:
                values.extend(map(_first, zip(map(decode, rest), taken, strict=False)))
                return
            except Exception:
                if not none_raises or raws[len(values)] is not None:
                    raise
            # a tombstone: the rest with tombstones kept as None
            decode, none_raises = _keep_none(decode), False
            rest = raws[len(values) :]
    finally:
        messages.reverse()


def _keep_none(decode: Callable[[bytes], Any]) -> Callable[[bytes | None], Any]:
    return lambda raw: None if raw is None else decode(raw)


_first = operator.itemgetter(0)


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """What the consumer thread is told of its source, fixed when the source starts
    (the source's options of the same names: :class:`rxagent.kafka.KafkaSource`)."""

    name: str
    topics: list[str]
    group_id: str
    #: librdkafka settings, ``"${NAME}"`` values not resolved yet
    config: Mapping[str, Any]
    assign: bool
    #: while paused (or unattended), poll at least this often (seconds)
    keepalive: float
    revoke_timeout: float
    close_timeout: float
    auth_retries: int | None
    dead_letter_topic: str | None
    #: exactly-once: the source's transactional producer (None: at least once)
    transactions: KafkaTransactions | None
    decode_value: Callable[[bytes], Any]
    #: ``decode_value`` raises for ``None`` (a tombstone; the decoders the source builds),
    #: or returns None: no pass looks for tombstones before decoding
    none_raises: bool
    decode_key: Callable[[bytes], Hashable]
    #: ``decode_key`` over a column of keys
    decode_keys: Callable[[list[bytes | None]], list[Hashable] | None]
    read_keys: bool
    read_timestamps: bool
    read_headers: bool
    #: the flow limits bytes in flight: rows carry their values' raw size
    count_bytes: bool


@dataclass(slots=True)
class ConsumerStats:
    """What the consumer thread reports: counters, lag and health, written on the
    consumer thread (and the loop) and read by the source's ``describe()``."""

    emitted: int = 0
    dead_lettered: int = 0
    commits: int = 0
    pauses: int = 0
    assignments: int = 0
    revocations: int = 0
    #: seconds the last revoke took (release, checkpoint, commit), or None
    last_revoke_seconds: float | None = None
    outages: int = 0
    #: partitions whose state is being restored now (0: none)
    restoring: int = 0
    #: per partition, messages behind its high watermark when last read
    lag: dict[KafkaPartition, int] = field(default_factory=dict)
    #: set while librdkafka reports every broker down (a wall-clock time, epoch seconds)
    down_since: float | None = None
    #: connected, outage, auth refused, lost assignment (rxagent.sources.health)
    health: SourceHealth = field(default_factory=SourceHealth)
    auth_refusals: int = 0
    #: times the source gave up its assignment and subscribed again (group or topic gone)
    rejoins: int = 0
    #: polls the consumer thread made on its own while the loop was blocked
    unattended_polls: int = 0
    #: batches the loop read itself (fetched already; ``assign=True`` only)
    loop_reads: int = 0
    #: batches read on the consumer thread (it waited for them, or reads there)
    thread_reads: int = 0


#: A hop's messages by partition, in runs (decoded when emitted: :meth:`ConsumerThread.emit`)
Runs = list[tuple[KafkaPartition, list[Any]]]


class PartitionRows:
    """One partition's messages of one hop, decoded, in columns."""

    __slots__ = (
        "bad",
        "end",
        "headers",
        "keys",
        "nbytes",
        "partition",
        "positions",
        "times",
        "values",
    )

    def __init__(self, partition: KafkaPartition) -> None:
        self.partition = partition
        self.values: list[Any] = []
        # ``None`` for a column with nothing in it
        self.keys: list[Hashable] | None = None
        self.times: list[float | None] | None = None
        self.positions: Sequence[int] = ()
        self.headers: list[Mapping[str, Any] | None] | None = None
        # (row index it precedes, offset, raw message, error)
        self.bad: list[tuple[int, Any, BaseException]] = []
        self.nbytes = 0  # the values' raw size, charged against the flow's byte credit
        self.end = 0  # the offset after the run's last message, good or bad


class EpochOffsets(list[Any]):
    """Offsets to commit, computed by the loop while the assignment was ``epoch``."""

    epoch = 0


def epoch_offsets(offsets: list[Any], epoch: int) -> EpochOffsets:
    result = EpochOffsets(offsets)
    result.epoch = epoch
    return result


#: seconds the consumer's own close (final commit, leaving the group) may take beyond
#: ``close_timeout`` before the source stops without it
_CLOSE_GRACE = 10.0


class DaemonThread(concurrent.futures.Executor):
    """An executor of one daemon thread: what the consumer runs its calls on.

    A ``ThreadPoolExecutor``'s threads are joined when the interpreter exits, so a
    librdkafka call that never returns would keep the process from exiting; a daemon
    thread does not."""

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._shutdown = False
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(
        self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[_T]:
        """Run ``fn(*args, **kwargs)`` on the thread, after what was submitted before."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; the thread ends after what was submitted (never waited for)."""
        self._shutdown = True
        self._work.put(None)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A shielded transaction's error is raised to its caller; if that caller was
    cancelled meanwhile, it is recorded (the source's next call raises it) only."""
    if not task.cancelled():
        task.exception()


class ConsumerThread:
    """The confluent-kafka consumer and everything that runs on its thread.

    Methods named ``*_`` run on the loop; the others on the consumer thread,
    through :meth:`call`, except :meth:`try_fetch`, the loop's read of what is
    fetched already (only without a group, under :attr:`lock`). Rebalance callbacks
    run on the consumer thread and ask the loop (which owns the flow) what to commit.
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        stats: ConsumerStats,
        out: Emitter,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.out = out
        self.loop = loop
        self.executor = DaemonThread(f"rxagent-kafka-{settings.name}")
        self.consumer: Any = None
        self.producer: Any = None  # for the dead-letter topic
        # consumer thread state
        self.assigned: set[KafkaPartition] = set()
        self.paused = False
        self.eof: set[KafkaPartition] = set()
        # next offset to hand to the loop, per partition (what a resume seeks back to)
        self.delivered: dict[KafkaPartition, int] = {}
        self.stash: list[Any] = []
        # the topic of every message when there is one (a "^..." name is a pattern)
        only = settings.topics[0]
        self.topic = only if len(settings.topics) == 1 and not only.startswith("^") else None
        self.closing = False
        strategy = str(settings.config.get("partition.assignment.strategy", ""))
        self.cooperative = "cooperative" in strategy.lower()
        # loop state
        self.committed: dict[KafkaPartition, int] = {}
        self.emitted_next: dict[KafkaPartition, int] = {}
        self.progress = asyncio.Event()
        self.remove_listener: Callable[[], None] | None = None
        # health, on the consumer thread: when the last call from the loop began (the
        # watchdog polls, paused, when the loop has not called for a while), the next
        # metadata probe, and why the group's state must be checked with the brokers
        self.last_call = time.monotonic()
        self.next_probe = 0.0
        self.check: str | None = None
        self.missing_logged = False
        self.watch_queued = False
        self.stopped = threading.Event()
        #: bumped whenever partitions are released: offsets the loop computed before
        #: are never committed (the partitions may be someone else's, or a new group's)
        self.epoch = 0
        #: set on librdkafka's thread (authentication refused too often): raised by
        #: the next call from the loop, failing the pipeline
        self.failure: Exception | None = None
        #: exactly-once: the source's transactions (None: at least once), and the lock
        #: that keeps one transaction's watermarks, records and commit together
        self.txn = settings.transactions
        self.txn_lock: asyncio.Lock | None = None
        #: held by whoever calls the consumer: the consumer thread for a whole call, the
        #: loop only for a read that does not wait (:meth:`try_fetch`)
        self.lock = threading.Lock()
        #: whether the loop may read what is fetched already itself: only without a group
        #: (no rebalance callback can run on the loop, where it could not wait for it)
        #: and without callbacks of the user's that may block (OAuth token refreshes)
        self.direct = settings.assign and self.txn is None and "oauth_cb" not in settings.config

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the consumer's own thread (librdkafka's callbacks need it) and await
        its result from the loop."""
        return await self.loop.run_in_executor(self.executor, self._locked, fn, *args)

    def _locked(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self.lock:
            return fn(*args)

    # -- consumer thread ----------------------------------------------------------------

    def open(self) -> None:
        """Create the consumer (and the dead-letter producer and transactions, when configured) and
        subscribe to or assign the topics; runs on the consumer thread."""
        from confluent_kafka import Consumer, TopicPartition

        settings = self.settings
        config = resolve_config(settings.config, owner=f"kafka source {settings.name!r}")
        config.setdefault("error_cb", self._on_error)
        config.setdefault("on_commit", self._on_commit)
        self.consumer = consumer = Consumer(config)
        if self.txn is not None:
            # before the first assignment: fences a previous incarnation of this
            # worker and aborts its open transaction
            self.txn.open(config)
        if settings.dead_letter_topic is not None:
            from confluent_kafka import Producer

            producer_config = client_config(config)
            self.producer = Producer(producer_config)
        # metadata first: the first assign then starts fetching at once (0.55 s -> 0.1 s here)
        metadata = consumer.list_topics(timeout=10)
        missing = [t for t in settings.topics if t not in metadata.topics]
        if settings.assign:
            parts: list[Any] = []
            for topic in settings.topics:
                if topic in missing:
                    raise ConfigurationError(
                        f"kafka source {settings.name!r}: topic {topic!r} does not exist"
                    )
                for p in sorted(metadata.topics[topic].partitions):
                    parts.append(TopicPartition(topic, p))
            consumer.assign(parts)
            self.assigned = {KafkaPartition(tp.topic, tp.partition) for tp in parts}
            self._restore(sorted(self.assigned))
            # no group to join: the metadata answered and the partitions are ours
            self.stats.health.set("connected")
        else:
            self._subscribe()
        threading.Thread(
            target=self._watch, name=f"rxagent-kafka-watch-{settings.name}", daemon=True
        ).start()

    def _subscribe(self) -> None:
        self.consumer.subscribe(
            self.settings.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- staying in the group whatever the loop does ------------------------------------

    def _watch(self) -> None:
        """A thread of its own: when the loop has not called the consumer for a while
        (a user function blocks it), poll, paused, on the consumer thread, so
        ``max.poll.interval.ms`` never expires and the group keeps us."""
        interval = self.settings.keepalive
        while not self.stopped.wait(interval / 2):
            if self.watch_queued or time.monotonic() - self.last_call < interval:
                continue
            self.watch_queued = True
            try:
                self.executor.submit(self._locked, self._unattended)
            except RuntimeError:  # the executor is shut down
                return

    def _unattended(self) -> None:
        self.watch_queued = False
        if self.closing or self.consumer is None:
            return
        if time.monotonic() - self.last_call < self.settings.keepalive:
            return  # the loop called meanwhile
        self.stats.unattended_polls += 1
        self._poll_paused()
        self._probe()

    def _poll_paused(self) -> None:
        if not self.paused:
            self.paused = True
            self.stats.pauses += 1
            self._pause_all()
        message = self.consumer.poll(0)
        if message is not None:
            # cannot happen while everything is paused; kept for the next credit if it does
            self.stash.append(message)

    # -- health: outages decided by the brokers, a group or topic that vanished ------------

    def _probe(self) -> None:
        """During an outage, or when the group's state may be gone: ask the brokers
        (a metadata request, at most once a second). Only their answer ends an
        outage, never a message already fetched before it."""
        settings, stats = self.settings, self.stats
        if stats.down_since is None and self.check is None:
            return
        now = time.monotonic()
        if now < self.next_probe:
            return
        self.next_probe = now + 1.0
        from confluent_kafka import KafkaException

        try:
            metadata = self.consumer.list_topics(timeout=1.0)
        except KafkaException as error:
            log.debug("kafka source %r: metadata probe: %s", settings.name, error)
            return
        if stats.down_since is not None:
            self._broker_up("a metadata request was answered")
        if self.check is not None:
            self._check_state(metadata)

    def _check_state(self, metadata: Any) -> None:
        """After an outage or a failed commit: is what we hold still there? A broker
        restarted without its data has no topic (or an empty one) and no group: then
        resubscribe, so partitions start again from the group's committed offsets."""
        settings, stats = self.settings, self.stats
        reason = self.check
        gone = [
            t
            for t in settings.topics
            if not t.startswith("^")
            and (t not in metadata.topics or not metadata.topics[t].partitions)
        ]
        if gone:
            why = f"topic {', '.join(map(repr, gone))} is gone from the brokers"
            stats.health.set("lost_assignment", error=why)
            if not self.missing_logged:
                self.missing_logged = True
                log.warning(
                    "kafka source %r: %s (after %s; a broker restarted without its data?); "
                    "waiting for it to exist again, then rejoining group %r",
                    settings.name,
                    why,
                    reason,
                    settings.group_id,
                )
            self.check = f"{reason}; {why}"
            return
        self.missing_logged = False
        lost = self._lost_state()
        self.check = None
        if lost is None and reason is not None and "topic" not in reason:
            stats.health.set("connected")
            return
        self._rejoin(lost or str(reason))

    def _lost_state(self) -> str | None:
        """Why the partitions we hold cannot go on where they are, or None."""
        from confluent_kafka import KafkaException, TopicPartition

        held = sorted(self.assigned)
        for p in held:
            try:
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(p.topic, p.partition), timeout=2.0, cached=False
                )
            except KafkaException:
                continue
            delivered = self.delivered.get(p)
            if delivered is not None and high < delivered:
                return (
                    f"partition {p} ends at offset {high}, before offset {delivered} already "
                    "read (the topic was deleted and created again)"
                )
        mine = {p: o for p, o in list(self.committed.items()) if o >= 0 and p in self.assigned}
        if mine and not self.settings.assign:
            try:
                theirs = self.consumer.committed(
                    [TopicPartition(p.topic, p.partition) for p in mine], timeout=2.0
                )
            except KafkaException:
                return None
            if any(tp.offset < 0 for tp in theirs):
                return f"group {self.settings.group_id!r} lost its committed offsets"
        return None

    def _rejoin(self, why: str) -> None:
        """Give up the assignment and subscribe again (a fresh one, from the group's
        committed offsets); with ``assign=True`` there is no group to rejoin: fail."""
        from confluent_kafka import KafkaException

        settings, stats = self.settings, self.stats
        stats.rejoins += 1
        stats.health.set("lost_assignment", error=why)
        if settings.assign:
            raise KafkaException(
                f"kafka source {settings.name!r}: {why}; with assign=True the source cannot "
                "rejoin a group: restart it"
            )
        log.warning(
            "kafka source %r: %s; rejoining group %r (partitions start again from the "
            "group's committed offsets)",
            settings.name,
            why,
            settings.group_id,
        )
        held = [(p.topic, p.partition) for p in self.assigned]
        self.consumer.unsubscribe()
        if self.assigned:
            # what we held is not ours any more: released as lost (nothing committed)
            from confluent_kafka import TopicPartition

            self._release(
                self.consumer, [TopicPartition(t, n) for t, n in held], lost=True, unassign=False
            )
        self.paused = False
        self.stash.clear()
        self._subscribe()

    def fetch(self, n: int, timeout: float, commits: list[Any] | None) -> tuple[Runs, bool]:
        """Up to ``n`` messages, by partition; and whether every partition is read to its end
        (decided here, with the messages, so nothing read is left behind at the end)."""
        consumer = self.consumer
        self.last_call = time.monotonic()
        if self.failure is not None:
            raise self.failure
        self._probe()
        if commits:
            self._commit_checked(commits)
        if self.paused:
            self._resume()
        messages = self.stash[:n]
        del self.stash[:n]
        if not messages:
            first = consumer.poll(timeout)
            if first is None:
                return [], self.at_end()
            messages.append(first)
        if len(messages) < n:
            messages.extend(consumer.consume(n - len(messages), 0))
        self.stats.thread_reads += 1
        # (a message does not end an outage: it may come from what was fetched before it)
        return self._runs(messages), self.at_end()

    def try_fetch(self, n: int, commits: list[Any] | None) -> tuple[Runs, bool] | None:
        """On the loop: up to ``n`` messages librdkafka has fetched already, by partition,
        without waiting (``consume(n, 0)``), and whether every partition is read to its
        end; ``commits`` are committed (asynchronously) first.

        ``None`` when the consumer thread must do it (:meth:`fetch`, with the same
        ``commits``): nothing is fetched yet (it waits there), the consumer is paused,
        probing the brokers or busy on its thread, or reads may not happen on the loop
        (:attr:`direct`). Reading here saves the thread hop of every batch and, above
        all, the two threads taking turns at the interpreter lock: measured, see
        docs/architecture.md ("Kafka: reads on the loop").
        """
        if not self.direct or not self.lock.acquire(blocking=False):
            return None
        try:
            # (read under the lock: the watchdog pauses and stashes on the thread)
            if (
                self.paused
                or self.stash
                or self.failure is not None
                or self.stats.down_since is not None
                or self.check is not None
            ):
                return None
            messages = self.consumer.consume(n, 0)
            if not messages and not self.at_end():
                return None  # wait on the consumer thread
            self.last_call = time.monotonic()
            self.stats.loop_reads += 1
            if commits:
                self._commit_checked(commits)
            return self._runs(messages), self.at_end()
        finally:
            self.lock.release()

    def keepalive(self, commits: list[Any] | None) -> None:
        """No credit: pause what is assigned and poll, so the group keeps us."""
        self.last_call = time.monotonic()
        if self.failure is not None:
            raise self.failure
        self._probe()
        if commits:
            self._commit_checked(commits)
        self._poll_paused()

    def _pause_all(self) -> None:
        from confluent_kafka import TopicPartition

        parts = [TopicPartition(p.topic, p.partition) for p in self.assigned]
        if parts:
            self.consumer.pause(parts)

    def _resume(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        self.paused = False
        parts = [TopicPartition(p.topic, p.partition) for p in self.assigned]
        if not parts:
            return
        self.consumer.resume(parts)
        for p in self.assigned:
            offset = self.delivered.get(p)
            if offset is None:
                continue
            try:
                self.consumer.seek(TopicPartition(p.topic, p.partition, offset))
            except KafkaException as error:
                # not fetching yet (just assigned): it starts from the committed offset,
                # and duplicates are filtered by offset in _runs
                log.debug("kafka source %r: seek %s@%d: %s", self.settings.name, p, offset, error)

    def _runs(self, messages: list[Any]) -> Runs:
        """Split a hop's messages by partition (their values are decoded when emitted,
        on the loop: see :meth:`emit`).

        The per-message work is kept in C where possible (``map`` over the unbound
        ``Message`` methods): this runs for every message, under the GIL the
        pipeline needs too.
        """
        from confluent_kafka import KafkaError, KafkaException, Message

        # the last word of this hop per partition: a message (False) or its end (True)
        at_end: dict[Any, bool] = {}
        # a KafkaError is true, None false: one pass in C that stops at the first error
        # (not ``errors.count(None)``: a KafkaError compared with None sets a TypeError)
        if any(map(Message.error, messages)):
            good = []
            for message in messages:
                error = message.error()
                if error is None:
                    good.append(message)
                    at_end[message.topic(), message.partition()] = False
                elif self._on_message_error(message, KafkaError, KafkaException):
                    at_end[message.topic(), message.partition()] = True
            messages = good
        # consume() returns runs of one partition: group the runs, in C
        topic = self.topic
        if topic is None:
            ids: list[Any] = list(
                zip(map(Message.topic, messages), map(Message.partition, messages), strict=True)
            )
        else:
            ids = list(map(Message.partition, messages))
        runs: dict[Any, list[Any]] = {}
        if ids and ids.count(ids[0]) == len(ids):
            runs[ids[0]] = messages
        else:
            start = 0
            for ident, run in itertools.groupby(ids):
                end = start + sum(1 for _ in run)
                if ident in runs:
                    runs[ident].extend(messages[start:end])
                else:
                    runs[ident] = messages[start:end]
                start = end
        for ident, end in at_end.items():
            p = KafkaPartition(*ident)
            if end:
                self.eof.add(p)
            else:
                self.eof.discard(p)
        groups = []
        for ident, batch in runs.items():
            p = KafkaPartition(topic, ident) if topic is not None else KafkaPartition(*ident)
            if not at_end:  # no errors in this hop: a message is its last word
                self.eof.discard(p)
            if p not in self.assigned:
                continue  # revoked while this hop ran: its new owner reads it
            expected = self.delivered.get(p)
            if expected is not None and batch[0].offset() < expected:
                # fetched again after a pause: already handed over
                batch = [m for m in batch if m.offset() >= expected]
                if not batch:
                    continue
            self.delivered[p] = batch[-1].offset() + 1
            self._note_lag(p, batch[-1])
            groups.append((p, batch))
        return groups

    def _note_lag(self, p: KafkaPartition, last: Any) -> None:
        """How far this partition's last message is behind its high watermark, from
        the watermarks librdkafka caches with each fetch (no broker round trip)."""
        from confluent_kafka import TopicPartition

        try:
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(p.topic, p.partition), cached=True
            )
        except Exception:  # not known yet: keep the last figure
            return
        if high is not None and high >= 0:
            self.stats.lag[p] = max(0, high - last.offset() - 1)

    def _columns(self, p: KafkaPartition, batch: list[Any]) -> PartitionRows:
        """One partition's run of messages decoded into columns; ``batch`` is emptied.

        The metadata columns are read first, each in one pass in C (``map`` over
        the unbound ``Message`` methods); then the values are decoded as the
        messages are let go, one for one (``_decode_letting_go``). Decoding first
        and letting the messages go after would hold both a batch of messages and a
        batch of decoded values at once: twice the collector's young collections
        (its count rises with every container made and falls as one is freed), and
        twice its full ones. Row by row, keeping the bad messages for their dead
        letters, only when something does not decode.
        """
        from confluent_kafka import Message

        settings = self.settings
        rows = PartitionRows(p)
        n = len(batch)
        first, last = batch[0].offset(), batch[-1].offset()
        rows.end = last + 1
        raws: list[Any] = list(map(Message.value, batch))
        raw_keys: list[Any] | None = list(map(Message.key, batch)) if settings.read_keys else None
        # (a message's len() is its value's: 0 for a tombstone)
        nbytes = sum(map(len, batch)) if settings.count_bytes else 0
        # offsets of a run are increasing: consecutive ones (no compaction or transaction
        # markers in between) are a range, with no int object per message
        positions: Sequence[int] = (
            range(first, last + 1) if last - first + 1 == n else list(map(Message.offset, batch))  # type: ignore[arg-type]
        )
        times: list[float | None] | None = None
        if settings.read_timestamps:
            # one (kind, ms) tuple per message, freed at once; ms is -1 where there is
            # none (kind 0): one look at the smallest (in C) finds those, or pre-1970 ones
            seconds: list[float] = [ms / 1000 for _, ms in map(Message.timestamp, batch)]
            if min(seconds) >= 0:
                times = seconds  # type: ignore[assignment]  # (list is invariant)
            else:
                stamps = map(Message.timestamp, batch)
                times = _column([None if kind == 0 else ms / 1000 for kind, ms in stamps])
        headers: list[Mapping[str, Any] | None] | None = None
        if settings.read_headers:
            found = list(map(Message.headers, batch))
            if found.count(None) != n:
                headers = [None if h is None else dict(h) for h in found]
        values: list[Any] = []
        keys: list[Hashable] | None = None
        try:
            # the whole batch at once
            if raw_keys is not None:
                keys = settings.decode_keys(raw_keys)
            _decode_letting_go(settings.decode_value, raws, batch, values, settings.none_raises)
        except Exception:
            # the first len(values) rows decoded and their messages are gone; the
            # messages of the others are left in ``batch``, in order
            return self._columns_slowly(
                rows, raws, raw_keys, batch, values, keys, (positions, times, headers), nbytes
            )
        rows.values = values
        rows.keys = keys
        rows.positions = positions
        rows.times = times
        rows.headers = headers
        rows.nbytes = nbytes
        return rows

    def _columns_slowly(
        self,
        rows: PartitionRows,
        raws: list[Any],
        raw_keys: list[Any] | None,
        rest: list[Any],
        decoded: list[Any],
        keys: list[Hashable] | None,
        columns: tuple[Sequence[int], list[float | None] | None, list[Any] | None],
        nbytes: int,
    ) -> PartitionRows:
        """Row by row after a failure: rows that do not decode go to ``rows.bad`` with
        their message (for the dead letter). ``decoded``: the values of the first
        rows, decoded already (with ``keys``, the whole key column, when it is not
        None); ``rest``: the messages of the rows after them."""
        settings = self.settings
        decode_value, decode_key = settings.decode_value, settings.decode_key
        done = len(decoded)
        good: list[int] = list(range(done))
        values: list[Any] = decoded
        key_list: list[Hashable] = [] if keys is None else [keys[i] for i in good]
        for i, message in enumerate(rest, done):
            try:
                value = None if raws[i] is None else decode_value(raws[i])
                if keys is not None:
                    key = keys[i]
                elif raw_keys is None or raw_keys[i] is None:
                    key = None
                else:
                    key = decode_key(raw_keys[i])
            except Exception as failure:
                rows.bad.append((len(values), message, failure))
                continue
            values.append(value)
            key_list.append(key)
            good.append(i)
        if not values:
            return rows
        positions, times, headers = columns
        rows.values = values
        rows.keys = _column(key_list)
        rows.positions = [positions[i] for i in good]
        rows.times = None if times is None else _column([times[i] for i in good])
        rows.headers = None if headers is None else _column([headers[i] for i in good])
        rows.nbytes = nbytes * len(values) // len(raws)
        return rows

    def _on_message_error(self, message: Any, kafka_error: Any, kafka_exception: Any) -> bool:
        """True for the end of a partition; raises a fatal error; logs the others."""
        error = message.error()
        if error.code() == kafka_error._PARTITION_EOF:
            return True
        if error.fatal():
            raise kafka_exception(error)
        self._on_error(error)
        return False

    def _commit_checked(self, offsets: list[Any]) -> None:
        """Commit, unless the brokers are down or the group's state is being checked:
        a commit must never land in a group that a broker restarted without its data
        created afresh (its partitions would start past what they hold). Held back
        commits are due again with the next watermark."""
        if getattr(offsets, "epoch", self.epoch) != self.epoch:
            log.debug(
                "kafka source %r: offsets of an earlier assignment dropped", self.settings.name
            )
            offsets = []
        elif self.stats.down_since is None and self.check is None:
            self._commit(offsets, asynchronous=True)
            return
        held = [(KafkaPartition(tp.topic, tp.partition), tp.offset) for tp in offsets]
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to retry
            self.loop.call_soon_threadsafe(self.uncommit_, held)

    def _commit(self, offsets: list[Any], *, asynchronous: bool) -> None:
        from confluent_kafka import KafkaException

        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
            self.stats.commits += 1
        except KafkaException as error:
            log.warning("kafka source %r: commit failed: %s", self.settings.name, error)

    def _on_error(self, error: Any) -> None:
        """librdkafka's error events: none fails the pipeline (see the module docstring)."""
        from confluent_kafka import KafkaError

        code = error.code()
        if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            self._auth_refused(error)
        elif code == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down(error)
        elif code in (KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT):
            # librdkafka reconnects by itself; during an outage every attempt reports one
            # (the outage is logged once); otherwise one broker's hiccup, or a restart:
            # commits wait until the brokers answer and the group's state is checked
            if self.check is None:
                self.check = "a broker connection failed"
                self.next_probe = 0.0
            log.log(
                logging.DEBUG if self.stats.down_since is not None else logging.INFO,
                "kafka source %r: %s",
                self.settings.name,
                error,
            )
        else:
            log.warning("kafka source %r: %s", self.settings.name, error)

    def _auth_refused(self, error: Any) -> None:
        """The brokers refused our credentials: ERROR at once; past ``auth_retries``
        refusals the source fails (the next consumer call raises)."""
        settings, stats = self.settings, self.stats
        stats.auth_refusals += 1
        stats.health.set("auth_refused", attempt=stats.auth_refusals, error=str(error))
        retries = settings.auth_retries
        if stats.auth_refusals == 1:
            log.error(
                "kafka source %r: the brokers refused the credentials (%s): check the SASL "
                "settings; %s",
                settings.name,
                error,
                "retrying forever (auth_retries=None)"
                if retries is None
                else f"the source fails after {retries} more refusal{'' if retries == 1 else 's'} "
                f"(auth_retries={retries})",
            )
        if retries is not None and stats.auth_refusals > retries and self.failure is None:
            from confluent_kafka import KafkaException

            self.failure = KafkaException(
                f"kafka source {settings.name!r}: the brokers refused the credentials "
                f"{stats.auth_refusals} times ({error}); check the SASL settings "
                f"(auth_retries={retries}; auth_retries=None retries forever)"
            )

    def _broker_down(self, error: Any) -> None:
        settings, stats = self.settings, self.stats
        if stats.down_since is not None:
            return
        stats.down_since = time.time()
        stats.outages += 1
        stats.health.set("outage", attempt=stats.outages, error=str(error))
        log.warning(
            "kafka source %r: %s; the consumer keeps reconnecting and the pipeline keeps "
            "running (commits wait for the brokers)",
            settings.name,
            error,
        )

    def _broker_up(self, how: str) -> None:
        settings, stats = self.settings, self.stats
        if stats.down_since is None:
            return
        outage = time.time() - stats.down_since
        stats.down_since = None
        stats.health.set("connected")
        # the brokers may have restarted without their data: check the group's state
        self.check = self.check or f"an outage of {outage:.1f}s"
        self.next_probe = 0.0
        log.warning(
            "kafka source %r: brokers reachable again (%s) after %.1fs", settings.name, how, outage
        )

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        failed = [
            (KafkaPartition(tp.topic, tp.partition), tp.offset)
            for tp in partitions or ()
            if error is not None or tp.error is not None
        ]
        if failed or error is not None:
            problem = (
                error if error is not None else next(tp.error for tp in partitions if tp.error)
            )
            log.warning(
                "kafka source %r: commit failed (retried with the next one): %s",
                self.settings.name,
                problem,
            )
            if problem.code() in _GROUP_GONE and self.check is None:
                # the group may be gone (a broker restarted without its data): check
                self.check = f"a commit failed with {problem.name()}"
            # the next due_commits() offers these watermarks again
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to retry
                self.loop.call_soon_threadsafe(self.uncommit_, failed)
        elif self.stats.down_since is not None:
            self._broker_up("a commit succeeded")

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.stats.assignments += 1
        self._broker_up("partitions assigned")
        self.stats.health.set("connected")
        if self.cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        new = {KafkaPartition(tp.topic, tp.partition) for tp in partitions}
        self.assigned = self.assigned | new  # rebound, never changed in place: the loop reads it
        for p in new:
            # a new owner starts from the committed offset, whatever we read before
            self.delivered.pop(p, None)
            self.eof.discard(p)
        if self.paused:
            # an assign undoes a pause: apply it again to everything we hold
            self._pause_all()
        else:
            # librdkafka keeps a partition's pause across an unassign and the next
            # assign of it (a rejoin while paused, which resets ``paused``): a partition
            # we did not pause must fetch, or the source waits for it for ever
            consumer.resume(partitions)
        log.info("kafka source %r: assigned %s", self.settings.name, sorted(map(str, new)))
        # their state is restored before their first message is fetched: this thread
        # polls, and it waits here meanwhile (heartbeats go on in librdkafka's thread)
        self._restore(sorted(new))

    def _restore(self, partitions: list[KafkaPartition]) -> None:
        """On the consumer thread: have the loop restore the partitions' state, wait."""
        if not partitions:
            return
        started = time.monotonic()
        self.stats.restoring = len(partitions)

        async def restore() -> None:
            await self.out.ctx.partitions_assigned(list(partitions))

        future = asyncio.run_coroutine_threadsafe(restore(), self.loop)
        try:
            future.result()
        except Exception as error:
            # the pipeline failed (the error is recorded and logged there): read nothing
            log.debug("kafka source %r: restoring %s: %r", self.settings.name, partitions, error)
            raise
        finally:
            self.stats.restoring = 0
        seconds = time.monotonic() - started
        if seconds > 0.5:
            log.info(
                "kafka source %r: state of %s restored in %.1fs",
                self.settings.name,
                sorted(map(str, partitions)),
                seconds,
            )

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._release(consumer, partitions, lost=False)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._release(consumer, partitions, lost=True)

    def _release(
        self, consumer: Any, partitions: list[Any], *, lost: bool, unassign: bool = True
    ) -> None:
        self.stats.revocations += 1
        started = time.monotonic()
        gone = [KafkaPartition(tp.topic, tp.partition) for tp in partitions]
        # stop handing these to the loop at once (messages of this hop included)
        self.assigned = self.assigned - set(gone)
        self.epoch += 1
        # on close the events in flight had their time already (close_timeout)
        timeout = 0.0 if lost or self.closing else self.settings.revoke_timeout
        if lost and self.txn is not None:
            # our open transaction may hold what we did with them: it must not commit
            self.txn.abort(
                f"kafka source {self.settings.name!r}: partitions {sorted(map(str, gone))} were "
                "lost (the group moved them on without a revoke)"
            )
            self.failure = self.txn.failure
        future = asyncio.run_coroutine_threadsafe(self.release_(gone, timeout, lost), self.loop)
        try:
            # (exactly-once: a transaction, on a thread of its own, may take its timeout)
            offsets = future.result(timeout + 5 + (0 if self.txn is None else self.txn.timeout))
        except Exception as error:  # the loop is gone or stuck: commit nothing
            log.warning("kafka source %r: releasing %s: %r", self.settings.name, gone, error)
            offsets = []
        if offsets:
            self._commit(offsets, asynchronous=False)
        if not unassign:
            pass
        elif self.cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        for p in gone:
            self.delivered.pop(p, None)
            self.eof.discard(p)
        self.stats.last_revoke_seconds = seconds = time.monotonic() - started
        log.info(
            "kafka source %r: %s %s in %.2fs",
            self.settings.name,
            "lost" if lost else "revoked",
            sorted(map(str, gone)),
            seconds,
        )

    def close(self, offsets: list[Any]) -> None:
        """Commit ``offsets`` (if still of the current assignment), leave the group and close the
        consumer and producers; runs on the consumer thread."""
        if self.consumer is None:
            return
        if offsets and getattr(offsets, "epoch", self.epoch) == self.epoch:
            self._commit(offsets, asynchronous=False)
        self.closing = True
        self.stopped.set()
        # leaving the group runs the revoke callback: the flow is idle by now
        self.consumer.close()
        if self.producer is not None:
            self.producer.flush(5)
        if self.txn is not None:
            self.txn.close()

    # -- event loop -----------------------------------------------------------------------

    def emit(self, out: Emitter, runs: Runs) -> int:
        """Decode each partition's run and emit it as a batch (bad rows dead-lettered
        in order)."""
        used = 0
        if self.remove_listener is None:
            self.remove_listener = out.flow.on_watermark(lambda _p, _w: self.progress.set())
        for p, messages in runs:
            if p not in self.assigned:
                continue
            # decoded here, not on the consumer thread: the thread's hop is then
            # librdkafka's work alone, which runs while the loop decodes and emits
            # the hop before (the two threads do not take turns at the GIL as much)
            rows = self._columns(p, messages)
            if rows.bad:
                used += self._emit_with_bad(out, rows)
            elif rows.values:
                self._emit_rows(out, rows, 0, len(rows.values))
                used += len(rows.values)
            self.emitted_next[p] = rows.end
        self.stats.emitted += used
        return used

    def _emit_rows(self, out: Emitter, rows: PartitionRows, start: int, end: int) -> None:
        if start == 0 and end == len(rows.values):
            out.emit(
                rows.values,
                keys=rows.keys,
                times=rows.times,
                positions=rows.positions,
                headers=rows.headers,
                partition=rows.partition,
                nbytes=rows.nbytes,
            )
            return
        out.emit(
            rows.values[start:end],
            keys=_slice(rows.keys, start, end),
            times=_slice(rows.times, start, end),
            positions=rows.positions[start:end],
            headers=_slice(rows.headers, start, end),
            partition=rows.partition,
            nbytes=rows.nbytes * (end - start) // len(rows.values),
        )

    def _emit_with_bad(self, out: Emitter, rows: PartitionRows) -> int:
        start = 0
        for before, message, error in rows.bad:
            if before > start:
                self._emit_rows(out, rows, start, before)
                start = before
            self._dead_letter(out, rows.partition, message, error)
        if start < len(rows.values):
            self._emit_rows(out, rows, start, len(rows.values))
        return len(rows.values) + len(rows.bad)

    def _dead_letter(
        self, out: Emitter, p: KafkaPartition, message: Any, error: BaseException
    ) -> None:
        settings, stats = self.settings, self.stats
        offset = message.offset()
        raw = message.value()
        # a ticket of its own, so the watermark (and the commit) moves past it
        ticket = out.flow.ticket(1, p, offset, offset)
        kind, ms = message.timestamp()
        event = Event(
            raw,
            None,
            ms / 1000 if kind else None,
            Position(out.name, p, offset),
            None if message.headers() is None else dict(message.headers()),
            ticket,
        )
        problem = DecodeError(
            f"cannot decode message at {event.position}: {type(error).__name__}: {error}",
            source=out.name,
            raw=raw,
        )
        stats.dead_lettered += 1
        if self.producer is not None and settings.dead_letter_topic is not None:
            headers = [
                ("error", str(problem).encode()),
                ("stage", settings.name.encode()),
                ("topic", p.topic.encode()),
                ("partition", str(p.partition).encode()),
                ("offset", str(offset).encode()),
            ]
            try:
                self.producer.produce(
                    settings.dead_letter_topic, raw, message.key(), headers=headers
                )
                self.producer.poll(0)
            except Exception as failure:
                log.warning(
                    "kafka source %r: dead-letter topic %r: %r",
                    settings.name,
                    settings.dead_letter_topic,
                    failure,
                )
        out.ctx.dead_letter(event, settings.name, problem)

    def due_commits(self, out: Emitter) -> list[Any] | None:
        """Offsets to commit: completed watermarks that moved since the last commit."""
        from confluent_kafka import TopicPartition

        epoch = self.epoch  # read first: a release after it makes these stale
        offsets = []
        for p in list(self.emitted_next):
            if p not in self.assigned:
                continue
            mark = out.flow.watermark(p)
            if mark is not None and mark > self.committed.get(p, -1):
                self.committed[p] = mark
                offsets.append(TopicPartition(p.topic, p.partition, mark))
        return epoch_offsets(offsets, epoch) if offsets else None

    async def checkpointed_commits_(self, out: Emitter) -> list[Any] | None:
        """On the loop: the offsets due (:meth:`due_commits`), returned only once every
        sink made durable what it did with the events before them (a durable store
        wrote its changes): committed offsets never run ahead of durable state.

        Exactly-once: commits them itself, in a transaction (:meth:`transact_`), and
        returns None (nothing left for the consumer to commit)."""
        if self.txn is not None:
            await self.transact_(out)
            return None
        commits = self.due_commits(out)
        if commits:
            try:
                await out.ctx.checkpoint()
            except BaseException:
                self.uncommit_([(KafkaPartition(c.topic, c.partition), c.offset) for c in commits])
                raise
        return commits

    async def transact_(self, out: Emitter, forget: list[KafkaPartition] | None = None) -> None:
        """On the loop, exactly-once: one transaction (docs/state.md "Exactly-once").

        Under one lock, so transactions commit in the order their watermarks were
        read: (1) the watermarks of the partitions held are read and (2) at the same
        instant the Kafka sinks hand over the records of the events before them
        (records of later events stay in the sinks); (3) the durable stores produce
        their changes into the transaction (``ctx.checkpoint()``); (4) on the
        transaction's thread: the records produced, every delivery awaited, the
        offsets added, the transaction committed and the next begun; then the stores
        write their local files. ``forget``: partitions being revoked, whose records
        still kept are dropped after the commit. Shielded: a cancelled caller never
        leaves records taken but not committed (a later commit would skip them). Any
        failure aborts the transaction and fails the source."""
        if self.txn_lock is None:
            self.txn_lock = asyncio.Lock()
        task = asyncio.ensure_future(self._transact(out, forget))
        task.add_done_callback(_retrieved)
        await asyncio.shield(task)

    async def _transact(self, out: Emitter, forget: list[KafkaPartition] | None) -> None:
        from confluent_kafka import TopicPartition

        txn = self.txn
        assert txn is not None
        assert self.txn_lock is not None
        async with self.txn_lock:
            flow = out.flow
            marks: dict[KafkaPartition, int] = {}
            for p in list(self.emitted_next):
                mark = flow.watermark(p)
                if p in self.assigned and mark is not None and mark > self.committed.get(p, -1):
                    marks[p] = mark
            records = txn.take_ready()
            try:
                await out.ctx.checkpoint()
                offsets = [TopicPartition(p.topic, p.partition, o) for p, o in marks.items()]
                consumer = self.consumer
                if await txn.commit_(records, offsets, consumer.consumer_group_metadata):
                    self.stats.commits += 1
            except BaseException as error:
                if txn.failure is None:
                    txn.abort(f"kafka source {self.settings.name!r}: checkpoint failed: {error}")
                self.failure = txn.failure
                raise
            self.committed.update(marks)
            if forget:
                txn.forget(flow, forget)

    def uncommit_(self, failed: list[tuple[KafkaPartition, int]]) -> None:
        """On the loop: commits that failed are due again (unless a later one was made)."""
        for p, offset in failed:
            if self.committed.get(p) == offset:
                del self.committed[p]

    async def release_(self, gone: list[KafkaPartition], timeout: float, lost: bool) -> list[Any]:
        """On the loop: release what windows hold of the partitions, wait (bounded) for
        their events still being processed (a tool call), then offsets to commit."""
        from confluent_kafka import TopicPartition

        flow = self.out.flow
        deadline = self.loop.time() + timeout
        # what open windows hold of these partitions is given up at once, uncommitted
        # (the new owner reads it again): a revoke never waits for a window to close
        flow.revoke(gone)

        def busy() -> bool:
            return any(flow.busy(p) for p in gone)

        while not lost and busy():
            left = deadline - self.loop.time()
            if left <= 0:
                log.warning(
                    "kafka source %r: partitions %s revoked with events still in flight "
                    "after %.1fs; committing what ended (the rest is read again)",
                    self.settings.name,
                    sorted(map(str, gone)),
                    timeout,
                )
                break
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)
        if self.txn is not None:
            return await self._release_transacted(gone, lost)
        marks = {p: flow.watermark(p) for p in gone}
        if not lost and any(mark is not None for mark in marks.values()):
            # the state of what ended must be durable before its offsets are committed
            try:
                await self.out.ctx.checkpoint()
            except Exception as error:
                log.error(
                    "kafka source %r: checkpoint before committing revoked %s failed, "
                    "committing nothing (the events are read again): %s",
                    self.settings.name,
                    sorted(map(str, gone)),
                    error,
                )
                marks = {}
        # their state leaves with them (checkpointed above unless lost)
        try:
            await self.out.ctx.partitions_revoked(list(gone))
        except Exception as error:
            log.error(
                "kafka source %r: releasing the state of %s: %s", self.settings.name, gone, error
            )
        offsets = []
        for p in gone:
            mark = marks.get(p)
            # (even when a commit of it was already due: that one, computed before this
            # release, is dropped as stale by the consumer thread)
            if not lost and mark is not None:
                offsets.append(TopicPartition(p.topic, p.partition, mark))
            flow.forget(p)
            self.committed.pop(p, None)
            self.emitted_next.pop(p, None)
        return offsets

    async def _release_transacted(self, gone: list[KafkaPartition], lost: bool) -> list[Any]:
        """Exactly-once: what ended of the partitions is committed in a transaction
        (with every partition's offsets: the records handed over cover them all);
        what the sinks still keep of them is dropped; nothing is left to commit."""
        flow = self.out.flow
        if not lost:
            try:
                await self.transact_(self.out, forget=gone)
            except Exception as error:
                log.error(
                    "kafka source %r: the transaction before revoking %s failed (the "
                    "source fails; a restart replays from the last committed offsets): %s",
                    self.settings.name,
                    sorted(map(str, gone)),
                    error,
                )
        try:
            await self.out.ctx.partitions_revoked(list(gone))
        except Exception as error:
            log.error(
                "kafka source %r: releasing the state of %s: %s", self.settings.name, gone, error
            )
        for p in gone:
            # their tickets count as released: records kept of their events are dropped
            flow.forget(p, void=True)
            self.committed.pop(p, None)
            self.emitted_next.pop(p, None)
        if self.txn is not None:
            self.txn.forget(flow, gone)
        return []

    def at_end(self) -> bool:
        """True when partitions are assigned and every one was read to its end (``until_eof``)."""
        return bool(self.assigned) and self.assigned <= self.eof

    async def close_after(self, out: Emitter) -> None:
        """After the read loop: let the events in flight end (bounded), commit, leave."""
        start = time.monotonic()
        idle = asyncio.ensure_future(out.flow.idle())
        try:
            deadline = self.loop.time() + self.settings.close_timeout
            while not idle.done() and self.consumer is not None:
                left = deadline - self.loop.time()
                if left <= 0:
                    break
                await asyncio.wait({idle}, timeout=min(left, self.settings.keepalive))
                if not idle.done():
                    # paused, and polled: a slow last event must not get us evicted meanwhile
                    await self.call(self.keepalive, await self.checkpointed_commits_(out))
            if out.flow.pending:
                log.warning(
                    "kafka source %r: closing with %d events still in flight after %.1fs; "
                    "they are read again on restart",
                    self.settings.name,
                    out.flow.pending,
                    time.monotonic() - start,
                )
            commits = await self.checkpointed_commits_(out) if self.consumer is not None else None
            closing = asyncio.ensure_future(self.call(self.close, commits))
            closing.add_done_callback(_retrieved)  # a late failure is not "never retrieved"
            # bounded: librdkafka's close has been seen to wait forever inside the revoke
            # callback's unassign (once, under coverage in the full suite; a known bug:
            # confluentinc/librdkafka#4884); the pipeline then stops anyway and the
            # consumer's thread, a daemon, is left to it
            wait = self.settings.close_timeout + _CLOSE_GRACE
            done, _ = await asyncio.wait({closing}, timeout=wait)
            if not done:
                log.error(
                    "kafka source %r: the consumer did not close within %.0fs (librdkafka); "
                    "stopping without it: its group notices when its session times out",
                    self.settings.name,
                    wait,
                )
            else:
                closing.result()
        except Exception:
            log.exception("kafka source %r: close failed", self.settings.name)
        finally:
            self.stopped.set()
            idle.cancel()
            if self.remove_listener is not None:
                self.remove_listener()
            self.executor.shutdown(wait=False)
