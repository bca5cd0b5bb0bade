"""A state store's changelog topic: what follows a Kafka partition's state to the
worker that owns the partition next, and what a reader rebuilds the whole state from.

Layout (as Kafka Streams and Quix Streams do it): one compacted topic per store
and consumer group, named ``rxagent-changelog.<group>.<store>``, with as many
partitions as the input topic. The change of a key whose last event came from
input partition *p* goes to changelog partition *p*, keyed by the store key; a
deleted key is a tombstone (``None`` value). So the changelog partition *p* holds,
after compaction, exactly the state of input partition *p*.

Every method here blocks: they run in the store's writer thread, never on the
event loop. A checkpoint produces its changes and waits for every delivery before
it returns, so the offsets committed after it never cover a change the broker
could still lose.

With an exactly-once source the changes go through the source's transactional
producer (``transactions``) into its open transaction, committed with the offsets;
every reader (restore, view) reads with ``isolation.level=read_committed``, so a
change of an aborted transaction is never restored or shown.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any, NamedTuple

from ..exceptions import StateError
from .common import client_config, resolve_config

__all__ = ["KafkaChangelog", "TailBatch", "changelog_topic"]

log = logging.getLogger("rxagent")


def changelog_topic(group_id: str, store: str) -> str:
    """The changelog topic of ``store`` written by consumer group ``group_id``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{group_id}.{store}")
    return f"rxagent-changelog.{safe}"[:249]


class TailBatch(NamedTuple):
    """What one poll of :meth:`KafkaChangelog.tail` read.

    ``records``: ``(partition, key, value or None, offset, timestamp or None)`` in the
    order read (per partition in offset order; ``timestamp`` in epoch seconds, when the
    writer produced the record). ``ends``: partitions read to their end in this poll,
    with their end offset. ``highs``: the high watermarks librdkafka cached for the
    partitions with records (a broker may under-report them: only ``ends`` says
    "caught up"). ``partitions``: every partition read (grows when partitions are
    added). ``errors``: what the client reported meanwhile (it keeps reconnecting).
    """

    records: list[tuple[int, bytes, bytes | None, int, float | None]]
    ends: dict[int, int]
    highs: dict[int, int]
    partitions: list[int]
    errors: list[str]


class KafkaChangelog:
    """The changelog of one store (see the module docstring). ``config`` holds the
    connection settings (``bootstrap.servers``, security); ``input_topic`` is the
    topic whose partitions the store's entries follow."""

    def __init__(
        self,
        *,
        topic: str,
        input_topic: str,
        config: Mapping[str, Any],
        owner: str,
        replication_factor: int = 1,
        delivery_timeout: float = 30.0,
        transactions: Any = None,
    ) -> None:
        self.topic = topic
        self.input_topic = input_topic
        self.config = dict(config)
        self.owner = owner
        self.replication_factor = replication_factor
        self.delivery_timeout = delivery_timeout
        self.partitions = 0
        #: an exactly-once source's KafkaTransactions: changes go into its transaction
        self.transactions = transactions
        #: the number of the transaction the last ``produce`` wrote into
        self.last_transaction: int | None = None
        self._producer: Any = None
        self._resolved: dict[str, Any] | None = None

    def _settings(self) -> dict[str, Any]:
        if self._resolved is None:
            self._resolved = resolve_config(client_config(self.config), owner=self.owner)
        return dict(self._resolved)

    # -- the topic ----------------------------------------------------------------------

    def ensure_topic(self) -> int:
        """Create the compacted topic if missing (as many partitions as the input
        topic); returns its partition count. A clear :class:`StateError` otherwise."""
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        admin = AdminClient(self._settings())
        try:
            metadata = admin.list_topics(timeout=10)
        except Exception as error:
            raise StateError(
                f"{self.owner}: cannot reach the brokers to set up changelog {self.topic!r}: "
                f"{error}"
            ) from error
        source = metadata.topics.get(self.input_topic)
        if source is None or source.error is not None:
            raise StateError(
                f"{self.owner}: input topic {self.input_topic!r} does not exist, so its "
                f"changelog {self.topic!r} cannot be sized"
            )
        wanted = len(source.partitions)
        existing = metadata.topics.get(self.topic)
        if existing is None or existing.error is not None:
            new = NewTopic(
                self.topic,
                wanted,
                self.replication_factor,
                config={"cleanup.policy": "compact"},
            )
            try:
                admin.create_topics([new], operation_timeout=10)[self.topic].result(15)
            except Exception as error:
                if "TOPIC_ALREADY_EXISTS" not in str(error):
                    raise StateError(
                        f"{self.owner}: cannot create changelog topic {self.topic!r} "
                        f"({wanted} partitions, cleanup.policy=compact): {error}; create it "
                        "yourself or give the client the right to"
                    ) from error
            self._wait_for_partitions(admin, wanted)
            self.partitions = wanted
            log.info(
                "%s: created changelog topic %s (%d partitions)", self.owner, self.topic, wanted
            )
        else:
            self.partitions = len(existing.partitions)
            if self.partitions < wanted:
                raise StateError(
                    f"{self.owner}: changelog topic {self.topic!r} has {self.partitions} "
                    f"partitions but input topic {self.input_topic!r} has {wanted}: add "
                    "partitions to the changelog (or reset the store)"
                )
        self._make_producer()
        return self.partitions

    def _wait_for_partitions(self, admin: Any, wanted: int) -> None:
        deadline = time.monotonic() + 10
        while True:
            topic = admin.list_topics(self.topic, timeout=5).topics.get(self.topic)
            if topic is not None and topic.error is None and len(topic.partitions) >= wanted:
                return
            if time.monotonic() > deadline:
                raise StateError(f"{self.owner}: changelog topic {self.topic!r} did not appear")
            time.sleep(0.05)

    # -- writing ------------------------------------------------------------------------

    def _make_producer(self) -> Any:
        """The producer (made once). Made when the topic is ensured, so that it connects
        and gets its idempotent producer id meanwhile, not in the first checkpoint."""
        if self._producer is None and self.transactions is None:
            from confluent_kafka import Producer

            settings = self._settings()
            settings.setdefault("acks", "all")
            settings.setdefault("enable.idempotence", True)
            settings.setdefault("linger.ms", 5)
            self._producer = Producer(settings)
        return self._producer

    def produce(self, records: list[tuple[int, bytes, bytes | None]]) -> dict[int, int]:
        """Produce ``(partition, key, value or None)`` records and wait until each is
        delivered; returns, per partition written, the offset after its last record."""
        if not records:
            return {}
        failures: list[Any] = []
        ends: dict[int, int] = {}

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(error)
            else:
                p = message.partition()
                ends[p] = max(ends.get(p, 0), message.offset() + 1)

        if self.transactions is not None:
            return self._produce_in_transaction(records, delivered, failures, ends)
        producer = self._make_producer()

        for partition, key, value in records:
            while True:
                try:
                    producer.produce(
                        self.topic, value, key, partition=partition, on_delivery=delivered
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
        self._check_delivered(
            producer.flush(self.delivery_timeout), failures, "the offsets are not committed"
        )
        return ends

    def _produce_in_transaction(
        self,
        records: list[tuple[int, bytes, bytes | None]],
        delivered: Any,
        failures: list[Any],
        ends: dict[int, int],
    ) -> dict[int, int]:
        """Into the source's open transaction (its number in ``last_transaction``),
        every delivery awaited: committed with the source's next offsets."""
        txn = self.transactions
        topic = self.topic
        self.last_transaction = txn.produce(
            [(topic, partition, key, value, None) for partition, key, value in records],
            delivered,
        )
        self._check_delivered(
            txn.flush(self.delivery_timeout), failures, "the transaction is not committed"
        )
        return ends

    def _check_delivered(self, left: int, failures: list[Any], consequence: str) -> None:
        """Every change delivered, or a StateError saying what was not (and so what
        is not committed: its events are read again)."""
        if not left and not failures:
            return
        problems = []
        if left:
            problems.append(f"{left} changes not delivered in {self.delivery_timeout:.0f}s")
        if failures:
            problems.append(f"delivery failed: {failures[0]}")
        raise StateError(
            f"{self.owner}: changelog {self.topic!r}: {'; '.join(problems)}; "
            f"{consequence} (the events are read again)"
        )

    # -- reading ------------------------------------------------------------------------

    def read(
        self, starts: Mapping[int, int | None], *, chunk: int = 2048
    ) -> Iterator[tuple[int, list[tuple[bytes, bytes | None, int]]]]:
        """``(partition, records)`` of the partitions in ``starts``, each read from its
        start offset (the beginning for ``None``) to its end, in chunks of
        ``(key, value or None, offset)`` records (memory stays bounded). One consumer
        reads them all, so restoring several partitions costs one connection."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        if not starts:
            return
        settings = self._settings()
        settings.update(
            {
                "group.id": f"{self.topic}.restore",
                # never a change of an aborted (or still open) transaction
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # the end of a partition answers at once instead of after 500 ms
                "fetch.wait.max.ms": 10,
                "auto.offset.reset": "earliest",
            }
        )
        consumer = Consumer(settings)
        try:
            # a partition already read to its end offset (the local rows are up to date,
            # or it is empty) is not fetched: an empty fetch can wait the broker's whole
            # fetch wait (Kafka Streams' restore also stops at the end offsets)
            wanted = {
                p: start for p, start in starts.items() if not self._at_end(consumer, p, start)
            }
            if not wanted:
                return
            consumer.assign(
                [
                    TopicPartition(self.topic, p, OFFSET_BEGINNING if start is None else start)
                    for p, start in wanted.items()
                ]
            )
            left = set(wanted)
            idle_deadline = time.monotonic() + 30
            while left:
                # what has arrived, at once; else wait for the first message (a partition's
                # end among them) and take what came with it: never wait to fill a chunk
                messages = consumer.consume(chunk, 0)
                if not messages:
                    first = consumer.poll(0.5)
                    if first is not None:
                        messages = [first, *consumer.consume(chunk - 1, 0)]
                if not messages:
                    if time.monotonic() > idle_deadline:
                        raise StateError(
                            f"{self.owner}: restoring partitions {sorted(left)} of changelog "
                            f"{self.topic!r}: no answer from the brokers for 30s"
                        )
                    continue
                idle_deadline = time.monotonic() + 30
                records: dict[int, list[tuple[bytes, bytes | None, int]]] = {}
                for message in messages:
                    error = message.error()
                    partition = message.partition() or 0
                    if error is None:
                        records.setdefault(partition, []).append(
                            (message.key() or b"", message.value(), message.offset() or 0)
                        )
                    elif error.code() == KafkaError._PARTITION_EOF:
                        left.discard(partition)
                    elif error.fatal():
                        raise StateError(
                            f"{self.owner}: restoring changelog {self.topic!r}: {error}"
                        )
                    else:
                        log.warning("%s: restoring changelog %s: %s", self.owner, self.topic, error)
                yield from records.items()
        finally:
            consumer.close()

    def _at_end(self, consumer: Any, partition: int, start: int | None) -> bool:
        """True when reading ``partition`` from ``start`` would read nothing: its end
        offset (asked of the broker, not cached) is ``start`` (or, for ``None``, its
        beginning). A start beyond the end is read (the changelog was recreated: the
        reader sees it start below and rebuilds); so is one whose end cannot be had."""
        from confluent_kafka import TopicPartition

        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10, cached=False
            )
        except Exception:  # not known: read it
            return False
        if high is None or high < 0:
            return False
        return bool(high == (low if start is None else start))

    def tail(
        self,
        stop: threading.Event,
        *,
        chunk: int = 2048,
        poll: float = 0.25,
        metadata_interval: float = 30.0,
    ) -> Generator[TailBatch, None, None]:
        """Read every partition of the topic from its beginning, then keep reading what
        is appended until ``stop`` is set: one :class:`TailBatch` per poll that read
        records, reached the end of a partition or saw a client error, of at most
        ``chunk`` records (memory stays bounded while catching up). Partitions added
        to the topic are read too (metadata checked every ``metadata_interval``
        seconds). Blocks: run it on a thread of its own; it returns within ``poll``
        seconds of ``stop`` being set (and of the consumer of the batch handing
        control back).

        Raises :class:`StateError` when the brokers cannot be reached at the start,
        the topic does not exist, or the client reports a fatal error."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        errors: list[str] = []
        settings = self._settings()
        settings.update(
            {
                # partitions assigned, no subscription: this group never joins or commits
                "group.id": f"{self.topic}.view",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                # a fetch with nothing new returns after 100 ms: a new record is read
                # within about that, and the end of a partition is seen at once
                "fetch.wait.max.ms": 100,
                "fetch.queue.backoff.ms": 10,
                # bounded prefetch: what is fetched ahead of the reader stays small
                "queued.max.messages.kbytes": 16384,
                "error_cb": lambda error: errors.append(str(error)),
            }
        )
        consumer = Consumer(settings)
        try:
            partitions = self._partitions_of(consumer)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            next_metadata = time.monotonic() + metadata_interval
            while not stop.is_set():
                messages = consumer.consume(chunk, 0)
                if not messages:
                    # wait for the first message, then take what else is there at once
                    first = consumer.poll(poll)
                    if first is not None:
                        messages = [first, *consumer.consume(chunk - 1, 0)]
                records: list[tuple[int, bytes, bytes | None, int, float | None]] = []
                ends: dict[int, int] = {}
                for message in messages:
                    error = message.error()
                    partition = message.partition() or 0
                    if error is None:
                        kind, ms = message.timestamp()
                        records.append(
                            (
                                partition,
                                message.key() or b"",
                                message.value(),
                                message.offset() or 0,
                                None if kind == 0 or ms is None or ms < 0 else ms / 1000,
                            )
                        )
                        ends.pop(partition, None)
                    elif error.code() == KafkaError._PARTITION_EOF:
                        ends[partition] = message.offset() or 0
                    elif error.fatal():
                        raise StateError(f"{self.owner}: reading changelog {self.topic!r}: {error}")
                    else:
                        errors.append(str(error))
                highs: dict[int, int] = {}
                for partition in {r[0] for r in records}:
                    try:
                        _low, high = consumer.get_watermark_offsets(
                            TopicPartition(self.topic, partition), cached=True
                        )
                    except Exception:  # not known yet
                        continue
                    if high is not None and high >= 0:
                        highs[partition] = high
                if time.monotonic() > next_metadata:
                    next_metadata = time.monotonic() + metadata_interval
                    try:
                        added = [p for p in self._partitions_of(consumer) if p not in partitions]
                    except StateError as error:
                        errors.append(str(error))
                        added = []
                    if added:
                        log.info(
                            "%s: changelog %s gained partitions %s", self.owner, self.topic, added
                        )
                        consumer.incremental_assign(
                            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in added]
                        )
                        partitions = [*partitions, *added]
                if records or ends or errors:
                    reported = errors[:]
                    del errors[:]
                    yield TailBatch(records, ends, highs, list(partitions), reported)
        finally:
            consumer.close()

    def _partitions_of(self, consumer: Any) -> list[int]:
        """The partition numbers of the topic; a clear :class:`StateError` if it is missing."""
        try:
            metadata = consumer.list_topics(timeout=10)
        except Exception as error:
            raise StateError(
                f"{self.owner}: cannot reach the brokers to read changelog {self.topic!r}: {error}"
            ) from error
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise StateError(
                f"{self.owner}: changelog topic {self.topic!r} does not exist: no worker of "
                "that group has checkpointed a durable store of that name (check the store "
                "name and the group id)"
            )
        return sorted(topic.partitions)

    def close(self) -> None:
        """Flush what is still being produced (up to ``delivery_timeout``) and close
        the producer."""
        if self._producer is not None:
            self._producer.flush(self.delivery_timeout)
            self._producer = None
