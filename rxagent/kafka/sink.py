"""The Kafka sink: each event produced to a topic, ended when the broker confirms it.

A row's processing ends only when its delivery report arrives, so a source
upstream (a Kafka consumer committing completion watermarks) never commits an
event whose output could still be lost. A failed delivery, or a value that cannot
be encoded, goes to dead letters with the reason.

``produce`` runs on the loop (it only queues the message in librdkafka); delivery
reports are collected by ``poll`` in a thread of the sink's own, and handed back
to the loop in batches, one hop per batch of reports.

**Exactly-once** (its source has ``processing_guarantee="exactly_once"``): the sink
has no producer of its own. It encodes each event, keeps the record and ends the
event; its source's transaction takes the records whose events' partitions have a
completion watermark past them, in the commit that commits those offsets
(:mod:`rxagent.kafka.transaction`). So a transaction holds the outputs of exactly
the events before its offsets: none of an event after them (a replay would write
it again), none missing. Records of events still behind an unfinished one of their
partition (a window, a slow branch) wait in the sink meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal

from ..context import PipelineContext
from ..deadletters import DeadLetter
from ..events import Batch, Event, Hold
from ..exceptions import ConfigurationError, RxAgentError, StageError
from ..flow import Flow, Ticket
from ..sinks.base import Sink
from .common import KafkaPartition, redact, resolve_config, same_cluster

__all__ = ["KafkaDeadLetters", "KafkaSink", "KafkaSinkError"]

log = logging.getLogger("rxagent")

Encoder = Literal["json", "text", "bytes"] | Callable[[Any], bytes]
HeaderSpec = Mapping[str, str | bytes] | Callable[[Event], Mapping[str, str | bytes] | None]

#: Producer settings for a sink that must not lose events; ``config`` overrides them.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
}


class KafkaSinkError(RxAgentError):
    """An event could not be produced (encoding failed or the broker refused it)."""


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return str(value)


def _encoder(encode: Encoder) -> Callable[[Any], bytes]:
    if callable(encode):
        return encode
    if encode == "json":
        dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode
        return lambda value: dumps(value).encode("utf-8")
    if encode == "text":
        return lambda value: str(value).encode("utf-8")
    if encode == "bytes":
        return lambda value: value if isinstance(value, bytes) else bytes(value)
    raise RxAgentError(f"encode must be 'json', 'text', 'bytes' or a function, got {encode!r}")


def _key_bytes(key: Hashable) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    return json.dumps(key, separators=(",", ":"), default=str).encode("utf-8")


class KafkaSink(Sink):
    """Produces each event's value to ``topic``.

    Each event ends once the broker confirmed its delivery, so a source commits
    an offset only after what came of the events before it is written.

    Args:
        topic: the topic produced to.
        bootstrap_servers: the brokers, ``host:port[,host:port...]``.
        key: the message key: a field name or a function of the value (default:
            the event's key); str keys are UTF-8, others JSON.
        headers: a mapping added to every message, or a function of the event
            returning one (default: no headers).
        encode: ``"json"`` (default; pydantic models dumped as JSON), ``"text"``,
            ``"bytes"``, or a function of the value returning bytes.
        config: librdkafka settings passed through (``{"security.protocol": ...}``); a
            value written ``"${NAME}"`` is read from the environment variable
            ``NAME``, and values of secret-looking keys are never shown.
        name: the sink's name in status and dead letters (default: ``kafka``).
        flush_timeout: seconds the sink waits on stop for outstanding deliveries
            (what is left is logged).
    """

    kind = "kafka"

    def __init__(
        self,
        topic: str,
        *,
        bootstrap_servers: str,
        key: str | Callable[[Any], Hashable] | None = None,
        headers: HeaderSpec | None = None,
        encode: Encoder = "json",
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        flush_timeout: float = 10.0,
    ) -> None:
        super().__init__(name)
        self.topic = topic
        self.config: dict[str, Any] = {
            **PRODUCER_DEFAULTS,
            **(config or {}),
            "bootstrap.servers": bootstrap_servers,
        }
        if isinstance(key, str):
            field = key
            self.key: Callable[[Any], Hashable] | None = lambda value: value[field]
        else:
            self.key = key
        self.headers = headers
        self.encode = _encoder(encode)
        self.flush_timeout = flush_timeout
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self._producer: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reports: list[tuple[Event, Any]] = []
        self._outstanding = 0
        self._poller: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        # exactly-once: the source's transaction, and the records kept for it, by hold
        self._txn: Any = None
        self._held: list[tuple[Hold, list[Any]]] = []
        self._held_records = 0
        self.dropped = 0

    def bind(self, ctx: PipelineContext) -> None:
        super().bind(ctx)
        txn = ctx.transactions
        if txn is None:
            return
        owner = f"kafka sink {self.name!r}"
        mine = resolve_config({"bootstrap.servers": self.config["bootstrap.servers"]}, owner=owner)[
            "bootstrap.servers"
        ]
        theirs = resolve_config({"bootstrap.servers": txn.bootstrap_servers}, owner=txn.owner)[
            "bootstrap.servers"
        ]
        if not same_cluster(mine, theirs):
            raise ConfigurationError(
                f"kafka sink {self.name!r} of pipeline {ctx.pipeline!r} writes to {mine!r}, "
                f"another cluster than its exactly-once source ({theirs!r}): a Kafka "
                "transaction spans one cluster, so this sink cannot join it; write to the "
                "source's cluster, or use processing_guarantee='at_least_once'"
            )
        txn.join(self)
        self._txn = txn

    def describe(self) -> dict[str, Any]:
        info = {
            "kind": self.kind,
            "name": self.name,
            "topic": self.topic,
            "config": redact(self.config),
            "produced": self.produced,
            "delivered": self.delivered,
            "failed": self.failed,
            "outstanding": self._outstanding,
        }
        if self._txn is not None:
            info.update(exactly_once=True, held=self._held_records, dropped=self.dropped)
        return info

    def _open(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            config = resolve_config(self.config, owner=f"kafka sink {self.name!r}")
            self._producer = Producer(config)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"rxagent-kafka-sink-{self.name}"
            )
            self._idle = asyncio.Event()
            self._idle.set()
        return self._producer

    # -- loop side ---------------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        if self._txn is not None:
            self._keep(batch)
            return
        producer = self._open()
        ctx = batch.ctx
        metrics = ctx.stage(self.name)
        metrics.events_in += len(batch)
        key_fn, headers, encode, topic = self.key, self.headers, self.encode, self.topic
        events = batch.events(take=True)
        for i, event in enumerate(events):
            try:
                value = encode(event.value)
                key = _key_bytes(event.key if key_fn is None else key_fn(event.value))
                extra = headers(event) if callable(headers) else headers
                producer.produce(
                    topic,
                    value,
                    key,
                    headers=None if extra is None else dict(extra),
                    on_delivery=functools.partial(self._report, event),
                )
            except Exception as error:
                self.failed += 1
                try:
                    ctx.dead_letter(event, self.name, KafkaSinkError(f"cannot produce: {error!r}"))
                except StageError:
                    # fail_fast: the rows not produced yet end here, the pipeline fails
                    for later in events[i + 1 :]:
                        later.end()
                    raise
                continue
            self._outstanding += 1
            self.produced += 1
        if self._outstanding:
            assert self._idle is not None
            self._idle.clear()
            if self._poller is None or self._poller.done():
                self._poller = asyncio.get_running_loop().create_task(
                    self._poll_reports(), name=f"rxagent-kafka-sink-{self.name}"
                )

    # -- exactly-once (loop side) -------------------------------------------------------------

    def _keep(self, batch: Batch) -> None:
        """Encode each event, keep its record for the transaction, end the event."""
        ctx = batch.ctx
        metrics = ctx.stage(self.name)
        metrics.events_in += len(batch)
        key_fn, headers, encode, topic = self.key, self.headers, self.encode, self.topic
        held = self._held
        events = batch.events(take=True)
        kept = 0
        for i, event in enumerate(events):
            try:
                value = encode(event.value)
                key = _key_bytes(event.key if key_fn is None else key_fn(event.value))
                extra = headers(event) if callable(headers) else headers
            except Exception as error:
                self.failed += 1
                try:
                    ctx.dead_letter(event, self.name, KafkaSinkError(f"cannot encode: {error!r}"))
                except StageError:
                    for later in events[i + 1 :]:
                        later.end()
                    raise
                continue
            record = (topic, None, key, value, None if extra is None else list(extra.items()))
            hold = event.hold
            if held and held[-1][0] is hold:
                held[-1][1].append(record)
            else:
                held.append((hold, [record]))
            kept += 1
            event.end()
        self._held_records += kept
        metrics.events_out += kept

    def _take_ready(self) -> list[Any]:
        """The records whose events' partitions' watermarks passed them (for the
        transaction being committed); those of given-up events are dropped."""
        ready: list[Any] = []
        keep: list[tuple[Hold, list[Any]]] = []
        dropped = 0
        for hold, records in self._held:
            state = _ready(hold)
            if state is True:
                ready.extend(records)
            elif state is False:
                keep.append((hold, records))
            else:
                dropped += len(records)
        self._held = keep
        self._held_records -= len(ready) + dropped
        self.dropped += dropped
        self.produced += len(ready)
        return ready

    def _forget(self, flow: Flow, partitions: frozenset[Any]) -> None:
        """Drop the records of events of ``partitions`` (revoked: replayed elsewhere)."""
        keep: list[tuple[Hold, list[Any]]] = []
        dropped = 0
        for hold, records in self._held:
            if any(t.flow is flow and t.partition in partitions for t in _tickets(hold)):
                dropped += len(records)
            else:
                keep.append((hold, records))
        self._held = keep
        self._held_records -= dropped
        self.dropped += dropped

    async def _poll_reports(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._idle is not None
        while self._outstanding > 0:
            reports = await loop.run_in_executor(self._executor, self._poll, 0.1)
            self._settle(reports)
        self._idle.set()

    def _settle(self, reports: list[tuple[Event, Any]]) -> None:
        ctx = self.ctx
        assert ctx is not None
        metrics = ctx.stage(self.name)
        for event, error in reports:
            self._outstanding -= 1
            if error is None:
                self.delivered += 1
                metrics.events_out += 1
                event.end()
                continue
            self.failed += 1
            try:
                ctx.dead_letter(
                    event, self.name, KafkaSinkError(f"delivery to {self.topic!r} failed: {error}")
                )
            except StageError as failure:
                ctx.fail(failure, self.name)

    async def drain(self) -> None:
        # (exactly-once: events end when kept; the source's transactions write them)
        if self._idle is not None:
            await self._idle.wait()

    async def aclose(self) -> None:
        if self._producer is None:
            return
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(self._executor, self._producer.flush, self.flush_timeout)
        self._settle(self._take_reports())
        if left:
            log.warning(
                "kafka sink %r closed with %d messages undelivered to %r",
                self.name,
                left,
                self.topic,
            )
        assert self._executor is not None
        self._executor.shutdown(wait=False)
        self._producer = None
        if self._idle is not None:
            self._idle.set()

    # -- poll thread -------------------------------------------------------------------------

    def _report(self, event: Event, error: Any, _message: Any) -> None:
        self._reports.append((event, error))

    def _take_reports(self) -> list[tuple[Event, Any]]:
        reports, self._reports = self._reports, []
        return reports

    def _poll(self, timeout: float) -> list[tuple[Event, Any]]:
        self._producer.poll(timeout)
        return self._take_reports()


def _tickets(hold: Hold) -> list[Ticket]:
    """The source tickets behind a row's hold (through a buffer's leases, which
    stand for their rows' holds: ``underlying()``)."""
    if hold is None:
        return []
    if isinstance(hold, tuple):
        found: list[Ticket] = []
        for ticket, _count in hold:
            found.extend(_tickets(ticket))
        return found
    underlying = getattr(hold, "underlying", None)
    if underlying is not None:
        return [t for h in underlying() for t in _tickets(h)]
    return [hold]


def _ready(hold: Hold) -> bool | None:
    """True once the completion watermark of every ticket's partition passed it (its
    offsets are committed with the next transaction); None for a ticket given up
    (its partition was revoked: its events are replayed by the new owner)."""
    if isinstance(hold, Ticket) and hold.__class__ is Ticket:
        tickets: list[Ticket] = [hold]
    else:
        tickets = _tickets(hold)
    for ticket in tickets:
        if ticket.released:
            return None
        if ticket.last is None:
            if not ticket.done:
                return False
            continue
        mark = ticket.flow.watermark(ticket.partition)
        if mark is None or mark <= ticket.last:
            return False
    return True


class KafkaDeadLetters:
    """A dead-letter sink (``Pipeline(dead_letters=...)``) producing each letter to ``topic``.

    The message carries the event's original bytes (a value that is not bytes is
    encoded as JSON) and key, and headers ``error``, ``stage``, ``pipeline``, and
    where the event came from: ``topic``, ``partition`` and ``offset`` for a Kafka
    event, ``source``, ``partition`` and ``offset`` otherwise. ``put`` never blocks:
    it queues the message in librdkafka; a failed delivery is logged and counted in
    ``failed`` (the event itself has ended already: dead-lettering ends it).

    Args:
        topic: the dead-letter topic.
        bootstrap_servers: the brokers, ``host:port[,host:port...]``.
        config: librdkafka settings passed through (``{"security.protocol": ...}``); a
            value written ``"${NAME}"`` is read from the environment variable
            ``NAME``, and values of secret-looking keys are never shown.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap_servers: str,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.config: dict[str, Any] = {
            **PRODUCER_DEFAULTS,
            **(config or {}),
            "bootstrap.servers": bootstrap_servers,
        }
        self.produced = 0
        self.failed = 0
        self._producer: Any = None
        self._encode = _encoder("json")

    def put(self, letter: DeadLetter) -> None:
        """Produce ``letter`` to the topic without blocking (queued in librdkafka); a failed
        delivery is logged and counted in ``failed``."""
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(resolve_config(self.config, owner="kafka dead letters"))
        event = letter.event
        value = event.value
        raw = value if isinstance(value, bytes) or value is None else self._encode(value)
        headers = [
            ("error", f"{letter.error_type}: {letter.message}".encode()),
            ("stage", letter.stage.encode()),
        ]
        if letter.pipeline is not None:
            headers.append(("pipeline", letter.pipeline.encode()))
        position = event.position
        if position is not None:
            partition = position.partition
            if isinstance(partition, KafkaPartition):
                headers += [
                    ("topic", partition.topic.encode()),
                    ("partition", str(partition.partition).encode()),
                ]
            else:
                headers.append(("source", position.source.encode()))
                if partition is not None:
                    headers.append(("partition", str(partition).encode()))
            if position.offset is not None:
                headers.append(("offset", str(position.offset).encode()))
        self._producer.produce(
            self.topic, raw, _key_bytes(event.key), headers=headers, on_delivery=self._delivered
        )
        self.produced += 1
        self._producer.poll(0)

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failed += 1
            log.warning("dead-letter topic %r: delivery failed: %s", self.topic, error)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait (blocking) for the letters queued; returns how many are still undelivered."""
        if self._producer is None:
            return 0
        left: int = self._producer.flush(timeout)
        return left

    def close(self, timeout: float = 10.0) -> int:
        """Flush, then release the producer; returns how many letters stayed undelivered."""
        left = self.flush(timeout)
        self._producer = None
        return left
