"""KafkaSink on a real broker: an event ends once delivered; failures are dead letters."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from rxagent import Pipeline, sources
from rxagent import operators as ops
from rxagent.kafka import KafkaDeadLetters, KafkaSink, KafkaSource
from rxagent.sinks import ListSink, MemoryDeadLetters

Produce = Callable[..., None]


def read_back(bootstrap: str, topic: str, n: int, partitions: int = 1) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        got: list[Any] = []
        for _ in range(50):
            got.extend(m for m in consumer.consume(n - len(got), 0.2) if m.error() is None)
            if len(got) >= n:
                break
        return got
    finally:
        consumer.close()


async def test_the_sink_produces_every_event_with_key_and_headers(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(1)
    orders = [{"id": f"o{i}", "qty": i} for i in range(300)]
    sink = KafkaSink(topic, bootstrap_servers=kafka_bootstrap, headers={"origin": "test"})
    pipeline = Pipeline("out", sources.memory(orders)).pipe(ops.key_by("id")).to(sink)
    status = await asyncio.wait_for(pipeline.run(), 20)
    # the pipeline completed: every row ended, so every delivery was confirmed
    assert status.completed
    assert (sink.produced, sink.delivered, sink.failed) == (300, 300, 0)
    messages = read_back(kafka_bootstrap, topic, 300)
    assert [json.loads(m.value()) for m in messages] == orders
    assert [m.key() for m in messages] == [o["id"].encode() for o in orders]
    assert dict(messages[0].headers()) == {"origin": b"test"}


async def test_kafka_to_kafka_commits_only_what_was_delivered(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    commands, results = kafka_topic(2), kafka_topic(1, prefix="results")
    kafka_produce(commands, [(b"k%d" % i, json.dumps({"n": i}).encode()) for i in range(200)])
    gid = f"g-{uuid.uuid4().hex[:8]}"
    source = KafkaSource(
        commands, bootstrap_servers=kafka_bootstrap, group_id=gid, assign=True, until_eof=True
    )
    sink = KafkaSink(results, bootstrap_servers=kafka_bootstrap, key="n")
    pipeline = (
        Pipeline("worker", source)
        .pipe(ops.map(lambda v: {"n": v["n"], "sq": v["n"] ** 2}))
        .to(sink)
    )
    status = await asyncio.wait_for(pipeline.run(), 20)
    await source.wait_closed()
    assert status.completed
    out = sorted(json.loads(m.value())["n"] for m in read_back(kafka_bootstrap, results, 200))
    assert out == list(range(200))
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": gid})
    try:
        offsets = reader.committed([TopicPartition(commands, p) for p in (0, 1)], timeout=10)
    finally:
        reader.close()
    assert sum(tp.offset for tp in offsets) == 200


async def test_undeliverable_and_unencodable_events_go_to_dead_letters() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed

    def encode(value: Any) -> bytes:
        if value == 3:
            raise ValueError("three is not allowed")
        return json.dumps(value).encode()

    letters = MemoryDeadLetters()
    sink = KafkaSink(
        "nowhere",
        bootstrap_servers=dead,
        encode=encode,
        config={"message.timeout.ms": 300, "log_level": 0},
    )
    pipeline = Pipeline("out", sources.memory(range(5)), dead_letters=letters).to(sink)
    status = await asyncio.wait_for(pipeline.run(), 20)
    assert status.completed
    assert sorted(letter.event.value for letter in letters.letters) == [0, 1, 2, 3, 4]
    messages = {letter.event.value: letter.message for letter in letters.letters}
    assert "three is not allowed" in messages[3]
    assert "delivery to 'nowhere' failed" in messages[0]
    assert (sink.delivered, sink.failed) == (0, 5)


async def test_events_failing_in_any_stage_go_to_the_dead_letter_topic(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic, dlq = kafka_topic(1), kafka_topic(1, prefix="dlq")
    kafka_produce(topic, [(b"k%d" % i, json.dumps(i).encode()) for i in range(6)])

    def invert(value: int) -> float:
        return 1 / (value - 3)

    letters = KafkaDeadLetters(dlq, bootstrap_servers=kafka_bootstrap)
    sink = ListSink()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        assign=True,
        until_eof=True,
    )
    pipeline = Pipeline("inv", source, dead_letters=letters).pipe(ops.map(invert)).to(sink)
    status = await asyncio.wait_for(pipeline.run(), 20)
    await source.wait_closed()
    assert status.completed
    assert len(sink.values) == 5
    assert letters.close() == 0
    (message,) = read_back(kafka_bootstrap, dlq, 1)
    assert json.loads(message.value()) == 3
    assert message.key() == b"k3"
    headers = dict(message.headers())
    assert headers["error"].startswith(b"ZeroDivisionError")
    assert headers["stage"] == b"map"
    assert headers["pipeline"] == b"inv"
    assert (headers["topic"], headers["partition"], headers["offset"]) == (
        topic.encode(),
        b"0",
        b"3",
    )
