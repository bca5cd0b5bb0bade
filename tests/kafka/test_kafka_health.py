"""Kafka source health: broker restarts that lose the topic and the group, outages
decided from the broker, and a consumer that stays in its group however long the
loop is blocked."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _helpers import until
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import ENV, _free_port, _start_tansu, _stop

from rxagent import Pipeline, StateStore
from rxagent.events import Batch, Event
from rxagent.kafka import KafkaSource
from rxagent.runtime import PipelineState
from rxagent.sinks import ListSink, Sink, StateSink


class MemoryBroker:
    """Tansu with memory storage that a test kills and starts again on the same
    port: everything (topics, records, groups) is gone after a restart."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: Any = None
        self.start()

    def start(self) -> None:
        self.process, _ = _start_tansu(self.port)

    def kill(self) -> None:
        _stop(self.process, signal.SIGKILL)


@pytest.fixture
def memory_broker() -> Iterator[MemoryBroker]:
    if __import__("os").environ.get(ENV):
        pytest.skip(f"{ENV} points at an external cluster, which this test cannot restart")
    broker = MemoryBroker()
    try:
        yield broker
    finally:
        _stop(broker.process)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=10)[topic].result(10)
    deadline = time.monotonic() + 5
    while len(admin.list_topics(topic, timeout=5).topics[topic].partitions) < partitions:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def produce(bootstrap: str, topic: str, ids: range, partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in ids:
        producer.produce(topic, json.dumps({"id": i}).encode(), partition=i % partitions)
    assert producer.flush(15) == 0, "not every message was delivered"


def _group_source(bootstrap: str, topic: str, **options: Any) -> KafkaSource:
    """A source in a new group, committing often, whose session is short enough for
    the group to form again quickly after a broker restart."""
    return KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        commit_interval=0.1,
        config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        **options,
    )


async def _restart_without_topic(
    broker: MemoryBroker, source: KafkaSource, topic: str, partitions: int, ids: range
) -> None:
    """Kill the broker (its memory storage loses every topic and group), wait until
    ``source`` sees it down, start it again and fill a new topic of the same name."""
    broker.kill()
    await until(lambda: source.describe()["brokers_down"], 15)
    broker.start()
    create_topic(broker.bootstrap, topic, partitions)
    produce(broker.bootstrap, topic, ids, partitions)


@pytest.mark.slow
async def test_a_broker_restarted_without_its_topic_and_group_is_rejoined(
    memory_broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rxagent")
    bootstrap = memory_broker.bootstrap
    topic = f"vanish-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 4)
    produce(bootstrap, topic, range(100), 4)
    sink = ListSink()
    source = _group_source(bootstrap, topic)
    pipeline = Pipeline("vanish", source).to(sink)
    await pipeline.start()
    try:
        await until(lambda: len(sink.values) == 100, 20)
        await _restart_without_topic(memory_broker, source, topic, 4, range(100, 600))
        deadline = time.monotonic() + 30
        while {v["id"] for v in sink.values} < set(range(600)):
            assert pipeline.status().state is PipelineState.RUNNING, pipeline.status()
            assert time.monotonic() < deadline, (
                f"{sorted(set(range(600)) - {v['id'] for v in sink.values})} missing; "
                f"{source.describe()}"
            )
            await asyncio.sleep(0.05)
    finally:
        await pipeline.stop()
        await source.wait_closed()
    described = source.describe()
    assert described["rejoins"] >= 1, described
    messages = [r.getMessage() for r in caplog.records if r.name == "rxagent"]
    rejoined = [m for m in messages if "rejoining group" in m]
    assert rejoined, messages
    assert "the topic was deleted and created again" in rejoined[0] or "is gone" in rejoined[0]
    # the outage ends on the brokers' answer, never on a message fetched before it
    assert not any("a message arrived" in m for m in messages), messages
    assert sum("brokers reachable again" in m for m in messages) == 1, messages


class _Holding(Sink):
    """Keeps each event (its credit with it) until the test releases them."""

    kind = "holding"

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Event] = []
        self.ids: set[int] = set()

    def on_batch(self, batch: Batch) -> None:
        self.held.extend(batch.events(take=True))

    def release(self) -> None:
        held, self.held = self.held, []
        for event in held:
            self.ids.add(event.value["id"])
            event.end()


@pytest.mark.slow
async def test_a_source_paused_when_it_rejoins_its_group_reads_again(
    memory_broker: MemoryBroker,
) -> None:
    """A rejoin while every partition is paused (no credit: a sink holds the events).
    librdkafka keeps a partition's pause across the unassign and the next assign of
    it, so the source resumes what it is assigned again, or it would wait for ever."""
    bootstrap = memory_broker.bootstrap
    topic = f"paused-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    produce(bootstrap, topic, range(100), 2)
    sink = _Holding()
    source = _group_source(bootstrap, topic, credit=16, batch_size=8)
    pipeline = Pipeline("paused", source).to(sink)
    await pipeline.start()
    try:
        # no credit left: the source pauses its partitions and keeps polling
        await until(lambda: len(sink.held) == 16 and source.describe()["pauses"] >= 1, 20)
        await _restart_without_topic(memory_broker, source, topic, 2, range(100, 300))
        # the topic is new (it ends before what was read): rejoined, still paused
        await until(lambda: source.describe()["rejoins"] >= 1, 20)
        assert source.describe()["pauses"] >= 1
        deadline = time.monotonic() + 30
        while not sink.ids >= set(range(100, 300)):
            assert pipeline.status().state is PipelineState.RUNNING, pipeline.status()
            assert time.monotonic() < deadline, (
                f"{len(set(range(100, 300)) - sink.ids)} ids missing; {source.describe()}"
            )
            sink.release()
            await asyncio.sleep(0.05)
    finally:
        sink.release()
        await pipeline.stop()
        await source.wait_closed()


@pytest.mark.slow
async def test_a_slow_reducer_blocking_the_loop_does_not_get_the_consumer_evicted(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """50 ms per event on the loop, batches of 100 (5 s each) and a max.poll.interval
    of 3 s: the consumer thread polls (paused) on its own, the group keeps it."""
    caplog.set_level(logging.INFO, logger="rxagent")
    topic = kafka_topic(1)
    total = 300
    produce(kafka_bootstrap, topic, range(total), 1)
    store = StateStore("counts")
    seen: list[int] = []

    def slow(old: Any, event: Any) -> Any:
        time.sleep(0.05)  # blocks the loop, as a slow reducer does
        seen.append(event.value["id"])
        return (old or 0) + 1

    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        batch_size=100,
        commit_interval=0.2,
        config={
            "max.poll.interval.ms": 3000,
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 500,
        },
    )
    pipeline = Pipeline("slow", source).to(StateSink(store, key=lambda v: "n", reducer=slow))
    await pipeline.start()
    try:
        await until(lambda: len(seen) >= total, 60)
        await asyncio.sleep(1.0)
    finally:
        await pipeline.stop()
        await source.wait_closed()
    described = source.describe()
    messages = [r.getMessage() for r in caplog.records if r.name == "rxagent"]
    assert not any("MAX_POLL" in m for m in messages), messages
    assert described["revocations"] <= 1, described  # the final one, on stop
    assert described["assignments"] == 1, described
    assert sorted(seen) == list(range(total)), "an event was read twice or lost"
    assert described["unattended_polls"] > 0, described


async def test_a_source_that_assigns_its_partitions_is_connected_without_a_group(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Callable[..., None]
) -> None:
    """assign=True joins no group, so no rebalance ever says "assigned": the health
    is connected once the metadata answered and the partitions are taken."""
    topic = kafka_topic(2)
    kafka_produce(topic, [(b"k", b'{"n": 1}')])
    source = KafkaSource(
        topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}", assign=True
    )
    sink = ListSink()
    pipeline = Pipeline("assigned", source).to(sink)
    await pipeline.start()
    try:
        await until(lambda: len(sink.values) == 1, 20)
        assert source.describe()["health"]["state"] == "connected"
    finally:
        await pipeline.drain(timeout=5)
        await source.wait_closed()
