"""KafkaSource against a real broker: state, dead letters, backpressure, commits."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _helpers import until
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.events import Batch, Event
from rxagent.kafka import KafkaPartition, KafkaSource
from rxagent.runtime import PipelineState
from rxagent.sinks import ListSink, MemoryDeadLetters, Sink

if TYPE_CHECKING:
    from conftest import RestartableBroker  # tests/kafka/conftest.py, a fixture's type

Produce = Callable[..., None]


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def committed(bootstrap: str, group_id: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        parts = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
        return [tp.offset for tp in parts]
    finally:
        consumer.close()


class HoldingSink(Sink):
    """Keeps each event; ends it after ``delay`` seconds, or when released."""

    kind = "holding"

    def __init__(self, delay: float | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.held: list[Event] = []
        self.ended: list[Event] = []

    def on_batch(self, batch: Batch) -> None:
        events = batch.events(take=True)
        self.held.extend(events)
        if self.delay is not None:
            asyncio.get_running_loop().call_later(self.delay, self._end, events)

    def _end(self, events: list[Event]) -> None:
        for event in events:
            event.end()
            self.ended.append(event)

    def release(self, test: Callable[[Event], bool] = lambda _e: True) -> None:
        self._end([e for e in self.held if e.hold is not None and test(e)])


async def test_n_events_fold_into_the_expected_state_and_offsets_are_committed(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic = kafka_topic(3)
    n = 3000
    syms = [f"s{i}" for i in range(17)]
    messages = [
        (syms[i % 17].encode(), json.dumps({"sym": syms[i % 17], "qty": i}).encode())
        for i in range(n)
    ]
    kafka_produce(topic, messages)
    expected: dict[str, int] = {}
    for i in range(n):
        expected[syms[i % 17]] = expected.get(syms[i % 17], 0) + i
    store = StateStore("positions")
    gid = group()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        assign=True,
        until_eof=True,
        credit=256,
        batch_size=64,
    )
    lags: list[int | None] = []
    by_partition: list[dict[str, int]] = []
    pipeline = (
        Pipeline("positions", source)
        .pipe(
            ops.filter(lambda v: v["qty"] >= 0),
            ops.tap(lambda v: lags.append(source._lag())),
            ops.tap(lambda v: by_partition.append(source.describe()["partition_lag"])),
        )
        .to(store.sink(reducer=lambda old, ev: (old or 0) + ev.value["qty"]))
    )
    status = await asyncio.wait_for(pipeline.run(), 30)
    # the lag (behind the high watermarks) falls to 0 as the topic is read to its end
    assert max(x for x in lags if x is not None) > 0
    assert lags[-1] == 0
    # and per partition, as the dashboard shows it: "topic/partition" -> messages behind
    assert by_partition[-1]
    assert all(key.startswith(f"{topic}/") for key in by_partition[-1])
    assert set(by_partition[-1].values()) == {0}
    assert max(sum(lag.values()) for lag in by_partition) > 0
    await source.wait_closed()
    assert status.completed
    assert dict(store.snapshot) == expected
    assert status.flow["peak_in_flight"] <= 256
    assert source.emitted == n
    offsets = committed(kafka_bootstrap, gid, topic, 3)
    assert sum(offsets) == n
    # keys are decoded text, positions name topic and partition
    entry = store.snapshot.entry("s1")
    assert entry.position is not None
    assert isinstance(entry.position.partition, KafkaPartition)
    assert entry.position.partition.topic == topic


@pytest.mark.parametrize("read", [True, False], ids=["metadata", "values-only"])
async def test_keys_times_and_headers_are_read_unless_turned_off(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, read: bool
) -> None:
    topic = kafka_topic(1)
    kafka_produce(topic, [(b"k1", b'{"n": 1}')], headers=[("trace", b"t-1")])
    options = {} if read else {"key_decode": None, "timestamps": False, "headers": False}
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        assign=True,
        until_eof=True,
        **options,
    )
    sink = HoldingSink(delay=0)
    await asyncio.wait_for(Pipeline("meta", source).to(sink).run(), 30)
    [event] = sink.held
    assert event.value == {"n": 1}
    if read:
        assert event.key == "k1"
        assert event.time is not None
        assert abs(event.time - time.time()) < 60
        assert event.headers == {"trace": b"t-1"}
    else:
        assert (event.key, event.time, event.headers) == (None, None, None)


async def test_a_restarted_source_starts_at_the_committed_offsets(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic = kafka_topic(1)
    gid = group()
    kafka_produce(topic, [json.dumps(i).encode() for i in range(50)])

    async def read() -> list[int]:
        sink = ListSink()
        source = KafkaSource(
            topic, bootstrap_servers=kafka_bootstrap, group_id=gid, assign=True, until_eof=True
        )
        await asyncio.wait_for(Pipeline("p", source).to(sink).run(), 20)
        await source.wait_closed()
        return list(sink.values)

    assert await read() == list(range(50))
    kafka_produce(topic, [json.dumps(i).encode() for i in range(50, 60)])
    assert await read() == list(range(50, 60))


async def test_a_poison_message_is_dead_lettered_and_the_stream_goes_on(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic = kafka_topic(1)
    dlq = kafka_topic(1, prefix="dlq")
    kafka_produce(topic, [b"1", b"2", b"{not json", b"4", b"\xff"])
    letters = MemoryDeadLetters()
    sink = ListSink()
    gid = group()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        assign=True,
        until_eof=True,
        dead_letter_topic=dlq,
    )
    status = await asyncio.wait_for(Pipeline("p", source, dead_letters=letters).to(sink).run(), 20)
    await source.wait_closed()
    assert status.completed
    assert sink.values == [1, 2, 4]
    assert [letter.event.position.offset for letter in letters.letters] == [2, 4]
    assert "cannot decode" in letters.letters[0].message
    # the offset moved on past the last (poison) message
    assert committed(kafka_bootstrap, gid, topic, 1) == [5]
    reader = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group(), "auto.offset.reset": "earliest"}
    )
    try:
        reader.assign([TopicPartition(dlq, 0)])
        got = reader.consume(2, 10)
    finally:
        reader.close()
    assert [m.value() for m in got] == [b"{not json", b"\xff"]
    headers = dict(got[0].headers())
    assert headers["topic"] == topic.encode()
    assert headers["partition"] == b"0"
    assert headers["offset"] == b"2"
    assert headers["stage"] == b"kafka"
    assert b"cannot decode" in headers["error"]


async def test_without_a_group_the_loop_reads_what_is_fetched_itself_in_order(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic = kafka_topic(2)
    for p in (0, 1):
        kafka_produce(topic, [json.dumps(i).encode() for i in range(5000)], partition=p)
    sink = ListSink()
    gid = group()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        assign=True,
        until_eof=True,
        credit=1024,
        batch_size=256,
    )
    status = await asyncio.wait_for(Pipeline("direct", source).to(sink).run(), 30)
    await source.wait_closed()
    assert status.completed
    # a busy topic: most batches are taken by the loop, without a thread hop
    assert source.loop_reads > source.thread_reads >= 1, source.describe()
    # every message once, each partition in order
    for p in (0, 1):
        offsets = [e.position.offset for e in sink.events if e.position.partition.partition == p]
        assert offsets == list(range(5000))
    assert committed(kafka_bootstrap, gid, topic, 2) == [5000, 5000]


@pytest.mark.parametrize("assign", [True, False], ids=["assigned", "group"])
async def test_pauses_without_credit_and_resumes_where_it_stopped_read_by_loop_or_thread(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, assign: bool
) -> None:
    topic = kafka_topic(2)
    for p in (0, 1):
        kafka_produce(topic, [json.dumps(i).encode() for i in range(p, 400, 2)], partition=p)
    sink = HoldingSink()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        assign=assign,
        # (a short session, as the other group tests: the group forms quickly)
        config={"session.timeout.ms": 2000, "heartbeat.interval.ms": 200},
        credit=40,
        batch_size=16,
    )
    pipeline = Pipeline("paused", source).to(sink)
    await pipeline.start()
    try:
        for _ in range(3):
            await until(lambda: len(sink.held) - len(sink.ended) == 40, 15)
            # no credit for longer than the keepalive: everything assigned is paused
            await asyncio.sleep(source.keepalive * 2.5)
            sink.release()
        assert source.pauses >= 3
        deadline = time.monotonic() + 15
        while len(sink.ended) < 400:
            assert time.monotonic() < deadline, f"{len(sink.ended)} of 400 processed"
            sink.release()
            await asyncio.sleep(0.01)
    finally:
        await pipeline.stop()
        await source.wait_closed()
    # nothing skipped or read twice across pauses (resume seeks back), in order
    assert sorted(e.value for e in sink.held) == list(range(400))
    for p in (0, 1):
        offsets = [e.position.offset for e in sink.held if e.position.partition.partition == p]
        assert offsets == list(range(200))
    # reads by the loop itself happen only without a group
    assert (source.loop_reads > 0) is assign
    assert source.thread_reads > 0


async def test_commits_never_pass_an_event_still_in_processing(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic = kafka_topic(1)
    gid = group()
    kafka_produce(topic, [json.dumps(i).encode() for i in range(100)])
    sink = HoldingSink()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        assign=True,
        commit_interval=0.05,
        batch_size=10,
    )
    pipeline = Pipeline("p", source).to(sink)

    def committed_now() -> int:
        return committed(kafka_bootstrap, gid, topic, 1)[0]

    await pipeline.start()
    try:
        await until(lambda: len(sink.held) == 100)
        # everything but offsets 37 and 80 processed
        sink.release(lambda e: e.value not in (37, 80))
        await until(lambda: committed_now() > 0)
        await asyncio.sleep(0.3)
        # the batch (ticket) holding 37 is not complete: commits stop at its start
        assert 0 < committed_now() <= 37
        sink.release(lambda e: e.value == 37)
        await until(lambda: committed_now() > 37)
        await asyncio.sleep(0.3)
        assert committed_now() <= 80
        sink.release()
        await until(lambda: committed_now() == 100)
    finally:
        await pipeline.stop()
        await source.wait_closed()


@pytest.mark.slow
async def test_a_sink_slower_than_max_poll_interval_does_not_get_the_consumer_evicted(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic = kafka_topic(2)
    gid = group()
    kafka_produce(topic, [json.dumps(i).encode() for i in range(0, 60, 2)], partition=0)
    kafka_produce(topic, [json.dumps(i).encode() for i in range(1, 60, 2)], partition=1)
    sink = HoldingSink()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        config={
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 200,
            "max.poll.interval.ms": 2000,
        },
        credit=8,
        batch_size=4,
    )
    pipeline = Pipeline("slow", source).to(sink)
    await pipeline.start()
    try:
        await until(lambda: len(sink.held) == 8, 15)
        # the first events take longer than max.poll.interval.ms to process
        await asyncio.sleep(2.6)
        assert len(sink.held) == 8
        assert source.pauses >= 1
        deadline = time.monotonic() + 15
        while len(sink.ended) < 60:
            assert time.monotonic() < deadline, f"{len(sink.ended)} of 60 processed"
            sink.release()
            await asyncio.sleep(0.02)
        await until(lambda: committed(kafka_bootstrap, gid, topic, 2) == [30, 30])
        # one assignment, never evicted
        assert (source.assignments, source.revocations) == (1, 0)
    finally:
        await pipeline.stop()
        await source.wait_closed()
    # no event skipped or repeated across pauses
    assert sorted(e.value for e in sink.held) == list(range(60))
    for p in (0, 1):
        offsets = [e.position.offset for e in sink.held if e.position.partition.partition == p]
        assert offsets == list(range(30))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
async def test_two_sources_in_one_group_split_the_partitions_and_take_over(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, strategy: str
) -> None:
    topic = kafka_topic(4)
    gid = group()
    config = {
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 200,
        "max.poll.interval.ms": 2000,
        "partition.assignment.strategy": strategy,
    }

    def member(name: str) -> tuple[KafkaSource, HoldingSink, Pipeline]:
        source = KafkaSource(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=gid,
            config=config,
            name=name,
            commit_interval=0.1,
        )
        sink = HoldingSink(delay=0.01)
        return source, sink, Pipeline(name, source).to(sink)

    def values(*sinks: HoldingSink) -> set[int]:
        return {e.value for s in sinks for e in s.ended}

    a_source, a_sink, a = member("a")
    b_source, b_sink, b = member("b")
    await a.start()
    try:
        await until(lambda: len(a_source.describe()["assignment"]) == 4, 15)
        kafka_produce(topic, [json.dumps(i).encode() for i in range(100)])
        await until(lambda: values(a_sink) == set(range(100)))
        await b.start()
        await until(
            lambda: (
                len(a_source.describe()["assignment"]) == 2
                and len(b_source.describe()["assignment"]) == 2
            ),
            15,
        )
        # keyed, so the messages spread over all four partitions (unkeyed ones may all
        # go to one partition, librdkafka's sticky partitioner, and that one may be a's)
        kafka_produce(topic, [(b"%d" % i, json.dumps(i).encode()) for i in range(100, 200)])
        await until(lambda: values(a_sink, b_sink) == set(range(200)))
        assert values(b_sink)  # b took its share
        # b leaves: a takes its partitions over, from b's commits
        await b.stop()
        await b_source.wait_closed()
        await until(lambda: len(a_source.describe()["assignment"]) == 4, 15)
        kafka_produce(topic, [json.dumps(i).encode() for i in range(200, 300)])
        await until(lambda: values(a_sink, b_sink) == set(range(300)))
    finally:
        await b.stop()
        await a.stop()
        await a_source.wait_closed()
    # at least once, and here (commits on revoke) exactly once
    seen = [e.value for s in (a_sink, b_sink) for e in s.ended]
    assert sorted(seen) == list(range(300))
    assert a_source.revocations >= 1


def test_a_pipeline_killed_mid_stream_loses_nothing_after_restart(
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    kafka_produce: Produce,
    tmp_path: Path,
) -> None:
    topic = kafka_topic(2)
    gid = group()
    n = 3000
    kafka_produce(topic, [json.dumps({"id": i}).encode() for i in range(n)])
    out = tmp_path / "processed.txt"
    worker = [sys.executable, str(Path(__file__).with_name("crash_worker.py"))]
    args = [kafka_bootstrap, topic, gid, str(out)]

    def lines() -> int:
        return len(out.read_bytes().splitlines()) if out.exists() else 0

    kills = []
    for _ in range(3):
        # kill each run once it processed 700 more events (commits run every 50 ms)
        kill_at = lines() + 700
        process = subprocess.Popen([*worker, *args])
        try:
            deadline = time.monotonic() + 30
            while lines() < kill_at:
                assert process.poll() is None, "the worker exited early"
                assert time.monotonic() < deadline, "the worker made no progress"
                time.sleep(0.002)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        kills.append(lines())
    subprocess.run([*worker, *args, "--until-eof"], check=True, timeout=60)
    ids = [int(line) for line in out.read_bytes().splitlines()]
    missing = set(range(n)) - set(ids)
    # the figures the closing note of issue 5 quotes (pytest -s shows them)
    print(
        f"crash test: {n} ids produced, SIGKILL at {kills} processed lines, "
        f"{len(ids)} lines in all ({len(ids) - len(set(ids))} redelivered), "
        f"{len(missing)} missing"
    )
    assert not missing, f"killed at {kills} lines; {len(missing)} ids missing"
    # the restarts resumed from commits, not from the start
    assert len(ids) - kills[-1] < n


@pytest.mark.slow
async def test_a_paused_member_revoked_with_events_in_flight_loses_nothing(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce
) -> None:
    topic = kafka_topic(4)
    gid = group()
    config = {
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 200,
        "max.poll.interval.ms": 2000,
    }
    kafka_produce(topic, [json.dumps(i).encode() for i in range(200)])
    a_source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        config=config,
        name="a",
        credit=8,
        batch_size=8,
        revoke_timeout=0.3,
    )
    a_sink = HoldingSink()
    a = Pipeline("a", a_source).to(a_sink)
    b_source = KafkaSource(
        topic, bootstrap_servers=kafka_bootstrap, group_id=gid, config=config, name="b"
    )
    b_sink = HoldingSink(delay=0.0)
    b = Pipeline("b", b_source).to(b_sink)
    await a.start()
    try:
        # a holds its whole credit: it pauses and keeps polling
        await until(lambda: len(a_sink.held) == 8 and a_source.pauses >= 1, 15)
        await b.start()
        # the rebalance revokes a's partitions while its events are in flight (bounded wait);
        # a, still without credit, emits nothing more
        await until(lambda: len(b_source.describe()["assignment"]) == 2, 15)
        await asyncio.sleep(0.5)
        assert len(a_sink.held) == 8
        assert a_source.revocations >= 1
        # b reads its partitions in full, including what a held there uncommitted
        a_sink.delay = 0.0
        a_sink.release()
        await until(lambda: {e.value for s in (a_sink, b_sink) for e in s.ended} == set(range(200)))
    finally:
        await b.stop()
        await a.stop()
        await a_source.wait_closed()
        await b_source.wait_closed()


@pytest.mark.slow
async def test_the_source_reconnects_after_a_broker_restart_and_loses_nothing(
    restartable_kafka: RestartableBroker, caplog: pytest.LogCaptureFixture
) -> None:
    broker = restartable_kafka
    bootstrap = broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 2, 1)], operation_timeout=10)[topic].result(10)
    gid = group()
    n_before, n_after = 400, 200

    def produce(ids: range) -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for i in ids:
            producer.produce(topic, json.dumps({"id": i}).encode(), partition=i % 2)
        assert producer.flush(15) == 0, "not every message was delivered"

    produce(range(n_before))
    sink = HoldingSink()
    # credit bounds what is read ahead: most of the first events are still in the broker
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=gid,
        credit=64,
        batch_size=16,
        commit_interval=0.1,
        # Tansu holds a join for about the session timeout: keep it short (as above)
        config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    pipeline = Pipeline("restart", source).to(sink)

    def ids() -> set[int]:
        return {e.value["id"] for e in sink.ended}

    def running() -> bool:
        return pipeline.status().state is PipelineState.RUNNING

    await pipeline.start()
    try:
        # some processed and committed, 64 in flight when the broker goes
        await until(lambda: len(sink.held) == 64, 15)
        sink.release(lambda e: e.value["id"] < 40)
        await until(lambda: max(committed(bootstrap, gid, topic, 2)) > 0, 10)
        # credit comes back in batches (16): the source reads on until it holds at least 49
        await until(lambda: len(sink.held) - len(sink.ended) > 48, 10)
        before = committed(bootstrap, gid, topic, 2)
        caplog.set_level(logging.INFO, logger="rxagent")
        broker.stop(signal.SIGKILL)
        # the outage: events in flight end meanwhile (their commits must wait), and the
        # pipeline stays running; librdkafka reports every broker down
        await until(lambda: source.describe()["brokers_down"], 15)
        sink.release()
        await asyncio.sleep(1.0)
        assert running(), pipeline.status()
        broker.start()
        # the restarted broker kept the topic, its records and the group's commits
        after = committed(bootstrap, gid, topic, 2)
        assert all(a >= b for a, b in zip(after, before, strict=True)), (before, after)
        produce(range(n_before, n_before + n_after))
        deadline = time.monotonic() + 60
        while ids() != set(range(n_before + n_after)):
            assert running(), pipeline.status()
            assert time.monotonic() < deadline, (
                f"{len(set(range(n_before + n_after)) - ids())} ids missing; {source.describe()}"
            )
            sink.release()
            await asyncio.sleep(0.02)
        await until(lambda: sum(committed(bootstrap, gid, topic, 2)) == n_before + n_after, 15)
        assert running()
    finally:
        await pipeline.stop()
        await source.wait_closed()
    described = source.describe()
    assert (described["brokers_down"], described["outages"]) == (False, 1)
    messages = [r.getMessage() for r in caplog.records if r.name == "rxagent"]
    assert any("keeps reconnecting" in m for m in messages), messages
    assert any("reachable again" in m for m in messages), messages


def test_the_consumer_thread_never_keeps_the_process_from_exiting() -> None:
    # a librdkafka call that never returns must not hang the interpreter's exit
    code = (
        "import time\n"
        "from rxagent.kafka.consumer import DaemonThread\n"
        "t = DaemonThread('stuck')\n"
        "f = t.submit(time.sleep, 600)\n"
        "print(t.submit(sum, [1, 2]).done() or 'queued')\n"
        "t.shutdown(wait=False)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30


async def test_a_consumer_close_that_never_returns_does_not_hang_the_stop(
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    kafka_produce: Produce,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from rxagent.kafka import consumer as consumer_module

    topic = kafka_topic(1)
    kafka_produce(topic, [json.dumps(i).encode() for i in range(10)])
    real_close = consumer_module.ConsumerThread.close

    def close_and_hang(self: consumer_module.ConsumerThread, offsets: list[object]) -> None:
        real_close(self, offsets)  # type: ignore[arg-type]
        time.sleep(30)  # as librdkafka's unassign was once seen to, forever

    monkeypatch.setattr(consumer_module.ConsumerThread, "close", close_and_hang)
    monkeypatch.setattr(consumer_module, "_CLOSE_GRACE", 0.5)
    sink = ListSink()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        assign=True,
        until_eof=True,
        close_timeout=0.5,
    )
    status = await asyncio.wait_for(Pipeline("hang", source).to(sink).run(), 30)
    assert status.completed
    started = time.monotonic()
    await asyncio.wait_for(source.wait_closed(), 10)
    assert time.monotonic() - started < 5
    assert "did not close within" in caplog.text
    assert [e.value for e in sink.events] == list(range(10))
