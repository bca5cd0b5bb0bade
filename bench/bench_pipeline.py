"""1,000,000 dict events through filter -> map -> count window of 100 -> mean -> state.

Baseline: a plain Python loop doing the same work in the same process. Target:
rxagent with the defaults users get (``memory(events)``, no tuned credit or batch
size) <= 1.5x the plain loop's time, CPU time, median of the interleaved rounds.
Also printed for context: the same pipeline with larger batches, and raw reactivex
with a lean count window (no envelope, no credit, no dead letters).
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import reactivex as rx
from reactivex import operators as rxops

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.sources import memory

N = 1_000_000
THRESHOLD = 102.0
WINDOW = 100


def make_events(n: int = N) -> list[dict[str, Any]]:
    rnd = random.Random(42)
    syms = [f"S{i}" for i in range(10)]
    return [{"sym": syms[i % 10], "px": 100.0 + rnd.random() * 10, "seq": i} for i in range(n)]


def to_quote(d: dict[str, Any]) -> tuple[str, float]:
    return (d["sym"], d["px"])


def is_high(d: dict[str, Any]) -> bool:
    return d["px"] > THRESHOLD  # type: ignore[no-any-return]


def plain_loop(events: list[dict[str, Any]]) -> dict[str, float]:
    """The same work as the pipeline, by hand, calling the same user functions
    (``is_high``, ``to_quote``): per-symbol windows of 100 quotes, mean price."""
    state: dict[str, float] = {}
    windows: dict[str, list[tuple[str, float]]] = {}
    for d in events:
        if is_high(d):
            quote = to_quote(d)
            buf = windows.get(quote[0])
            if buf is None:
                buf = windows[quote[0]] = []
            buf.append(quote)
            if len(buf) == WINDOW:
                state[quote[0]] = sum(q[1] for q in buf) / WINDOW
                windows[quote[0]] = []
    for sym, buf in windows.items():
        if buf:
            state[sym] = sum(q[1] for q in buf) / len(buf)
    return state


def plain_loop_inline(events: list[dict[str, Any]]) -> dict[str, float]:
    """The same loop with the filter and the map written inline (no calls)."""
    state: dict[str, float] = {}
    windows: dict[str, list[tuple[str, float]]] = {}
    for d in events:
        if d["px"] > THRESHOLD:
            quote = (d["sym"], d["px"])
            buf = windows.get(quote[0])
            if buf is None:
                buf = windows[quote[0]] = []
            buf.append(quote)
            if len(buf) == WINDOW:
                state[quote[0]] = sum(q[1] for q in buf) / WINDOW
                windows[quote[0]] = []
    for sym, buf in windows.items():
        if buf:
            state[sym] = sum(q[1] for q in buf) / len(buf)
    return state


TARGET = 1.5


def rxagent_pipeline(events: list[dict[str, Any]], **source: Any) -> dict[str, float]:
    """The pipeline with ``memory()``'s defaults (``source``: credit, batch_size)."""
    store = StateStore("mean_px")
    pipeline = (
        Pipeline("bench", memory(events, **source))
        .pipe(
            ops.filter(is_high),
            ops.map(to_quote),
            ops.count_window(WINDOW, key=0, agg=ops.mean(1)),
        )
        .to(store.sink(value="value"))
    )
    asyncio.run(pipeline.run())
    return dict(store.snapshot.to_dict())


def raw_reactivex(events: list[dict[str, Any]]) -> dict[str, float]:
    state: dict[str, float] = {}

    def lean_window(source: rx.Observable[Any]) -> rx.Observable[Any]:
        def subscribe(observer: Any, scheduler: Any = None) -> Any:
            windows: dict[str, list[tuple[str, float]]] = {}

            def on_next(q: tuple[str, float]) -> None:
                buf = windows.setdefault(q[0], [])
                buf.append(q)
                if len(buf) == WINDOW:
                    windows[q[0]] = []
                    observer.on_next(buf)

            def on_completed() -> None:
                for buf in windows.values():
                    if buf:
                        observer.on_next(buf)
                observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return rx.create(subscribe)

    rx.from_iterable(events).pipe(
        rxops.filter(is_high),
        rxops.map(to_quote),
        lean_window,
        rxops.map(lambda buf: (buf[0][0], sum(q[1] for q in buf) / len(buf))),
    ).subscribe(lambda kv: state.__setitem__(kv[0], kv[1]))
    return state


def rxagent_large_batches(events: list[dict[str, Any]]) -> dict[str, float]:
    """The pipeline with batches of 8192 (credit 32768): what larger batches still buy."""
    return rxagent_pipeline(events, credit=32768, batch_size=8192)


def timed(
    fn: Callable[[list[dict[str, Any]]], Any], events: list[dict[str, Any]]
) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one run, and its result."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(events)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main(runs: int = 7) -> None:
    events = make_events()
    gc.freeze()  # the 1M input dicts are not garbage; keep the collector off them
    expected = plain_loop(events)
    contenders: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
        "plain loop, same functions": plain_loop,
        "plain loop, inlined": plain_loop_inline,
        "rxagent, defaults": rxagent_pipeline,
        "rxagent, batches of 8192": rxagent_large_batches,
        "raw reactivex, lean window": raw_reactivex,
    }
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    # interleave so drift (thermal, other load) hits all alike
    for _ in range(runs):
        for name, fn in contenders.items():
            w, c, got = timed(fn, events)
            wall[name].append(w)
            cpu[name].append(c)
            if name.startswith("rxagent") and (
                got.keys() != expected.keys() or any(abs(got[k] - expected[k]) > 1e-9 for k in got)
            ):
                raise SystemExit(
                    f"{name}'s result differs from the plain loop's: benchmark invalid"
                )
    median = statistics.median
    base_cpu, base_wall = (
        median(cpu["plain loop, same functions"]),
        median(wall["plain loop, same functions"]),
    )
    ns = 1e9 / N
    print(f"events: {N:,}  rounds: {runs} (interleaved; medians; ratios vs the plain loop)")
    print(f"{'':28s} {'cpu ns/event':>12s} {'cpu':>6s} {'wall':>6s}")
    for name in contenders:
        c, w = median(cpu[name]), median(wall[name])
        print(f"{name:28s} {c * ns:12.1f} {c / base_cpu:5.2f}x {w / base_wall:5.2f}x")
    ratio = median(cpu["rxagent, defaults"]) / base_cpu
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(
        f"rxagent with defaults: {ratio:.2f}x the plain loop (CPU); target <= {TARGET}x: {verdict}"
    )


if __name__ == "__main__":
    main()
