"""The Kafka source: a confluent-kafka consumer read off the loop, in batches, at least once.

How it keeps the promises of :mod:`rxagent.flow`:

* **Batches; waits off the loop.** Consumer calls that may wait run in one
  dedicated thread (librdkafka serves rebalance callbacks on the thread that
  polls). One hop reads up to the credit held (``poll`` for the first message, so
  a quiet topic answers at once, then ``consume`` for what is already fetched) and
  splits it by partition there; the loop decodes and emits one batch per partition. Without a group
  (``assign=True``: no rebalance callback can run) the loop first takes what
  librdkafka has fetched already itself, without waiting (``consume(n, 0)``), and
  asks the thread only when nothing is there: a busy topic costs no thread hop and
  no turn-taking at the interpreter lock (``ConsumerThread.try_fetch``). In a group
  the thread's next read starts once the loop has emitted the last one, for the
  same turn-taking (librdkafka fetches meanwhile).
* **At least once.** ``enable.auto.commit`` is off. What is committed is each
  partition's completion watermark (``flow.watermark``): the offset after the
  longest run of events whose processing has ended. Commits happen every
  ``commit_interval`` seconds, on revoke (after waiting up to ``revoke_timeout``
  for the partition's events in flight) and on stop (after the pipeline's events
  ended, up to ``close_timeout``). A lost partition is never committed.
* **Backpressure without eviction.** Without credit the source pauses every
  assigned partition and keeps polling (so ``max.poll.interval.ms`` never
  expires, however slow a tool is); new partitions assigned meanwhile are paused
  as they arrive. On resume each partition is sought back to the first offset not
  yet emitted: ``pause`` drops what librdkafka had prefetched, and nothing may be
  skipped or emitted twice.
* **Broker outages** are not errors of the pipeline. librdkafka reconnects by
  itself (``reconnect.backoff.ms``); meanwhile ``poll`` returns nothing, commits
  fail and are retried with the next watermark, and the pipeline stays running.
  ``_ALL_BROKERS_DOWN`` is logged once as a warning and marks the source
  ``brokers_down`` in :meth:`KafkaSource.describe` (``outages`` counts them); the
  first message, successful commit or assignment afterwards logs the reconnect.
  Only an error librdkafka calls *fatal* fails the pipeline.
* **Bad messages** go to dead letters (and to ``dead_letter_topic`` if set, with
  ``error``, ``stage``, ``topic``, ``partition`` and ``offset`` headers); the
  offset moves on.

Settings pass through to librdkafka (``config``); a value written ``"${NAME}"``
is read from the environment variable ``NAME`` when the consumer is created, so
secrets stay out of code and files, and :meth:`KafkaSource.describe` never shows
values of keys that look secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Generic, Literal, TypeVar, overload

from ..exceptions import ConfigurationError
from ..sources.base import Emitter, Source
from ..sources.health import SourceHealth
from .common import (
    CONSUMER_DEFAULTS,
    Decoder,
    KafkaPartition,
    KeyDecoder,
    decoder_refuses_none,
    key_columns,
    key_decoder,
    redact,
    value_decoder,
)
from .consumer import (
    ConsumerSettings,
    ConsumerStats,
    ConsumerThread,
    EpochOffsets,
    Runs,
    epoch_offsets,
)
from .transaction import KafkaTransactions

__all__ = ["KafkaPartition", "KafkaSource", "ProcessingGuarantee", "kafka"]

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]

log = logging.getLogger("rxagent")

_V = TypeVar("_V")


class _Stat(Generic[_V]):
    """A field of the source's :class:`ConsumerStats` (which its consumer thread
    writes), read and set as an attribute of the source: ``source.emitted``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = name

    @overload
    def __get__(self, source: None, cls: type | None = None) -> _Stat[_V]: ...

    @overload
    def __get__(self, source: KafkaSource, cls: type | None = None) -> _V: ...

    def __get__(self, source: KafkaSource | None, cls: type | None = None) -> _V | _Stat[_V]:
        if source is None:
            return self
        value: _V = getattr(source.stats, self.field)
        return value

    def __set__(self, source: KafkaSource, value: _V) -> None:
        setattr(source.stats, self.field, value)


class KafkaSource(Source):
    """Events from Kafka ``topics`` (see the module docstring for the guarantees).

    ``group_id`` is the consumer group whose committed offsets the source starts
    from and commits to. By default the source subscribes and the group spreads
    partitions over its members (``partition.assignment.strategy`` passes through;
    ``cooperative-sticky`` works). ``assign=True`` takes every partition of the
    topics without a group rebalance (instant; offsets still committed for the
    group). ``until_eof=True`` ends the stream once every assigned partition is
    read to its end (batch jobs and tests).

    ``decode``: ``"json"`` (orjson when installed), ``"text"``, ``"bytes"`` or a
    function of the value bytes; ``model`` validates the decoded value with
    pydantic. A ``None`` value (a tombstone) stays ``None``. ``key_decode`` does
    the same for keys (``"text"`` by default; undecodable keys stay bytes). Each
    event carries the message timestamp (epoch seconds), headers as a dict of
    bytes, and position ``(source, KafkaPartition(topic, partition), offset)``.

    What no stage uses need not be read: ``key_decode=None`` leaves events
    without keys, ``timestamps=False`` without event times, ``headers=False``
    without headers (each saves work per message in the consumer thread, which
    shares the interpreter lock with the pipeline: docs/kafka.md, Throughput).

    ``processing_guarantee="exactly_once"`` (default ``"at_least_once"``): the
    pipeline's Kafka sinks, the changelogs of its durable stores and the source's
    offsets are written in one Kafka transaction per commit, so a ``read_committed``
    reader sees each input's outputs exactly once (:mod:`rxagent.kafka.transaction`,
    docs/state.md "Exactly-once"). It needs a consumer group (not ``assign=True``)
    and a stable ``transactional_id``, by default ``rxagent.<group_id>.<instance_id>``.

    Args:
        topics: a topic or several.
        bootstrap_servers: the brokers, ``host:port[,host:port...]``.
        group_id: the consumer group whose committed offsets the source starts from
            and commits to.
        config: librdkafka settings passed through (``{"security.protocol": ...}``); a
            value written ``"${NAME}"`` is read from the environment variable
            ``NAME``, and values of secret-looking keys are never shown.
        decode: ``"json"`` (default; orjson when installed), ``"text"``,
            ``"bytes"``, or a function of the value's bytes.
        model: a pydantic model (or type) validating each decoded value; a message
            that fails goes to dead letters (default None: no validation).
        key_decode: how keys are decoded, as ``decode`` (default ``"text"``;
            undecodable keys stay bytes); None: events get no keys (saves work).
        timestamps: give events the message timestamp as event time (default True).
        headers: give events the message headers as a dict of bytes (default True).
        assign: take every partition of the topics without a group rebalance
            (instant; offsets are still committed for the group); default False:
            subscribe, and the group spreads partitions over its members.
        until_eof: end the stream once every assigned partition is read to its end
            (batch jobs and tests); default False: run until stopped.
        dead_letter_topic: also produce undecodable messages to this topic, with
            ``error``, ``stage``, ``topic``, ``partition`` and ``offset`` headers
            (default None: dead letters only go to the pipeline's sink).
        changelog: durable stores written from this source keep a compacted
            changelog topic, so their state follows partitions across workers and
            restarts (default True); False keeps it local only.
        instance_id: a static group membership id (``group.instance.id``): a
            restarted worker gets its partitions back without a rebalance; also
            names the default ``transactional_id``.
        name: the source's name in positions, status and dead letters (default:
            ``kafka``).
        credit: most events in flight from this source; beyond it every assigned
            partition is paused (polling goes on, so the group never evicts it).
        batch_size: most messages read at once (one batch).
        commit_interval: seconds between commits of the completed offsets (> 0).
        poll_timeout: seconds one poll waits for a first message.
        revoke_timeout: seconds a revoked partition's events in flight are waited
            for before its offsets are committed and it is let go.
        close_timeout: seconds the events in flight are waited for on stop before
            the last commit.
        auth_retries: refusals of the credentials by the brokers before the source
            fails (default 3; None: retry forever).
        processing_guarantee: ``"at_least_once"`` (default) or ``"exactly_once"``:
            the pipeline's Kafka sinks, durable stores' changelogs and the offsets
            written in one transaction per commit (needs a group, not ``assign``).
        transactional_id: exactly once: the producer's stable id (default
            ``rxagent.<group_id>.<instance_id>``, so ``instance_id`` or this is needed).
    """

    kind = "kafka"
    #: uncommitted offsets are read again after a restart (on a stop, open windows
    #: give their events up uncommitted instead of flushing them)
    replays_uncommitted = True
    event_bytes_hint = 1 << 20  # byte credit expects messages of up to 1 MiB at first

    # what the consumer thread reports (self.stats), for describe() and tests
    emitted = _Stat[int]()
    dead_lettered = _Stat[int]()
    commits = _Stat[int]()
    pauses = _Stat[int]()
    assignments = _Stat[int]()
    revocations = _Stat[int]()
    #: Seconds the last revoke took (release, checkpoint, commit), or None.
    last_revoke_seconds = _Stat[float | None]()
    outages = _Stat[int]()
    #: partitions whose state is being restored now (0: none)
    restoring = _Stat[int]()
    #: per partition, messages behind its high watermark when last read
    lag = _Stat[dict[KafkaPartition, int]]()
    #: set while librdkafka reports every broker down (a wall-clock time, epoch seconds)
    down_since = _Stat[float | None]()
    #: connected, outage, auth refused, lost assignment (rxagent.sources.health)
    health = _Stat[SourceHealth]()
    auth_refusals = _Stat[int]()
    #: times the source gave up its assignment and subscribed again (group or topic gone)
    rejoins = _Stat[int]()
    #: polls the consumer thread made on its own while the loop was blocked
    unattended_polls = _Stat[int]()
    #: batches the loop read itself (fetched already; ``assign=True`` only)
    loop_reads = _Stat[int]()
    #: batches read on the consumer thread (it waited for them, or reads there)
    thread_reads = _Stat[int]()

    def __init__(
        self,
        topics: str | Iterable[str],
        *,
        bootstrap_servers: str,
        group_id: str,
        config: Mapping[str, Any] | None = None,
        decode: Decoder = "json",
        model: Any = None,
        key_decode: KeyDecoder | None = "text",
        timestamps: bool = True,
        headers: bool = True,
        assign: bool = False,
        until_eof: bool = False,
        dead_letter_topic: str | None = None,
        changelog: bool = True,
        instance_id: str | None = None,
        name: str | None = None,
        credit: int = 4096,
        batch_size: int = 1024,
        commit_interval: float = 1.0,
        poll_timeout: float = 0.2,
        revoke_timeout: float = 10.0,
        close_timeout: float = 10.0,
        auth_retries: int | None = 3,
        processing_guarantee: ProcessingGuarantee = "at_least_once",
        transactional_id: str | None = None,
    ) -> None:
        super().__init__(name, credit=credit, batch_size=batch_size)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ConfigurationError(f"kafka source {self.name!r} needs at least one topic")
        if commit_interval <= 0:
            raise ConfigurationError(
                f"kafka source {self.name!r}: commit_interval must be > 0, got {commit_interval}"
            )
        user = dict(config or {})
        for forbidden in ("enable.auto.commit", "enable.auto.offset.store"):
            if str(user.get(forbidden, "false")).lower() == "true":
                raise ConfigurationError(
                    f"kafka source {self.name!r}: {forbidden}=true would commit events whose "
                    "processing has not ended; the source commits completed offsets itself"
                )
        self.config: dict[str, Any] = {
            **CONSUMER_DEFAULTS,
            **user,
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": until_eof,
        }
        if instance_id is not None:
            if not instance_id.strip():
                raise ConfigurationError(f"kafka source {self.name!r}: instance_id is empty")
            self.config["group.instance.id"] = instance_id
        self.group_id = group_id
        self.changelog = changelog
        self.instance_id = self.config.get("group.instance.id")
        self.processing_guarantee: ProcessingGuarantee = processing_guarantee
        #: the transactional producer of an exactly-once source (None: at least once)
        self.transactions: KafkaTransactions | None = self._transactions(
            processing_guarantee, transactional_id, bootstrap_servers, assign
        )
        if self.transactions is not None:
            # what a transaction did not commit is never read (librdkafka's default)
            self.config["isolation.level"] = "read_committed"
        self.decode_value = value_decoder(decode, model, f"kafka source {self.name!r}")
        # the decoder, if it refuses a tombstone's None (while it is not replaced)
        self._refuses_none = self.decode_value if decoder_refuses_none(decode, model) else None
        self.read_keys = key_decode is not None
        self.decode_key = key_decoder(key_decode or "bytes")
        self.decode_keys = key_columns(key_decode or "bytes")
        self.read_timestamps = timestamps
        self.read_headers = headers
        self.assign = assign
        self.until_eof = until_eof
        self.dead_letter_topic = dead_letter_topic
        self.commit_interval = commit_interval
        self.poll_timeout = poll_timeout
        self.revoke_timeout = revoke_timeout
        self.close_timeout = close_timeout
        if auth_retries is not None and (isinstance(auth_retries, bool) or auth_retries < 0):
            raise ConfigurationError(
                f"kafka source {self.name!r}: auth_retries must be >= 0 or None (retry "
                f"forever), got {auth_retries!r}"
            )
        self.auth_retries = auth_retries
        max_poll = float(user.get("max.poll.interval.ms", 300_000)) / 1000
        # while paused, poll at least this often (well inside max.poll.interval.ms)
        self.keepalive = min(0.5, max_poll / 5)
        #: counters, lag and health, written by the consumer thread, for describe()
        self.stats = ConsumerStats()
        #: since when the source holds no partition (a wall-clock time), or None
        self.waiting_since: float | None = None
        self._consumer: ConsumerThread | None = None
        self._closing: asyncio.Task[None] | None = None
        self._logged_wait = 0.0

    def _transactions(
        self,
        guarantee: str,
        transactional_id: str | None,
        bootstrap_servers: str,
        assign: bool,
    ) -> KafkaTransactions | None:
        if guarantee == "at_least_once":
            if transactional_id is not None:
                raise ConfigurationError(
                    f"kafka source {self.name!r}: transactional_id is only used with "
                    "processing_guarantee='exactly_once'"
                )
            return None
        if guarantee != "exactly_once":
            raise ConfigurationError(
                f"kafka source {self.name!r}: processing_guarantee must be 'at_least_once' "
                f"or 'exactly_once', got {guarantee!r}"
            )
        if assign:
            raise ConfigurationError(
                f"kafka source {self.name!r}: exactly_once needs a consumer group (its "
                "generation fences a worker whose partitions moved away): drop assign=True"
            )
        if transactional_id is None and self.instance_id is not None:
            transactional_id = f"rxagent.{self.group_id}.{self.instance_id}"
        if transactional_id is None or not transactional_id.strip():
            raise ConfigurationError(
                f"kafka source {self.name!r}: exactly_once needs a stable transactional id, "
                "the same for a worker across restarts and unique among workers (a "
                "restarted worker fences its previous incarnation and aborts its open "
                "transaction with it): set transactional_id=..., or instance_id=... (the "
                f"id is then 'rxagent.{self.group_id}.<instance_id>')"
            )
        return KafkaTransactions(
            transactional_id=transactional_id,
            bootstrap_servers=bootstrap_servers,
            owner=f"kafka source {self.name!r}",
        )

    def _settings(self) -> ConsumerSettings:
        """What the consumer thread is told of this source (read when it starts)."""
        return ConsumerSettings(
            name=self.name,
            topics=self.topics,
            group_id=self.group_id,
            config=self.config,
            assign=self.assign,
            keepalive=self.keepalive,
            revoke_timeout=self.revoke_timeout,
            close_timeout=self.close_timeout,
            auth_retries=self.auth_retries,
            dead_letter_topic=self.dead_letter_topic,
            transactions=self.transactions,
            decode_value=self.decode_value,
            none_raises=self.decode_value is self._refuses_none,
            decode_key=self.decode_key,
            decode_keys=self.decode_keys,
            read_keys=self.read_keys,
            read_timestamps=self.read_timestamps,
            read_headers=self.read_headers,
            count_bytes=self.credit_bytes is not None,
        )

    def changelog_for(self, store: str) -> Any:
        """A durable store written from this source keeps a compacted changelog topic
        (one partition per input partition) so its state follows the partitions
        across workers and restarts; ``changelog=False`` keeps it local only."""
        if not self.changelog:
            return None
        if len(self.topics) != 1 or self.topics[0].startswith("^"):
            raise ConfigurationError(
                f"kafka source {self.name!r}: a durable store ({store!r}) written from it "
                f"keeps a changelog per input partition, which needs exactly one topic "
                f"(got {self.topics}); give the store no state_dir, or pass changelog=False "
                "to keep its state on this machine only"
            )
        from .changelog import KafkaChangelog, changelog_topic

        return KafkaChangelog(
            topic=changelog_topic(self.group_id, store),
            input_topic=self.topics[0],
            config=self.config,
            owner=f"state {store!r} (kafka source {self.name!r})",
            transactions=self.transactions,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "credit": self.credit,
            "topics": self.topics,
            "group_id": self.group_id,
            "instance_id": self.instance_id,
            "processing_guarantee": self.processing_guarantee,
            **({} if self.transactions is None else {"transactions": self.transactions.describe()}),
            "config": redact(self.config),
            "emitted": self.emitted,
            "dead_lettered": self.dead_lettered,
            "commits": self.commits,
            "pauses": self.pauses,
            "assignments": self.assignments,
            "revocations": self.revocations,
            "last_revoke_seconds": self.last_revoke_seconds,
            "brokers_down": self.down_since is not None,
            # messages behind the high watermarks, summed over partitions (None: unknown yet)
            "lag": self._lag(),
            # the same per partition assigned now, "topic/partition" -> messages (the dashboard's)
            "partition_lag": self._partition_lag(),
            "outages": self.outages,
            "health": self.health.as_dict(),
            "auth_refusals": self.auth_refusals,
            "rejoins": self.rejoins,
            "unattended_polls": self.unattended_polls,
            # batches read by the loop itself and by the consumer thread
            "loop_reads": self.loop_reads,
            "thread_reads": self.thread_reads,
            "restoring": self.restoring,
            # what it waits for, when it cannot read (the live view shows it)
            "waiting": self._waiting(),
            "assignment": []
            if self._consumer is None
            else sorted(map(str, self._consumer.assigned)),
        }

    def _waiting(self) -> str | None:
        if self.restoring:
            return f"restoring the state of {self.restoring} partitions"
        if self.waiting_since is not None and self._consumer is not None:
            return (
                f"partition assignment from group {self.group_id!r} for "
                f"{time.time() - self.waiting_since:.0f}s"
            )
        return None

    def _note_assignment(self, consumer: ConsumerThread) -> None:
        """Log, every 10 s, that the source holds no partition and why that may be."""
        now = time.time()
        if consumer.assigned or self.assign:
            if self.waiting_since is not None and now - self.waiting_since > 5:
                log.info(
                    "kafka source %r: got partitions after waiting %.1fs",
                    self.name,
                    now - self.waiting_since,
                )
            self.waiting_since = None
            return
        if self.waiting_since is None:
            self.waiting_since = self._logged_wait = now
            return
        if now - self._logged_wait >= 10:
            self._logged_wait = now
            why = (
                "a restarted static member (group.instance.id "
                f"{self.instance_id!r}) is taken back at once"
                if self.instance_id
                else "the member this process replaces keeps its partitions until its session "
                "times out (session.timeout.ms); a stable instance_id avoids that wait"
            )
            log.warning(
                "kafka source %r: no partitions assigned by group %r after %.0fs (%s)",
                self.name,
                self.group_id,
                now - self.waiting_since,
                why,
            )

    def _partition_lag(self) -> dict[str, int]:
        """Messages behind the high watermark of each partition assigned now whose
        lag is known, as ``{"topic/partition": lag}``."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = dict(self.lag)
        return {str(p): lags[p] for p in sorted(consumer.assigned) if p in lags}

    def _lag(self) -> int | None:
        """Messages behind the high watermarks over the partitions assigned now."""
        consumer = self._consumer
        if consumer is None:
            return None
        lags = dict(self.lag)
        known = [lags[p] for p in list(consumer.assigned) if p in lags]
        return sum(known) if known else None

    async def aclose(self) -> None:
        """The pipeline's last step: wait for the final commit (see :meth:`wait_closed`)."""
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the final commit is done and the consumer has left its group."""
        if self._closing is not None:
            await asyncio.shield(self._closing)

    # -- the read loop (event loop side) ----------------------------------------------

    async def run(self, out: Emitter) -> None:
        loop = asyncio.get_running_loop()
        consumer = ConsumerThread(self._settings(), self.stats, out, loop)
        self._consumer = consumer
        try:
            await consumer.call(consumer.open)
            await self._read(out, consumer)
        finally:
            self._closing = loop.create_task(
                consumer.close_after(out), name=f"rxagent-kafka-close-{self.name}"
            )

    async def _read(self, out: Emitter, consumer: ConsumerThread) -> None:
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + self.commit_interval
        waiting: asyncio.Future[int] | None = None
        # the next read: one in hand (read on the loop) or under way (on the thread),
        # emitted as ``current`` the next time round
        ahead: asyncio.Future[tuple[Runs, bool]] | None = None
        ahead_credit = 0
        checkpointing: asyncio.Future[list[Any] | None] | None = None
        try:
            while True:
                granted = out.flow.try_acquire(self.batch_size)
                if not granted and ahead is None:
                    # no credit: wait for it, pausing and polling meanwhile
                    waiting = asyncio.ensure_future(out.credit(self.batch_size))
                    while True:
                        done, _ = await asyncio.wait({waiting}, timeout=self.keepalive)
                        if done:
                            break
                        earlier = None
                        if checkpointing is not None:
                            # its offsets go first: commits never move backwards
                            earlier, checkpointing = await checkpointing, None
                        commits = _newest(earlier, await consumer.checkpointed_commits_(out))
                        await consumer.call(consumer.keepalive, commits)
                        next_commit = loop.time() + self.commit_interval
                    granted, waiting = waiting.result(), None
                current, current_credit = ahead, ahead_credit
                ahead, ahead_credit = None, 0
                if granted:
                    commits = None
                    if loop.time() >= next_commit and checkpointing is None:
                        # the checkpoint runs beside the reads; its offsets are handed to
                        # the consumer (committed) only once it is done
                        checkpointing = asyncio.ensure_future(consumer.checkpointed_commits_(out))
                        next_commit = loop.time() + self.commit_interval
                    if checkpointing is not None and checkpointing.done():
                        commits = checkpointing.result()
                        checkpointing = None
                    if current is not None and (current.done() or not consumer.direct):
                        # emitted before the next read: one batch of messages at a time
                        # is alive while the pipeline runs (the collector's young
                        # collections walk fewer objects); in a group (reads on the
                        # consumer thread) the next read waits for the pipeline too, as
                        # the two threads otherwise take turns at the interpreter lock
                        # (librdkafka keeps fetching meanwhile: the read finds messages
                        # waiting). Measured: docs/architecture.md, "Kafka: in a group,
                        # one read at a time".
                        ahead_credit = granted  # given back by the finally if this stops
                        if await self._emit(out, consumer, current, current_credit):
                            return
                        current = None
                    # what is fetched already is read here, the thread waits for the rest;
                    # never while a read of the thread's is pending (it may not have
                    # started yet: it would read later messages, emitted before these)
                    direct = (
                        consumer.try_fetch(granted, commits)
                        if current is None or current.done()
                        else None
                    )
                    if direct is not None:
                        ahead = loop.create_future()
                        ahead.set_result(direct)
                    else:
                        ahead = asyncio.ensure_future(
                            consumer.call(consumer.fetch, granted, self.poll_timeout, commits)
                        )
                    ahead_credit = granted
                if current is not None and await self._emit(out, consumer, current, current_credit):
                    return
        finally:
            if checkpointing is not None and not checkpointing.done():
                # the close (close_after) checkpoints and commits what ended
                checkpointing.cancel()
            if waiting is not None:
                if waiting.done() and not waiting.cancelled():
                    out.give_back(waiting.result())
                else:
                    waiting.cancel()
            # a read still under way is dropped: nothing of it was emitted (its credit,
            # held since before an emit that stopped the stream, is given back too)
            if ahead is not None:
                ahead.cancel()
            if ahead_credit:
                out.give_back(ahead_credit)

    async def _emit(
        self,
        out: Emitter,
        consumer: ConsumerThread,
        read: asyncio.Future[tuple[Runs, bool]],
        credit: int,
    ) -> bool:
        """Emit a read's batches (``credit`` held for it, the rest given back); True
        when the stream ends here (``until_eof``, every partition read to its end)."""
        try:
            groups, at_end = await read
        except BaseException:
            out.give_back(credit)
            raise
        self._note_assignment(consumer)
        used = consumer.emit(out, groups)
        out.give_back(credit - used)
        if self.until_eof and at_end:
            return True
        if used:
            # let timers, tool calls and other pipelines run between batches
            await asyncio.sleep(0)
        return False


def _newest(*batches: list[Any] | None) -> list[Any] | None:
    """Offsets to commit from several checkpoints: the highest per partition (of the
    oldest assignment epoch among them: stale ones are dropped by the consumer)."""
    best: dict[tuple[str, int], Any] = {}
    epochs = [batch.epoch for batch in batches if isinstance(batch, EpochOffsets)]
    for batch in batches:
        for tp in batch or ():
            key = (tp.topic, tp.partition)
            if key not in best or tp.offset > best[key].offset:
                best[key] = tp
    if not best:
        return None
    return epoch_offsets(list(best.values()), min(epochs)) if epochs else list(best.values())


def kafka(
    topics: str | Iterable[str],
    *,
    bootstrap_servers: str,
    group_id: str,
    **options: Any,
) -> KafkaSource:
    """A Kafka source (see :class:`KafkaSource`)."""
    return KafkaSource(topics, bootstrap_servers=bootstrap_servers, group_id=group_id, **options)
