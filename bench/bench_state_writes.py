"""One-row writes into a state store (issue 16): what a state sink pays per message
when each message arrives alone (a WebSocket source at moderate rates).

``python -m bench.bench_state_writes [--rounds 7] [--calls 200000]`` prints, each a
median of alternating rounds in CPU time (``time.process_time``) with the spread:

``write_values``
    ``store.write_values([key], [value], None, "src", None, [offset])`` over ~10
    distinct keys, per call; against ``d[key] = value`` in the same round.
``sink``
    the state sink's ``on_batch`` on one-row batches (``key_by`` keys, positions),
    per call.
``sink+read``
    the same, with ``store.snapshot`` read after every 100 batches (a reader that
    looks now and then).

Target: <= ~1.5 µs per one-row ``write_values`` + sink call.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from rxagent import StateStore
from rxagent.context import PipelineContext
from rxagent.events import Batch

KEYS = [f"SYM{i}" for i in range(10)]


def _cpu(fn: Callable[[int], Any], calls: int) -> float:
    gc.collect()
    start = time.process_time()
    fn(calls)
    return (time.process_time() - start) / calls * 1e6


def _dict(calls: int) -> None:
    d: dict[str, Any] = {}
    keys = KEYS
    for i in range(calls):
        d[keys[i % 10]] = i


def _write_values(calls: int) -> None:
    store = StateStore("ticks", clock=time.time)
    keys = KEYS
    write = store.write_values
    for i in range(calls):
        write([keys[i % 10]], [i], None, "src", None, [i])
    assert store.version == calls


def _batches(calls: int) -> tuple[StateStore, Any, list[Batch]]:
    ctx = PipelineContext("bench")
    store = StateStore("ticks")
    sink = store.sink()
    sink.ctx = ctx
    keys = KEYS
    batches = [
        Batch(
            [{"sym": keys[i % 10], "px": i}],
            ctx=ctx,
            source="ws",
            time=0.0,
            keys=[keys[i % 10]],
            positions=[i],
        )
        for i in range(calls)
    ]
    return store, sink, batches


def _sink(calls: int, read_every: int = 0) -> Callable[[int], None]:
    store, sink, batches = _batches(calls)

    def run(n: int) -> None:
        on_batch = sink.on_batch
        if read_every:
            for i, batch in enumerate(batches):
                on_batch(batch)
                if i % read_every == 0:
                    _ = store.snapshot
        else:
            for batch in batches:
                on_batch(batch)
        assert store.version == n

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_state_writes")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args(argv)
    calls = args.calls
    results: dict[str, list[float]] = {"dict": [], "write_values": [], "sink": [], "sink+read": []}
    for _ in range(args.rounds):
        results["dict"].append(_cpu(_dict, calls))
        results["write_values"].append(_cpu(_write_values, calls))
        results["sink"].append(_cpu(_sink(calls), calls))
        results["sink+read"].append(_cpu(_sink(calls, 100), calls))
    print(
        f"one-row writes, ~10 keys, {calls:,d} calls; "
        f"CPU µs/call, median [min-max] of {args.rounds}"
    )
    for name, figures in results.items():
        print(
            f"{name:>13s} {statistics.median(figures):7.3f} [{min(figures):.3f}-{max(figures):.3f}]"
        )


if __name__ == "__main__":
    main()
