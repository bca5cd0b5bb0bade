"""Exactly-once (``processing_guarantee="exactly_once"``): Kafka -> per-key count in a
durable store + a Kafka sink writing each input's id, against a real broker, with
worker processes stopped and killed (docs/state.md, "Exactly-once").

What is checked, always with ``isolation.level=read_committed`` readers: the output
topic holds each input id exactly once; the consumer group's committed offsets reach
the end of the input; the changelog's final entries equal the true counts and each
key's changes never fall — and, in the SIGKILL test, rise strictly (a change of an
aborted transaction, read, would repeat a count a replay wrote again).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import pickle
import queue
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import eos_worker
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from conftest import ENV
from test_kafka_state import Worker

from rxagent import Pipeline, StateStore
from rxagent.config import loads
from rxagent.events import Position
from rxagent.exceptions import ConfigurationError
from rxagent.kafka import KafkaPartition, KafkaSink, KafkaSource
from rxagent.kafka.changelog import changelog_topic

Produce = Callable[..., None]
WORKER = [sys.executable, str(Path(__file__).with_name("eos_worker.py"))]
KEYS = 12

#: Why the SIGKILL test cannot run against the broker the suite starts.
TANSU_LEAKS_ABORTED = (
    "Tansu 0.6.0, the broker the suite starts, hands records of aborted transactions to "
    "read_committed readers (commit, abort, commit -> a read_committed consumer receives "
    f"all three), so exactly-once across SIGKILL cannot hold on it; set {ENV} to a real "
    "Kafka cluster to run this test"
)


def produce_inputs(produce: Produce, topic: str, n: int) -> None:
    produce(
        topic,
        [(f"k{i % KEYS}", json.dumps({"id": i, "key": f"k{i % KEYS}"}).encode()) for i in range(n)],
    )


def truth(n: int) -> dict[str, int]:
    return dict(collections.Counter(f"k{i % KEYS}" for i in range(n)))


def read_committed(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record of ``topic`` a read_committed reader gets: (partition, key, value)."""
    return [(p, key, value) for p, _, key, value in _read(bootstrap, topic)[0]]


def _read(
    bootstrap: str, topic: str
) -> tuple[list[tuple[int, int, bytes | None, bytes | None]], dict[int, int]]:
    """Every record a read_committed reader gets (partition, offset, key, value), and
    each partition's end offset (where the end was reported: Tansu under-reports
    high watermarks)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        ends: dict[int, int] = {}
        records: list[tuple[int, int, bytes | None, bytes | None]] = []
        idle = 0
        while len(ends) < len(partitions):
            message = consumer.poll(0.5)
            if message is None:
                idle += 1
                assert idle < 120, f"reading {topic}: only {ends} reached their end"
                continue
            idle = 0
            error = message.error()
            if error is None:
                records.append(
                    (message.partition(), message.offset(), message.key(), message.value())
                )
            elif error.code() == KafkaError._PARTITION_EOF:
                ends[message.partition()] = message.offset()
            else:
                raise AssertionError(f"reading {topic}: {error}")
        return records, ends
    finally:
        consumer.close()


def committed_and_ends(bootstrap: str, group: str, topic: str) -> tuple[list[int], list[int]]:
    """The group's committed offset and the end offset of each partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()
    ends = _read(bootstrap, topic)[1]
    return committed, [ends[p] for p in partitions]


def check_exactly_once(
    bootstrap: str, topic: str, out_topic: str, group: str, n: int, *, strict: bool = False
) -> None:
    """The three promises, as a read_committed reader sees them. ``strict``: each key's
    changelog changes rise strictly (the SIGKILL test, on a broker that hides aborted
    transactions); otherwise they never fall (the suite's Tansu has been seen to
    repeat a change record once in a run without any abort)."""
    outputs = read_committed(bootstrap, out_topic)
    ids = collections.Counter(json.loads(value)["id"] for _, _, value in outputs if value)
    missing = [i for i in range(n) if ids[i] == 0]
    twice = {i: c for i, c in ids.items() if c > 1}
    report = (
        f"{len(outputs)} outputs for {n} inputs: {len(missing)} missing "
        f"(first {missing[:10]}), {len(twice)} more than once (e.g. {list(twice.items())[:10]})"
    )
    assert not missing, report
    assert not twice, report
    assert len(outputs) == n
    committed, ends = committed_and_ends(bootstrap, group, topic)
    assert committed == ends, f"committed offsets {committed}, ends {ends}"
    changes: dict[str, list[int]] = collections.defaultdict(list)
    for _, key, value in read_committed(bootstrap, changelog_topic(group, "counts")):
        assert key is not None
        assert value is not None, "a count is never deleted"
        changes[pickle.loads(key)].append(pickle.loads(value)[0])
    wrong = {
        k: v
        for k, v in changes.items()
        if any(b < a or (strict and b == a) for a, b in itertools.pairwise(v))
    }
    assert not wrong, f"changes that do not rise (from an aborted transaction?): {wrong}"
    assert {k: v[-1] for k, v in changes.items()} == truth(n)


def worker_args(bootstrap: str, topic: str, out_topic: str, group: str, tmp: Path) -> list[str]:
    return [bootstrap, topic, out_topic, group, str(tmp / "state"), str(tmp / "state.json")]


def setup(
    bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, n: int, tmp: Path
) -> tuple[str, str, str, list[str]]:
    """An input topic holding ``n`` inputs, an output topic, a fresh group and the
    worker's arguments: ``(topic, out_topic, group, args)``."""
    topic, out_topic = kafka_topic(3), kafka_topic(2, prefix="eos-out")
    produce_inputs(kafka_produce, topic, n)
    group = f"g-{uuid.uuid4().hex[:8]}"
    return topic, out_topic, group, worker_args(bootstrap, topic, out_topic, group, tmp)


def test_exactly_once_writes_each_input_s_output_once_and_commits_to_the_end(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n = 6_000
    topic, out_topic, group, args = setup(kafka_bootstrap, kafka_topic, kafka_produce, n, tmp_path)
    # --slow: events end 10 ms after the Kafka sink has their records, so the sink
    # must hold back every record whose offset the commit does not cover yet
    subprocess.run(
        [*WORKER, *args, "--until-eof", "--slow"],
        check=True,
        timeout=180,
        stdout=subprocess.DEVNULL,
    )
    assert json.loads((tmp_path / "state.json").read_text()) == truth(n)
    check_exactly_once(kafka_bootstrap, topic, out_topic, group, n)


def test_a_worker_stopped_and_restarted_continues_exactly_once(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n = 20_000
    topic, out_topic, group, args = setup(kafka_bootstrap, kafka_topic, kafka_produce, n, tmp_path)
    worker = _eos_worker([*args, "--slow"])
    try:
        worker.until(lambda p: p["folded"] >= n // 3, 120)
        assert worker.last["transactions"] > 0
        worker.stop()  # SIGTERM: drains, commits its last transaction, leaves
    finally:
        worker.kill()
    stopped_at = worker.last["folded"]
    assert stopped_at < n, "the worker read everything before it was stopped"
    subprocess.run(
        [*WORKER, *args, "--until-eof", "--slow"],
        check=True,
        timeout=180,
        stdout=subprocess.DEVNULL,
    )
    assert json.loads((tmp_path / "state.json").read_text()) == truth(n)
    check_exactly_once(kafka_bootstrap, topic, out_topic, group, n)


async def test_each_transaction_holds_the_outputs_of_exactly_the_events_before_its_offsets(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    """The invariant itself, transaction by transaction (it needs no crash, so the
    test broker can check it): the records a transaction commits are outputs of events
    before the offsets it commits, and every event before them has its output in it
    or an earlier one. Events end 10 ms after the Kafka sink has their records
    (``slow``), so records of events behind unfinished ones must wait."""
    n = 5_000
    topic, out_topic = kafka_topic(3), kafka_topic(2, prefix="eos-out")
    produce_inputs(kafka_produce, topic, n)
    where = {
        json.loads(value)["id"]: (p, offset)
        for p, offset, _, value in _read(kafka_bootstrap, topic)[0]
        if value
    }
    group = f"g-{uuid.uuid4().hex[:8]}"
    pipeline, source, _store, _sink = eos_worker.build(
        kafka_bootstrap,
        topic,
        out_topic,
        group,
        str(tmp_path / "state"),
        instance="w0",
        until_eof=True,
        slow=True,
    )
    txn = source.transactions
    assert txn is not None
    commit = txn.commit
    log: list[tuple[list[int], dict[int, int]]] = []

    def spy(records: list[Any], offsets: list[Any], metadata: Any) -> bool:
        done = commit(records, offsets, metadata)
        if done:
            ids = [json.loads(record[3])["id"] for record in records]
            log.append((ids, {tp.partition: tp.offset for tp in offsets}))
        return done

    txn.commit = spy  # type: ignore[method-assign]
    await pipeline.run()
    await source.wait_closed()
    committed: dict[int, int] = {}
    written: set[int] = set()
    for number, (ids, offsets) in enumerate(log):
        committed.update(offsets)
        late = [i for i in ids if where[i][1] >= committed.get(where[i][0], 0)]
        assert not late, f"transaction {number}: outputs of events after its offsets: {late[:10]}"
        assert not written & set(ids), f"transaction {number} wrote an output again"
        written.update(ids)
        due = {i for i, (p, offset) in where.items() if offset < committed.get(p, 0)}
        assert due <= written, f"transaction {number}: {len(due - written)} outputs missing"
    assert len(log) > 3, f"only {len(log)} transactions"
    assert written == set(range(n))
    check_exactly_once(kafka_bootstrap, topic, out_topic, group, n)


@pytest.mark.skipif(os.environ.get(ENV) is None, reason=TANSU_LEAKS_ABORTED)
def test_exactly_once_across_sigkill_at_three_points(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n = 60_000
    topic, out_topic, group, args = setup(kafka_bootstrap, kafka_topic, kafka_produce, n, tmp_path)
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    points = sorted(rng.randrange(lo, hi) for lo, hi in ((5, 30), (35, 60), (65, 90)))
    killed_at = []
    for point in points:
        worker = _eos_worker([*args, "--slow"])
        try:
            # mid-transaction: records and changelog changes produced, not committed
            worker.until(lambda p, point=point: p["folded"] >= n * point // 100, 180)
        finally:
            worker.kill()
        killed_at.append(worker.last["folded"])
    subprocess.run([*WORKER, *args, "--until-eof", "--slow"], check=True, timeout=300)
    print(f"exactly-once: seed {seed}, SIGKILL at {killed_at} of {n}")
    assert json.loads((tmp_path / "state.json").read_text()) == truth(n)
    check_exactly_once(kafka_bootstrap, topic, out_topic, group, n, strict=True)


def _eos_worker(args: list[str]) -> Worker:
    """An eos_worker.py process, read as test_kafka_state reads its workers."""
    worker = Worker.__new__(Worker)
    worker.process = subprocess.Popen([*WORKER, *args], stdout=subprocess.PIPE, text=True)
    worker.last = {"folded": 0, "emitted": 0, "transactions": 0, "held": 0, "partitions": []}
    worker.lines = queue.Queue()
    threading.Thread(target=worker._read, daemon=True).start()
    return worker


# -- what is refused, and why ------------------------------------------------------------


def test_exactly_once_needs_a_stable_transactional_id_and_a_group() -> None:
    with pytest.raises(ConfigurationError, match=r"transactional_id=.*instance_id="):
        KafkaSource(
            "t", bootstrap_servers="b:9092", group_id="g", processing_guarantee="exactly_once"
        )
    with pytest.raises(ConfigurationError, match="consumer group"):
        KafkaSource(
            "t",
            bootstrap_servers="b:9092",
            group_id="g",
            processing_guarantee="exactly_once",
            instance_id="w0",
            assign=True,
        )
    source = KafkaSource(
        "t",
        bootstrap_servers="b:9092",
        group_id="orders",
        processing_guarantee="exactly_once",
        instance_id="w3",
    )
    assert source.transactions is not None
    assert source.transactions.transactional_id == "rxagent.orders.w3"
    assert source.config["isolation.level"] == "read_committed"
    named = KafkaSource(
        "t",
        bootstrap_servers="b:9092",
        group_id="orders",
        processing_guarantee="exactly_once",
        transactional_id="mine",
    )
    assert named.transactions is not None
    assert named.transactions.transactional_id == "mine"
    plain = KafkaSource("t", bootstrap_servers="b:9092", group_id="orders")
    assert plain.transactions is None
    assert "isolation.level" not in plain.config


async def test_a_kafka_sink_on_another_cluster_cannot_join_the_transaction() -> None:
    source = KafkaSource(
        "t",
        bootstrap_servers="a:9092",
        group_id="g",
        processing_guarantee="exactly_once",
        instance_id="w0",
    )
    sink = KafkaSink("out", bootstrap_servers="elsewhere:9092")
    pipeline = Pipeline("p", source).to(sink)
    with pytest.raises(ConfigurationError, match="another cluster than its exactly-once source"):
        await pipeline.start()


class _FakeTransactions:
    """Transaction numbers and commit listeners, as KafkaTransactions has them."""

    def __init__(self) -> None:
        self.number = 0
        self.committed = -1
        self.listeners: list[Callable[[int], None]] = []

    def on_commit(self, listener: Callable[[int], None]) -> None:
        self.listeners.append(listener)

    def commit(self) -> None:
        self.committed, self.number = self.number, self.number + 1
        for listener in self.listeners:
            listener(self.committed)


class _FakeChangelog:
    topic = "rxagent-changelog.g.counts"
    input_topic = "in"

    def __init__(self, txn: _FakeTransactions) -> None:
        self.transactions = txn
        self.last_transaction: int | None = None
        self.records: list[Any] = []

    def ensure_topic(self) -> int:
        return 1

    def produce(self, records: list[Any]) -> dict[int, int]:
        self.records += records
        self.last_transaction = self.transactions.number
        return {0: len(self.records)}

    def read(self, starts: Any) -> Any:
        return iter(())

    def close(self) -> None:
        pass


async def test_a_store_writes_its_file_only_once_its_transaction_committed(tmp_path: Path) -> None:
    """Exactly-once: a checkpoint's changelog records go into the open transaction and
    its local rows wait for that transaction's commit. A crash before the commit (the
    transaction aborted) then leaves the file behind the changelog, never ahead: a
    replay re-applies those events, and the changelog gets their changes again."""
    txn = _FakeTransactions()
    changelog = _FakeChangelog(txn)
    store = StateStore("counts", state_dir=tmp_path)
    store.attach_changelog(changelog)  # type: ignore[arg-type]
    partition = KafkaPartition("in", 0)
    await store.assign_partitions([partition])
    store.apply_updates([("k", lambda old: (old or 0) + 1, None, Position("in", partition, 7))])
    assert await store.checkpoint()
    assert len(changelog.records) == 1

    def rows() -> list[Any]:
        with sqlite3.connect(store.path) as db:  # type: ignore[arg-type]
            found = db.execute("SELECT key FROM entries").fetchall()
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        return [found, json.loads(meta.get("changelog", "{}"))]

    assert rows() == [[], {}], "written before its transaction committed"
    txn.commit()
    for _ in range(100):  # written in the store's thread
        if rows()[0]:
            break
        await asyncio.sleep(0.01)
    assert rows() == [[(pickle.dumps("k", protocol=5),)], {"in/0": 1}]
    await store.aclose()


def test_a_pipeline_file_asks_for_exactly_once() -> None:
    text = """\
    pipelines:
      totals:
        source:
          kafka: {topics: orders, bootstrap_servers: "b:9092", group_id: totals,
                  instance_id: "w-${RXAGENT_WORKER:-0}", processing_guarantee: exactly_once}
        sinks:
          - kafka: {topic: out, bootstrap_servers: "b:9092"}
    """
    built = loads(textwrap.dedent(text), environ={}).build()
    source = built.pipelines["totals"].source
    assert isinstance(source, KafkaSource)
    assert source.transactions is not None
    assert source.transactions.transactional_id == "rxagent.totals.w-0"
    problem = "needs a stable transactional id"
    with pytest.raises(ConfigurationError, match=problem):
        loads(textwrap.dedent(text.replace('instance_id: "w-${RXAGENT_WORKER:-0}", ', ""))).build()
