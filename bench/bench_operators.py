"""Per-operator cost in ns/event, against one raw reactivex ``map`` hop measured
in the same run.

Each operator runs in a real pipeline (memory source, batches of 512, a sink that
ends rows); its cost is the pipeline's time minus the same pipeline without it.
Events: ``{"sym": 10 keys, "px", "seq", "ts"}`` with event times 1 ms apart.
Windows run over 1,000,000 events, the others over 200,000. Issue target: no
operator above 3x reactivex ``map`` unless its docs say why.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import reactivex as rx
from reactivex import operators as rxops

from rxagent import Pipeline
from rxagent import operators as ops
from rxagent.backoff import Backoff
from rxagent.events import Batch
from rxagent.sinks import Sink
from rxagent.sources import memory

SMALL = 200_000
LARGE = 1_000_000


class _Null(Sink):
    def on_batch(self, batch: Batch) -> None:
        batch.end_all()


def make(n: int) -> list[dict[str, Any]]:
    return [
        {"sym": f"S{i % 10}", "px": 100.0 + (i % 97) / 10, "seq": i, "ts": i * 0.001}
        for i in range(n)
    ]


def pipeline_time(events: list[dict[str, Any]], *stages: Callable[[Any], Any]) -> float:
    pipeline = Pipeline("b", memory(events, credit=8192, batch_size=512)).pipe(*stages)
    pipeline.to(_Null())
    start = time.perf_counter()
    asyncio.run(pipeline.run())
    return time.perf_counter() - start


def best(fn: Callable[[], float], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        times.append(fn())
    return min(times)


def rx_map_cost(events: list[dict[str, Any]]) -> float:
    def run(with_map: bool) -> float:
        source = rx.from_iterable(events)
        stream = source.pipe(rxops.map(lambda v: v)) if with_map else source
        start = time.perf_counter()
        stream.subscribe(lambda v: None)
        return time.perf_counter() - start

    return (best(lambda: run(True)) - best(lambda: run(False))) / len(events)


CASES: list[tuple[str, int, Callable[[], list[Callable[[Any], Any]]]]] = [
    ("filter", SMALL, lambda: [ops.filter(lambda v: v["px"] > 103)]),
    ("map", SMALL, lambda: [ops.map(lambda v: v["px"])]),
    ("key_by", SMALL, lambda: [ops.key_by("sym")]),
    ("dedup(seq)", SMALL, lambda: [ops.dedup("seq", horizon=10_000)]),
    ("reorder(seq), in order", SMALL, lambda: [ops.reorder("seq", max_delay=1.0)]),
    ("throttle_first per key", SMALL, lambda: [ops.throttle_first(0.01, key="sym")]),
    ("throttle_last per key", SMALL, lambda: [ops.throttle_last(0.01, key="sym")]),
    ("throttle_latest per key", SMALL, lambda: [ops.throttle_latest(0.01, key="sym")]),
    ("debounce per key", SMALL, lambda: [ops.debounce(0.01, key="sym")]),
    ("sample per key", SMALL, lambda: [ops.sample(0.01, key="sym")]),
    ("rate_limit drop per key", SMALL, lambda: [ops.rate_limit(100, 1.0, "drop", key="sym")]),
    ("buffer block", SMALL, lambda: [ops.buffer(1024)]),
    ("retry", SMALL, lambda: [ops.retry(Backoff(max_attempts=3))]),
    ("circuit_breaker(fn)", SMALL, lambda: [ops.circuit_breaker(lambda v: v)]),
    ("count_window(100) per key", LARGE, lambda: [ops.count_window(100, key="sym")]),
    (
        "tumbling 1s event time per key",
        LARGE,
        lambda: [ops.event_time("ts"), ops.tumbling_window(1.0, time="event", key="sym")],
    ),
    (
        "sliding 4s/1s event time per key",
        LARGE,
        lambda: [ops.event_time("ts"), ops.sliding_window(4.0, 1.0, time="event", key="sym")],
    ),
    (
        "session 0.5s gap event time per key",
        LARGE,
        lambda: [ops.event_time("ts"), ops.session_window(0.5, time="event", key="sym")],
    ),
    ("tumbling 1s processing time per key", LARGE, lambda: [ops.tumbling_window(1.0, key="sym")]),
]


def main() -> None:
    small, large = make(SMALL), make(LARGE)
    gc.freeze()
    rx_map = rx_map_cost(small)
    base = {
        SMALL: best(lambda: pipeline_time(small)),
        LARGE: best(lambda: pipeline_time(large)),
    }
    event_time_cost = (
        best(lambda: pipeline_time(large, ops.event_time("ts"))) - base[LARGE]
    ) / LARGE
    print(f"reactivex map: {rx_map * 1e9:.0f} ns/event (the unit below)")
    print(f"{'operator':40s} {'ns/event':>9s} {'x rx map':>9s}")
    for label, n, stages in CASES:
        events = small if n == SMALL else large
        total = best(lambda stages=stages, events=events: pipeline_time(events, *stages()))
        cost = (total - base[n]) / n
        if "event time" in label:
            cost -= event_time_cost  # the event_time stage in front is not the window's
        print(f"{label:40s} {cost * 1e9:9.0f} {cost / rx_map:9.2f}")


if __name__ == "__main__":
    main()
