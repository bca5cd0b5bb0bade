"""Exactly-once for Kafka -> Kafka pipelines: one transactional producer per source.

A :class:`~rxagent.kafka.KafkaSource` with ``processing_guarantee="exactly_once"``
owns a :class:`KafkaTransactions`. Its pipeline's Kafka sinks and the changelogs of
its durable stores produce through it, and each source commit is one Kafka
transaction holding, together:

* the sinks' output records of every event before the offsets committed, and of no
  event after them (a sink keeps each record until the completion watermark of its
  event's partition has passed the event: :meth:`take_ready`);
* the changelog records the durable stores produced since the last commit (state is
  idempotent by source position, so changes of events after the offsets are
  harmless: a replay skips them and the changelog already holds them);
* the source offsets (``send_offsets_to_transaction`` with the consumer's group
  metadata).

Durable stores write their local file only after the transaction holding its
changelog records committed (``on_commit``): a crash in between leaves the local
file behind the changelog, never ahead of it, and a restore reads the rest from the
changelog.

The producer is made, and its transactions initialised (which fences a previous
incarnation with the same ``transactional.id`` and aborts its open transaction), on
the consumer thread before the source subscribes; commits run on a thread of their
own, never on the event loop. Any transactional error aborts the transaction and
fails the pipeline: a restart replays from the committed offsets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import RxAgentError
from .common import client_config, same_cluster

if TYPE_CHECKING:
    from ..flow import Flow
    from .sink import KafkaSink

__all__ = ["KafkaTransactions", "TransactionError", "same_cluster"]

log = logging.getLogger("rxagent")

#: One record for the transaction: topic, partition (None: the producer's
#: partitioner), key, value, headers.
TxnRecord = tuple[str, int | None, bytes | None, bytes | None, Any]

#: librdkafka error codes meaning another producer with our transactional.id took over
_FENCED = frozenset({-144, 90, 47})  # _FENCED, PRODUCER_FENCED, INVALID_PRODUCER_EPOCH


class TransactionError(RxAgentError):
    """A Kafka transaction of an exactly-once source failed (it was aborted, or the
    producer was fenced by another instance): the pipeline fails, and a restart
    replays from the offsets committed with the last transaction that committed."""


class KafkaTransactions:
    """The transactional producer of one exactly-once source (see the module docstring).

    ``produce`` is thread-safe (the changelogs call it from their stores' threads);
    ``commit`` runs on the transaction thread (``commit_`` from the loop).
    """

    def __init__(
        self,
        *,
        transactional_id: str,
        bootstrap_servers: str,
        owner: str,
        timeout: float = 30.0,
    ) -> None:
        self.transactional_id = transactional_id
        self.bootstrap_servers = bootstrap_servers
        self.owner = owner
        self.timeout = timeout
        self.producer: Any = None
        self.lock = threading.Lock()
        #: the number of the open transaction, and of the last one committed
        self.number = 0
        self.committed = -1
        #: records were produced into the open transaction
        self.dirty = False
        #: set once a transaction failed: every later call raises it
        self.failure: TransactionError | None = None
        self.commits = 0
        self.records = 0
        self.last_commit_seconds: float | None = None
        self._errors: list[Any] = []
        self._sinks: list[KafkaSink] = []
        self._listeners: list[Callable[[int], None]] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # -- wiring --------------------------------------------------------------------

    def join(self, sink: KafkaSink) -> None:
        """A Kafka sink of the pipeline writes through this producer."""
        if sink not in self._sinks:
            self._sinks.append(sink)

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(number)`` (on the transaction thread) after each commit."""
        self._listeners.append(listener)

    # -- the producer (consumer thread, at open) ----------------------------------------

    def open(self, config: Mapping[str, Any]) -> None:
        """Make the producer and begin the first transaction. ``init_transactions``
        fences a previous producer with the same id and aborts its open transaction."""
        from confluent_kafka import KafkaException, Producer

        settings = client_config(config)
        settings.setdefault("acks", "all")
        settings.setdefault("linger.ms", 5)
        # Kafka Streams' exactly-once default: a transaction left open by a dead
        # process blocks read_committed readers of its partitions for at most this
        settings.setdefault("transaction.timeout.ms", 10_000)
        settings["enable.idempotence"] = True
        settings["transactional.id"] = self.transactional_id
        producer = Producer(settings)
        try:
            producer.init_transactions(self.timeout)
            producer.begin_transaction()
        except KafkaException as error:
            raise TransactionError(
                f"{self.owner}: cannot start transactions with transactional.id "
                f"{self.transactional_id!r}: {error.args[0]} (does the cluster support "
                "transactions, and may this client write them?)"
            ) from error
        self.producer = producer
        log.info(
            "%s: exactly-once, transactional.id %r initialised", self.owner, self.transactional_id
        )

    # -- producing (any thread) ----------------------------------------------------------

    def produce(
        self,
        records: Iterable[TxnRecord],
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> int:
        """Produce ``records`` into the open transaction; returns its number."""
        with self.lock:
            self._check()
            self._produce(records, on_delivery)
            return self.number

    def _produce(
        self, records: Iterable[TxnRecord], on_delivery: Callable[[Any, Any], None] | None
    ) -> None:
        producer = self.producer
        report: Callable[[Any, Any], None] = self._delivered
        if on_delivery is not None:
            errors = self._errors
            deliver = on_delivery

            def both(error: Any, message: Any) -> None:
                if error is not None:
                    errors.append(error)  # a failed record fails the transaction too
                deliver(error, message)

            report = both

        n = 0
        for topic, partition, key, value, headers in records:
            extra: dict[str, Any] = {} if partition is None else {"partition": partition}
            if headers is not None:
                extra["headers"] = headers
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=report, **extra)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
            n += 1
        if n:
            self.dirty = True
            self.records += n

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._errors.append(error)

    def flush(self, timeout: float) -> int:
        """Wait for the deliveries of what was produced (any thread)."""
        left: int = self.producer.flush(timeout)
        return left

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.producer is None:
            raise TransactionError(f"{self.owner}: the transactional producer is not open")

    # -- sinks' records ------------------------------------------------------------------

    def take_ready(self) -> list[TxnRecord]:
        """On the loop: every record the sinks hold whose events' partitions have a
        completion watermark past them (read now: the offsets committed with them)."""
        taken: list[TxnRecord] = []
        for sink in self._sinks:
            taken.extend(sink._take_ready())
        return taken

    def forget(self, flow: Flow, partitions: Iterable[Hashable]) -> None:
        """On the loop, after the commit of a revoke: records the sinks still hold of
        these partitions are dropped (their new owner replays the events)."""
        gone = frozenset(partitions)
        for sink in self._sinks:
            sink._forget(flow, gone)

    # -- commits (transaction thread) ----------------------------------------------------

    async def commit_(
        self, records: list[TxnRecord], offsets: list[Any], metadata: Callable[[], Any]
    ) -> bool:
        """On the loop: :meth:`commit` on the transaction thread."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="rxagent-kafka-txn"
            )
        loop = asyncio.get_running_loop()
        done: bool = await loop.run_in_executor(
            self._executor, self.commit, records, offsets, metadata
        )
        return done

    def commit(
        self, records: list[TxnRecord], offsets: list[Any], metadata: Callable[[], Any]
    ) -> bool:
        """Produce ``records``, wait for every delivery of the transaction, add
        ``offsets`` (consumer group metadata from ``metadata()``), commit, begin the
        next. False when there was nothing to commit. Raises :class:`TransactionError`
        (the transaction aborted) on any failure."""
        started = time.monotonic()
        with self.lock:
            self._check()
            if records:
                self._produce(records, None)
            if not offsets and not self.dirty:
                return False
            producer = self.producer
            try:
                left = producer.flush(self.timeout)
                if left:
                    raise TransactionError(
                        f"{self.owner}: {left} records of the transaction not delivered in "
                        f"{self.timeout:.0f}s"
                    )
                if self._errors:
                    raise TransactionError(
                        f"{self.owner}: a record of the transaction was not delivered: "
                        f"{self._errors[0]}"
                    )
                if offsets:
                    producer.send_offsets_to_transaction(offsets, metadata(), self.timeout)
                producer.commit_transaction(self.timeout)
            except Exception as error:
                self._fail(error)
                assert self.failure is not None
                raise self.failure from error
            number = self.number
            self.committed = number
            self.number += 1
            self.dirty = False
            self.commits += 1
            try:
                producer.begin_transaction()
            except Exception as error:
                self._fail(error)
                assert self.failure is not None
                raise self.failure from error
        self.last_commit_seconds = time.monotonic() - started
        for listener in list(self._listeners):
            try:
                listener(number)
            except Exception:
                log.exception("%s: after commit %d", self.owner, number)
        return True

    def _fail(self, error: BaseException) -> None:
        """Abort the open transaction (when the producer still can) and remember why."""
        from confluent_kafka import KafkaException

        kafka_error = error.args[0] if isinstance(error, KafkaException) and error.args else None
        code = kafka_error.code() if kafka_error is not None else None
        if code in _FENCED:
            message = (
                f"{self.owner}: transactional.id {self.transactional_id!r} was taken over by "
                "another instance (this producer is fenced): this worker stops; run one "
                f"worker per transactional id ({kafka_error})"
            )
        else:
            message = (
                f"{self.owner}: transaction {self.number} failed and was aborted "
                f"({error}); a restart replays from the offsets of the last committed one"
            )
            if self.producer is not None and (kafka_error is None or not kafka_error.fatal()):
                try:
                    self.producer.abort_transaction(self.timeout)
                except Exception as abort_error:
                    log.warning("%s: aborting the transaction: %s", self.owner, abort_error)
        self.failure = TransactionError(message)
        log.error("%s", message)

    def abort(self, why: str) -> None:
        """Abort the open transaction and fail (an assignment was lost)."""
        with self.lock:
            if self.failure is not None:
                return
            self._fail(TransactionError(why))

    def close(self) -> None:
        """Abort what the open transaction holds (nothing committed it) and let go."""
        with self.lock:
            producer, self.producer = self.producer, None
            if producer is not None and self.dirty and self.failure is None:
                try:
                    producer.abort_transaction(5)
                except Exception as error:
                    log.debug("%s: aborting the last transaction: %s", self.owner, error)
            if producer is not None:
                producer.flush(1)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def describe(self) -> dict[str, Any]:
        """What status shows of the transactions: the transactional id, transactions and records
        committed, the one open, the last commit's duration and a failure."""
        return {
            "transactional_id": self.transactional_id,
            "transactions": self.commits,
            "records": self.records,
            "open": self.number,
            "last_commit_seconds": self.last_commit_seconds,
            "failed": None if self.failure is None else str(self.failure),
        }
