"""Durable, partitioned state: restore rate, 2 workers vs 1, durable-state overhead.

Three parts, each against a Tansu broker started here (127.0.0.1 only; or
``RXAGENT_KAFKA_BOOTSTRAP``), run by ``python -m bench durable_state`` or one at a
time with ``python -m bench.bench_durable_state restore|workers|overhead``:

``restore``
    A durable store gets ``--keys`` entries (default 1,000,000; ~60-byte values, keys
    spread over the 4 partitions of an input topic) in checkpoints of 10,000 keys,
    each producing its changes to the store's changelog topic too. Then (a) a fresh
    store ``open()``s the local state file (no changelog), and (b) with the state
    directory deleted, a fresh store restores the 4 partitions from the changelog
    (``assign_partitions``, what a Kafka source does on assignment). Keys/s of each;
    then (c) a Kafka pipeline of that group and store, with an empty state directory,
    is started: time to its first event (group join, restore from the changelog of
    all 4 partitions, first fetch), with the restore's own share.

``workers``
    The pipeline of ``bench_kafka`` (consume -> filter -> count window -> durable
    state) over its 4-partition topic of ``--messages`` messages (default 1,000,000),
    once with one process and once with two processes in one consumer group (real
    processes, started together behind a barrier, subscribing: the group splits the
    partitions). Wall time from the barrier to the last process done, alternating
    rounds, medians; the speedup ratio. This machine has 2 cores, shared with the
    broker (and other users): below 2x is expected.

``overhead``
    The same pipeline with durable state (state directory, changelog) against
    memory-only state, ``--messages`` messages, alternating rounds, medians. Reported
    whole (from creating the pipeline: includes creating the changelog topic and the
    restore consumer) and split: setup (start to first event), steady state (first
    event to last) and the end (last event to ``run()`` returning). ``--profile``
    writes a cProfile of one durable run (``--profile-out FILE``) and prints its top.

Rates on this machine are noisy: every figure is a median of alternating rounds and
ratios are against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import pstats
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from bench.bench_kafka import PARTITIONS, fill, make_source, start_broker
from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.events import Position
from rxagent.kafka import KafkaSource
from rxagent.kafka.changelog import KafkaChangelog, changelog_topic

KEYS = 1_000_000
MESSAGES = 1_000_000
CHECKPOINT_KEYS = 10_000
ROUNDS = 3
STORE = "bench"


def _median(values: list[float]) -> float:
    return statistics.median(values)


# -- restore --------------------------------------------------------------------------------


def _input_topic(bootstrap: str) -> str:
    topic = f"bench-in-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
    return topic


def _changelog(bootstrap: str, group: str, topic: str) -> KafkaChangelog:
    return KafkaChangelog(
        topic=changelog_topic(group, STORE),
        input_topic=topic,
        config={"bootstrap.servers": bootstrap},
        owner=f"bench state {STORE!r}",
    )


async def _fill_store(bootstrap: str, state_dir: str, group: str, topic: str, keys: int) -> float:
    """``keys`` entries in checkpoints of CHECKPOINT_KEYS, changelog included; returns
    the seconds the checkpoints took."""
    store = StateStore(STORE, state_dir=state_dir)
    store.attach_changelog(_changelog(bootstrap, group, topic))
    await store.open()
    partitions = [(topic, p) for p in range(PARTITIONS)]
    await store.assign_partitions(partitions)
    offsets = [0] * PARTITIONS
    spent = 0.0
    for start in range(0, keys, CHECKPOINT_KEYS):
        updates = []
        for i in range(start, min(start + CHECKPOINT_KEYS, keys)):
            p = i % PARTITIONS
            offsets[p] += 1
            value = {"count": i % 97, "sum": i * 0.5, "sym": f"SYM{i % 20:02d}"}
            updates.append((f"user-{i:07d}", value, None, Position("src", (topic, p), offsets[p])))
        store.apply(updates)
        t0 = time.perf_counter()
        await store.checkpoint()
        spent += time.perf_counter() - t0
    await store.aclose()
    return spent


async def _restore_local(state_dir: str, keys: int) -> float:
    store = StateStore(STORE, state_dir=state_dir)
    t0 = time.perf_counter()
    await store.open()
    took = time.perf_counter() - t0
    assert len(store) == keys, (len(store), keys)
    await store.aclose()
    return took


async def _restore_changelog(bootstrap: str, group: str, topic: str, keys: int) -> float:
    with tempfile.TemporaryDirectory() as empty:
        store = StateStore(STORE, state_dir=empty)
        store.attach_changelog(_changelog(bootstrap, group, topic))
        t0 = time.perf_counter()
        await store.open()
        await store.assign_partitions([(topic, p) for p in range(PARTITIONS)])
        took = time.perf_counter() - t0
        assert len(store) == keys, (len(store), keys)
        await store.aclose()
    return took


async def _first_event(bootstrap: str, group: str, topic: str) -> tuple[float, float, int]:
    """A pipeline of ``group`` with an empty state directory: seconds from its start to
    its first event, the restore's seconds, and the keys restored."""
    with tempfile.TemporaryDirectory() as empty:
        store = StateStore(STORE, state_dir=empty)
        source = KafkaSource(
            topic, bootstrap_servers=bootstrap, group_id=group, assign=True, until_eof=True
        )
        first: list[float] = []

        def mark(_value: Any) -> bool:
            if not first:
                first.append(time.perf_counter())
            return True

        pipeline = Pipeline("restore", source).pipe(ops.filter(mark)).to(store.sink())
        t0 = time.perf_counter()
        await pipeline.run()
        await source.wait_closed()
        info = store.durability()
        await store.aclose()
    return first[0] - t0, float(info["restore_seconds"] or 0.0), int(info["restored"])


def _produce_input(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        producer.produce(topic, b'{"n": %d}' % i, b"k%d" % (i % 50), partition=i % PARTITIONS)
    assert producer.flush(30) == 0


def restore(bootstrap: str, keys: int = KEYS, rounds: int = ROUNDS) -> None:
    topic = _input_topic(bootstrap)
    group = f"rx-restore-{uuid.uuid4().hex[:6]}"
    state_dir = tempfile.mkdtemp(prefix="rxagent-bench-restore-")
    try:
        spent = asyncio.run(_fill_store(bootstrap, state_dir, group, topic, keys))
        size = sum(f.stat().st_size for f in os.scandir(state_dir) if f.is_file())
        print(
            f"restore: {keys:,} keys written in {keys // CHECKPOINT_KEYS} checkpoints of "
            f"{CHECKPOINT_KEYS:,} (changelog + SQLite) in {spent:.1f}s "
            f"({keys / spent:,.0f} keys/s); state file {size / 2**20:.0f} MiB"
        )
        locals_, changelogs = [], []
        for _ in range(rounds):
            locals_.append(asyncio.run(_restore_local(state_dir, keys)))
            changelogs.append(asyncio.run(_restore_changelog(bootstrap, group, topic, keys)))
            print(
                f"  local file {keys / locals_[-1]:,.0f} keys/s ({locals_[-1]:.2f}s)   "
                f"changelog {keys / changelogs[-1]:,.0f} keys/s ({changelogs[-1]:.2f}s)"
            )
        local, changelog = _median(locals_), _median(changelogs)
        print(
            f"restore of {keys:,} keys: local file {keys / local:,.0f} keys/s ({local:.2f}s), "
            f"changelog {keys / changelog:,.0f} keys/s ({changelog:.2f}s): "
            f"changelog {local / changelog:.2f}x the local file (medians of {rounds})"
        )
        firsts = []
        for _ in range(rounds):
            _produce_input(bootstrap, topic, 1000)  # new events after the group's commits
            firsts.append(asyncio.run(_first_event(bootstrap, group, topic)))
        first = _median([f[0] for f in firsts])
        restoring = _median([f[1] for f in firsts])
        print(
            f"pipeline start to first event, state restored from the changelog "
            f"({firsts[0][2]:,} keys): {first:.2f}s, of which the restore {restoring:.2f}s "
            f"(medians of {rounds}; rounds {', '.join(f'{f[0]:.2f}' for f in firsts)}s)"
        )
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


# -- the bench_kafka pipeline, timed in parts ---------------------------------------------


@dataclass
class Run:
    total: float  # creating the pipeline to run() returning
    setup: float  # to the first event
    steady: float  # first event to last
    end: float  # last event to run() returning
    emitted: int


async def pipeline_run(
    bootstrap: str,
    topic: str,
    n: int,
    state_dir: str | None,
    *,
    group: str | None = None,
    subscribe: bool = False,
    start_at: float | None = None,
) -> Run:
    """bench_kafka's pipeline; with ``state_dir`` the store is durable (changelog)."""
    store = StateStore("bench", state_dir=state_dir)
    if subscribe:
        source = KafkaSource(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group or f"rx-{uuid.uuid4().hex[:6]}",
            until_eof=True,
            decode="json",
            key_decode=None,
            timestamps=False,
            headers=False,
        )
    else:
        source = make_source(bootstrap, topic, "source")
    marks: list[float] = []
    seen = 0

    def mark(value: Any) -> bool:
        nonlocal seen
        seen += 1
        if seen == 1 or seen == n:
            marks.append(time.perf_counter())
        return bool(value["qty"] >= 0)

    pipeline = (
        Pipeline("bench", source)
        .pipe(ops.filter(mark), ops.count_window(100, key="sym", agg=ops.mean("px")))
        .to(store.sink())
    )
    start = time.perf_counter() if start_at is None else start_at
    await pipeline.run()
    done = time.perf_counter()
    await source.wait_closed()  # final commit, leave the group (not timed)
    await store.aclose()
    first = marks[0]
    last = marks[1] if len(marks) > 1 else done
    return Run(done - start, first - start, last - first, done - last, source.emitted)


# -- overhead -----------------------------------------------------------------------------


def overhead(
    bootstrap: str,
    n: int = MESSAGES,
    rounds: int = ROUNDS,
    topic: str | None = None,
    profile: bool = False,
    profile_out: str | None = None,
) -> None:
    if topic is None:
        t0 = time.perf_counter()
        topic = fill(bootstrap, n)
        print(
            f"produced {n:,} messages to {PARTITIONS} partitions in {time.perf_counter() - t0:.1f}s"
        )
    mems: list[Run] = []
    durs: list[Run] = []
    for _ in range(rounds):
        mems.append(asyncio.run(pipeline_run(bootstrap, topic, n, None)))
        with tempfile.TemporaryDirectory() as state_dir:
            durs.append(asyncio.run(pipeline_run(bootstrap, topic, n, state_dir)))
        m, d = mems[-1], durs[-1]
        print(
            f"  memory {n / m.total:,.0f} msg/s (setup {m.setup:.2f}s, steady {m.steady:.2f}s, "
            f"end {m.end:.2f}s)   durable {n / d.total:,.0f} msg/s (setup {d.setup:.2f}s, "
            f"steady {d.steady:.2f}s, end {d.end:.2f}s)   whole {m.total / d.total:.2f}x, "
            f"steady {m.steady / d.steady:.2f}x"
        )
    for run in mems + durs:
        assert run.emitted == n, (run.emitted, n)

    def med(runs: list[Run], part: str) -> float:
        return _median([getattr(r, part) for r in runs])

    m_total, d_total = med(mems, "total"), med(durs, "total")
    m_steady, d_steady = med(mems, "steady"), med(durs, "steady")
    print(
        f"durable state, whole run: {n / d_total:,.0f} msg/s vs memory-only {n / m_total:,.0f} "
        f"msg/s: {m_total / d_total:.2f}x (overhead {1 - m_total / d_total:.0%})"
    )
    print(
        f"durable state, steady state (first event to last): {n / d_steady:,.0f} msg/s vs "
        f"{n / m_steady:,.0f} msg/s: {m_steady / d_steady:.2f}x "
        f"(overhead {1 - m_steady / d_steady:.0%}; target <= 15%)"
    )
    print(
        f"setup (start to first event): durable {med(durs, 'setup'):.2f}s, memory "
        f"{med(mems, 'setup'):.2f}s; end (last event to run() returning): durable "
        f"{med(durs, 'end'):.2f}s, memory {med(mems, 'end'):.2f}s (medians of {rounds})"
    )
    if profile:
        profiler = cProfile.Profile()
        with tempfile.TemporaryDirectory() as state_dir:
            profiler.enable()
            asyncio.run(pipeline_run(bootstrap, topic, n, state_dir))
            profiler.disable()
        if profile_out:
            profiler.dump_stats(profile_out)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


# -- workers ------------------------------------------------------------------------------


def _worker(
    bootstrap: str,
    topic: str,
    n: int,
    group: str,
    state_dir: str,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    ready.wait()  # every worker imported and ready
    go.wait()
    start = time.perf_counter()
    run = asyncio.run(
        pipeline_run(bootstrap, topic, n, state_dir, group=group, subscribe=True, start_at=start)
    )
    # perf_counter is CLOCK_MONOTONIC: comparable across the processes of one machine
    results.put(
        (run.emitted, run.setup, run.steady, start + run.setup, start + run.setup + run.steady)
    )


def _workers_run(bootstrap: str, topic: str, n: int, count: int) -> tuple[float, list[Any]]:
    ctx = multiprocessing.get_context("spawn")
    group = f"rx-workers-{uuid.uuid4().hex[:6]}"
    ready = ctx.Barrier(count + 1)
    go = ctx.Event()
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as root:
        procs = [
            ctx.Process(
                target=_worker,
                args=(bootstrap, topic, n, group, os.path.join(root, f"w{i}"), ready, go, results),
            )
            for i in range(count)
        ]
        for proc in procs:
            proc.start()
        try:
            ready.wait()
            start = time.perf_counter()
            go.set()
            found = [results.get(timeout=300) for _ in procs]
            wall = time.perf_counter() - start
            for proc in procs:
                proc.join(60)
        finally:
            for proc in procs:  # a worker left without partitions by the group: stop it
                if proc.is_alive():
                    proc.terminate()
    return wall, found


def workers(
    bootstrap: str, n: int = MESSAGES, rounds: int = ROUNDS, topic: str | None = None
) -> None:
    if topic is None:
        t0 = time.perf_counter()
        topic = fill(bootstrap, n)
        print(
            f"produced {n:,} messages to {PARTITIONS} partitions in {time.perf_counter() - t0:.1f}s"
        )
    ones: list[float] = []
    twos: list[float] = []
    spans1: list[float] = []
    spans2: list[float] = []
    for _ in range(rounds):
        one, found1 = _workers_run(bootstrap, topic, n, 1)
        two, found2 = _workers_run(bootstrap, topic, n, 2)
        ones.append(one)
        twos.append(two)
        # processing: the first event of any worker to the last event of any
        spans1.append(found1[0][4] - found1[0][3])
        spans2.append(max(f[4] for f in found2) - min(f[3] for f in found2))
        emitted2 = sum(f[0] for f in found2)
        assert found1[0][0] == n, found1
        assert emitted2 >= n, found2
        print(
            f"  1 worker {one:.2f}s ({n / one:,.0f} msg/s)   2 workers {two:.2f}s "
            f"({n / two:,.0f} msg/s; read {emitted2:,} events: "
            + ", ".join(f"{f[0]:,} steady {f[2]:.2f}s" for f in found2)
            + f")   wall speedup {one / two:.2f}x   first to last event {spans1[-1]:.2f}s vs "
            f"{spans2[-1]:.2f}s: {spans1[-1] / spans2[-1]:.2f}x"
        )
    one, two = _median(ones), _median(twos)
    span1, span2 = _median(spans1), _median(spans2)
    print(
        f"2 workers vs 1 (durable state, {PARTITIONS} partitions, {n:,} messages, "
        f"{os.cpu_count()} cores; medians of {rounds}): wall (barrier to last process done, "
        f"group join included) {one:.2f}s vs {two:.2f}s, speedup {one / two:.2f}x; "
        f"first event to last {span1:.2f}s vs {span2:.2f}s, speedup {span1 / span2:.2f}x"
    )


# -- main ---------------------------------------------------------------------------------

PARTS = ["restore", "workers", "overhead"]


def main(
    parts: list[str] | None = None,
    *,
    keys: int = KEYS,
    messages: int = MESSAGES,
    rounds: int = ROUNDS,
    profile: bool = False,
    profile_out: str | None = None,
) -> None:
    process, bootstrap = start_broker()
    try:
        chosen = parts or PARTS
        topic = None
        if "workers" in chosen or "overhead" in chosen:
            t0 = time.perf_counter()
            topic = fill(bootstrap, messages)
            print(
                f"produced {messages:,} messages to {PARTITIONS} partitions in "
                f"{time.perf_counter() - t0:.1f}s"
            )
        for part in chosen:
            if part == "restore":
                restore(bootstrap, keys, rounds)
            elif part == "workers":
                workers(bootstrap, messages, rounds, topic)
            else:
                overhead(bootstrap, messages, rounds, topic, profile, profile_out)
    finally:
        if process is not None:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_durable_state")
    parser.add_argument("parts", nargs="*", choices=PARTS, help="which parts (all by default)")
    parser.add_argument("--keys", type=int, default=KEYS, help="restore: keys")
    parser.add_argument("--messages", type=int, default=MESSAGES, help="workers, overhead")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--profile", action="store_true", help="overhead: cProfile one run")
    parser.add_argument("--profile-out", help="overhead: write the profile here")
    args = parser.parse_args()
    main(
        args.parts,
        keys=args.keys,
        messages=args.messages,
        rounds=args.rounds,
        profile=args.profile,
        profile_out=args.profile_out,
    )
