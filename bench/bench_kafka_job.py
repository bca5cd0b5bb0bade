"""The same Kafka job written with rxagent and by hand (issue 16).

The job: consume a 4-partition topic of JSON messages (~110 bytes), decode each value,
keep those with ``qty >= 0``, a count window of 100 per ``sym`` whose mean ``px`` goes
to state, committing offsets as it goes. Both sides run it in one process against the
same topic, alternating round by round:

``hand loop``
    what a user writes with confluent-kafka alone: ``consume(1024)``, the source's
    decoder (orjson), the filter, a dict of lists as the window, a dict as the state,
    asynchronous commits of the offsets read every second. Same librdkafka settings
    (``CONSUMER_DEFAULTS``), partitions assigned, not subscribed.

``rxagent``
    ``KafkaSource(topic, bootstrap_servers=..., group_id=..., assign=True,
    until_eof=True)`` with **no other option** (the defaults users get: keys, event
    times and headers read) -> ``filter`` -> ``count_window(100, key="sym",
    agg=mean("px"))`` -> a state sink.

Both are timed from creating the consumer to the last message processed (the final
commit and leaving are not timed); printed per round: messages per second, CPU µs
per message (``time.process_time``: librdkafka's threads included), and the ratio;
then the medians. Target: rxagent >= 0.9x the hand loop's rate.

``--without-metadata`` adds a third side each round: rxagent with ``key_decode=None,
timestamps=False, headers=False``, what reading the three metadata columns costs.

``python -m bench kafka_job`` (or ``python -m bench.bench_kafka_job [N] [--rounds R]``;
default 1,000,000 messages, 5 rounds). Starts its own Tansu broker, or uses
``RXAGENT_KAFKA_BOOTSTRAP``. ``--group``: both subscribe in a consumer group instead
(``assign=False``, the reads stay on the source's consumer thread), timed from the
first message.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.kafka import CONSUMER_DEFAULTS, KafkaSource

from .bench_kafka import PARTITIONS, Decoder, fill, start_broker

ROUNDS = 5
#: ``--group``: a session short enough for a new group to form quickly on Tansu
GROUP_CONFIG = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
TARGET = 0.9
WINDOW = 100


def hand_loop(
    bootstrap: str, topic: str, n: int, loads: Decoder, group: bool = False
) -> tuple[float, float]:
    """The job by hand; (messages per second, CPU seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    consumer = Consumer(
        {
            **CONSUMER_DEFAULTS,
            **(GROUP_CONFIG if group else {}),
            "bootstrap.servers": bootstrap,
            "group.id": f"hand-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    consumer.list_topics(topic, timeout=10)
    if group:
        consumer.subscribe([topic])
        while not (first := consumer.consume(1, 0.5)):
            pass
        # timed from the first message: the group's join is not
        start, cpu = time.perf_counter(), time.process_time()
        if first[0].error() is None:
            consumer.seek(TopicPartition(topic, first[0].partition(), first[0].offset()))
    else:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    windows: dict[str, list[float]] = {}
    state: dict[str, float] = {}
    offsets: dict[int, int] = {}
    seen = 0
    next_commit = time.monotonic() + 1.0
    while seen < n:
        for message in consumer.consume(1024, 0.5):
            if message.error() is not None:
                continue
            seen += 1
            offsets[message.partition()] = message.offset() + 1
            value = loads(message.value())
            if value["qty"] >= 0:
                key = value["sym"]
                window = windows.get(key)
                if window is None:
                    windows[key] = window = []
                window.append(value["px"])
                if len(window) == WINDOW:
                    state[key] = sum(window) / WINDOW
                    del windows[key]
        if time.monotonic() >= next_commit:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                asynchronous=True,
            )
            next_commit = time.monotonic() + 1.0
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    assert len(state) == 20, state
    consumer.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
    )
    consumer.close()
    return n / elapsed, used


#: ``--without-metadata``: the source options that leave keys, event times and headers unread
WITHOUT_METADATA: dict[str, Any] = {"key_decode": None, "timestamps": False, "headers": False}


async def rxagent_job(
    bootstrap: str, topic: str, n: int, group: bool = False, options: dict[str, Any] | None = None
) -> tuple[float, float]:
    """The job with rxagent and the source's defaults (or these ``options`` on top);
    (messages per second, CPU seconds)."""
    store = StateStore("job")
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"rx-{uuid.uuid4().hex[:6]}",
        config=GROUP_CONFIG if group else None,
        assign=not group,
        until_eof=True,
        **(options or {}),
    )
    first: list[tuple[float, float]] = []

    def keep(value: Any) -> bool:
        if not first:  # in a group: timed from the first message, the join is not
            first.append((time.perf_counter(), time.process_time()))
        return bool(value["qty"] >= 0)

    pipeline = (
        Pipeline("job", source)
        .pipe(
            ops.filter(keep if group else lambda v: v["qty"] >= 0),
            ops.count_window(WINDOW, key="sym", agg=ops.mean("px")),
        )
        .to(store.sink())
    )
    start, cpu = time.perf_counter(), time.process_time()
    await pipeline.run()
    if first:
        start, cpu = first[0]
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    await source.wait_closed()  # final commit, leave (not timed)
    assert source.emitted == n, (source.emitted, n)
    assert len(store.snapshot) == 20
    return n / elapsed, used


def main(
    n: int = 1_000_000,
    rounds: int = ROUNDS,
    topic: str | None = None,
    group: bool = False,
    without_metadata: bool = False,
) -> None:
    loads: Any = KafkaSource("x", bootstrap_servers="127.0.0.1:9", group_id="x").decode_value
    process, bootstrap = start_broker()
    try:
        if topic is None:
            t0 = time.perf_counter()
            topic = fill(bootstrap, n)
            took = time.perf_counter() - t0
            print(f"produced {n:,} messages to {PARTITIONS} partitions in {took:.1f}s")
        hands: list[float] = []
        rxs: list[float] = []
        ratios: list[float] = []
        leans: list[float] = []
        sides = ("hand", "rx", "lean") if without_metadata else ("hand", "rx")
        for i in range(rounds):
            # alternate the order: the broker's caches warm for the later sides
            order = sides if i % 2 == 0 else sides[::-1]
            results: dict[str, tuple[float, float]] = {}
            for side in order:
                if side == "hand":
                    results[side] = hand_loop(bootstrap, topic, n, loads, group)
                else:
                    options = WITHOUT_METADATA if side == "lean" else None
                    results[side] = asyncio.run(rxagent_job(bootstrap, topic, n, group, options))
            (hand, hand_cpu), (rx, rx_cpu) = results["hand"], results["rx"]
            hands.append(hand)
            rxs.append(rx)
            ratios.append(rx / hand)
            line = (
                f"  hand loop {hand:>9,.0f} msg/s {hand_cpu / n * 1e6:5.2f} µs CPU/msg   "
                f"rxagent {rx:>9,.0f} msg/s {rx_cpu / n * 1e6:5.2f} µs CPU/msg   {rx / hand:.2f}x"
            )
            if without_metadata:
                lean, lean_cpu = results["lean"]
                leans.append(lean / hand)
                line += f"   no metadata {lean_cpu / n * 1e6:5.2f} µs CPU/msg {lean / hand:.2f}x"
            print(line)
        if without_metadata:
            options = ", ".join(f"{k}={v}" for k, v in WITHOUT_METADATA.items())
            print(
                f"kafka same job without metadata ({options}): {statistics.median(leans):.2f}x "
                f"the hand loop ({min(leans):.2f}-{max(leans):.2f}x)"
            )
        print(
            f"kafka same job: rxagent {statistics.median(rxs):,.0f} msg/s vs hand loop "
            f"{statistics.median(hands):,.0f} msg/s: {statistics.median(ratios):.2f}x "
            f"(median of {rounds} alternating rounds, {min(ratios):.2f}-{max(ratios):.2f}x; "
            f"defaults{', in a group' if group else ', assigned'}) (target >= {TARGET}x)"
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_kafka_job")
    parser.add_argument("n", nargs="?", type=int, default=1_000_000, help="messages")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--topic", help="read this topic of N messages (RXAGENT_KAFKA_BOOTSTRAP)")
    parser.add_argument(
        "--group",
        action="store_true",
        help="both subscribe in a consumer group (timed from the first message) instead of assign",
    )
    parser.add_argument(
        "--without-metadata",
        action="store_true",
        help="also run rxagent with keys, event times and headers left unread, each round",
    )
    args = parser.parse_args()
    main(args.n, args.rounds, args.topic, args.group, args.without_metadata)
