"""State and keyed operators at many keys (issue 16): costs that must not grow with the store.

``python -m bench many_keys`` (or ``python -m bench.bench_many_keys [--rounds 5]
[--sizes 10000,100000,300000,1000000] [--events 1000000] [--collections]``) prints, each a
median of alternating rounds in CPU time (``time.process_time``: the machine is shared):

``writes``
    N events with N distinct keys -> ``key_by`` -> a state sink (``value=``), per
    key, at each size; against a plain loop writing a dict (``d[k] = v``) in the
    same round. Target: <= 3 µs per key, flat from 10k to 1M keys.

``reads``
    ``context(max_chars=2000)`` and ``changes_since(version - 1)`` on the store each
    write round built (memory), and on a durable store (``state_dir``) of the same
    size, written, checkpointed and restored (its first ``context()`` after the
    restore sorts the restored entries once; the figure is the median of later
    calls, the first one printed beside it). Target: < 5 ms at 1M keys.

``count_window``
    ``--events`` events -> ``key_by`` -> ``count_window(10)`` -> a list sink, and ->
    a state sink, with 10 keys and with 100k keys, ns per event. Target: 100k keys
    <= 1.5x the 10-key figure. With ``--collections``, also the CPU time spent in the
    garbage collector's collections in those runs (``gc.callbacks``; medians, ns per
    event), and how many of them were full ones: a full collection walks every tracked
    object of the process, this bench's input list too.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.sinks import ListSink
from rxagent.sources import memory

SIZES = (10_000, 100_000, 300_000, 1_000_000)
EVENTS = 1_000_000
ROUNDS = 5
WRITE_TARGET_US = 3.0
READ_TARGET_MS = 5.0
KEYED_TARGET = 1.5


class _Collections:
    """CPU time in the garbage collector's collections while it is entered
    (``gc.callbacks``), and how many full ones ran."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started
            self.full += info["generation"] == 2

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def _cpu(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    gc.collect()
    start = time.process_time()
    result = fn(*args)
    return time.process_time() - start, result


def _cpu_collections(fn: Callable[..., Any], *args: Any) -> tuple[float, _Collections]:
    """:func:`_cpu`, and the collections of ``fn``'s run (not the one before it)."""
    gc.collect()
    with _Collections() as spent:
        start = time.process_time()
        fn(*args)
        seconds = time.process_time() - start
    return seconds, spent


# -- writes ----------------------------------------------------------------------------------


def _events(n: int) -> list[dict[str, Any]]:
    return [{"user": f"user-{i}", "n": i} for i in range(n)]


def _pipeline_writes(events: list[dict[str, Any]]) -> StateStore:
    store = StateStore("users")
    pipeline = Pipeline("many", memory(events)).pipe(ops.key_by("user"))
    pipeline.to(store.sink(value="n"))
    asyncio.run(pipeline.run())
    assert len(store) == len(events)
    return store


def _dict_writes(events: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for event in events:
        state[event["user"]] = event["n"]
    return state


def _read_times(store: StateStore, calls: int = 9) -> tuple[float, float, float]:
    """(first context(), median context(), median changes_since(version - 1)) in ms."""
    first, _ = _cpu(lambda: store.context(max_chars=2000))
    contexts = [_cpu(lambda: store.context(max_chars=2000))[0] for _ in range(calls)]
    version = store.version
    since = [_cpu(lambda: store.changes_since(version - 1))[0] for _ in range(calls)]
    return first * 1e3, statistics.median(contexts) * 1e3, statistics.median(since) * 1e3


async def _durable_store(n: int, directory: str) -> tuple[StateStore, float]:
    """A durable store of ``n`` keys written in batches of 512, checkpointed, then a
    fresh store restored from its file; returns it with the restore's seconds."""
    writer = StateStore("users", state_dir=directory)
    await writer.open()
    for start in range(0, n, 512):
        writer.apply([(f"user-{i}", i, None, None) for i in range(start, min(n, start + 512))])
    await writer.aclose()
    started = time.perf_counter()
    restored = StateStore("users", state_dir=directory)
    await restored.open()
    seconds = time.perf_counter() - started
    # a few batches of new writes on top, as a running pipeline has
    for start in range(0, 2048, 512):
        restored.apply([(f"new-{i}", i, None, None) for i in range(start, start + 512)])
    return restored, seconds


def writes_and_reads(sizes: tuple[int, ...], rounds: int) -> None:
    print(f"writes: N events, N distinct keys -> key_by -> state sink; CPU, median of {rounds}")
    print(
        f"{'keys':>9s} {'rxagent µs/key':>15s} {'dict µs/key':>12s} {'ratio':>6s} "
        f"{'target':>7s} {'context ms':>11s} {'changes ms':>11s}"
    )
    for n in sizes:
        events = _events(n)
        ours: list[float] = []
        plain: list[float] = []
        store: StateStore | None = None
        for _ in range(rounds):
            seconds, store = _cpu(_pipeline_writes, events)
            ours.append(seconds / n * 1e6)
            plain.append(_cpu(_dict_writes, events)[0] / n * 1e6)
            store = store if len(ours) == rounds else None
        assert store is not None
        _, context_ms, changes_ms = _read_times(store)
        mine, theirs = statistics.median(ours), statistics.median(plain)
        verdict = "ok" if mine <= WRITE_TARGET_US else "MISS"
        print(
            f"{n:>9,d} {mine:>15.2f} {theirs:>12.2f} {mine / theirs:>5.1f}x "
            f"{'<=' + str(WRITE_TARGET_US):>7s}{verdict:>4s} {context_ms:>8.2f} "
            f"{changes_ms:>11.2f}"
        )
    print(f"reads, durable store (written, checkpointed, restored); target < {READ_TARGET_MS} ms")
    print(
        f"{'keys':>9s} {'restore s':>10s} {'1st context ms':>15s} {'context ms':>11s} "
        f"{'changes ms':>11s}"
    )
    for n in sizes:
        directory = tempfile.mkdtemp(prefix="rxagent-many-")
        try:
            store, restore_s = asyncio.run(_durable_store(n, directory))
            first, context_ms, changes_ms = _read_times(store)
            worst = max(context_ms, changes_ms)
            verdict = "ok" if worst < READ_TARGET_MS else "MISS"
            print(
                f"{n:>9,d} {restore_s:>10.2f} {first:>15.2f} {context_ms:>11.2f} "
                f"{changes_ms:>11.2f} {verdict}"
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)


# -- keyed operators -------------------------------------------------------------------------


def _keyed(events: list[dict[str, Any]], to_state: bool) -> None:
    pipeline = Pipeline("keyed", memory(events)).pipe(ops.key_by("k"), ops.count_window(10))
    if to_state:
        pipeline.to(StateStore("windows").sink(value=lambda w: w.count))
    else:
        pipeline.to(ListSink())
    asyncio.run(pipeline.run())


def _keyed_by_hand(events: list[dict[str, Any]], to_state: bool) -> None:
    """The same job as a plain loop: a dict of lists as the windows, each closed at 10
    rows into a list of (key, count) or a dict (the state)."""
    windows: dict[Any, list[Any]] = {}
    get = windows.get
    closed: list[tuple[Any, int]] = []
    state: dict[Any, int] = {}
    for event in events:
        k = event["k"]
        w = get(k)
        if w is None:
            w = windows[k] = []
        w.append(event)
        if len(w) == 10:
            if to_state:
                state[k] = len(w)
            else:
                closed.append((k, len(w)))
            del windows[k]


def count_windows(n: int, rounds: int, collections: bool = False) -> None:
    print(f"count_window(10): {n:,d} events -> key_by -> count_window(10) -> sink; ns/event")
    print(
        "  (the plain loop's line: the same job by hand, a dict of lists as the windows; "
        "its ratio is what the cache alone costs at 100k keys)"
    )
    heading = f"{'sink':>12s} {'10 keys':>9s} {'100k keys':>10s} {'ratio':>6s} {'target':>7s}"
    if collections:
        heading += f" {'gc 10 (full)':>13s} {'gc 100k (full)':>15s}"
    print(heading)
    few = [{"k": f"k{i % 10}", "v": i} for i in range(n)]
    many = [{"k": f"k{i % 100_000}", "v": i} for i in range(n)]
    for to_state, by_hand in ((False, True), (False, False), (True, True), (True, False)):
        job = _keyed_by_hand if by_hand else _keyed
        a: list[float] = []
        b: list[float] = []
        gcs: tuple[list[float], list[float]] = ([], [])
        fulls: tuple[list[int], list[int]] = ([], [])
        for _ in range(rounds):
            for events, times, i in ((few, a, 0), (many, b, 1)):
                if not collections:  # (no callback in the collector's way)
                    times.append(_cpu(job, events, to_state)[0] / n * 1e9)
                    continue
                seconds, spent = _cpu_collections(job, events, to_state)
                times.append(seconds / n * 1e9)
                gcs[i].append(spent.seconds / n * 1e9)
                fulls[i].append(spent.full)
        x, y = statistics.median(a), statistics.median(b)
        sink = "state" if to_state else "list"
        if by_hand:
            sink = "plain " + ("dict" if to_state else "list")
            line = f"{sink:>12s} {x:>9.0f} {y:>10.0f} {y / x:>5.2f}x" + " " * 15
        else:
            verdict = "ok" if y <= KEYED_TARGET * x else "MISS"
            line = (
                f"{sink:>12s} {x:>9.0f} {y:>10.0f} {y / x:>5.2f}x "
                f"{'<=' + str(KEYED_TARGET):>6s}x {verdict}"
            )
        if collections:
            line += "".join(
                f" {statistics.median(g):>{w - 5}.0f} ({statistics.median(f):>2.0f})"
                for g, f, w in zip(gcs, fulls, (13, 15), strict=True)
            )
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_many_keys")
    parser.add_argument("part", nargs="?", choices=["writes", "count_window"], default=None)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument(
        "--collections",
        action="store_true",
        help="count_window: also the time in garbage collections (ns/event) and full ones",
    )
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.part in (None, "writes"):
        writes_and_reads(sizes, args.rounds)
    if args.part in (None, "count_window"):
        count_windows(args.events, args.rounds, args.collections)


if __name__ == "__main__":
    main()
