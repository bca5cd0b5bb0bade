"""Tool activations: every event activates a trivial async tool, at 10,000 events/s.

A paced producer sends events into a ``push()`` source (10 every millisecond,
stamped with ``time.perf_counter()`` when pushed); a :class:`ToolSink` with its
defaults but a key per event's ``key`` field (100 keys, policy ``"queue"``,
concurrency 8) calls a tool that only records when it started. Printed: the
achieved activation rate and the event-ingest -> call-start latency (p50, p99,
max). Target: sustains 10,000 activations/s with p99 < 5 ms.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import Any

RATE = 10_000  # events per second
SECONDS = 3.0
TICK = 0.001  # the producer pushes RATE * TICK events per tick
KEYS = 100
TARGET_P99_MS = 5.0


async def run_once(rate: int = RATE, seconds: float = SECONDS) -> dict[str, float]:
    from rxagent import Pipeline
    from rxagent.sinks.tools import ToolSink, ToolStatus
    from rxagent.sources import push

    latencies: list[float] = []
    perf = time.perf_counter

    async def trivial(key: str, pushed: float) -> None:
        latencies.append(perf() - pushed)

    failures: list[Any] = []

    def on_result(result: Any) -> None:
        if result.status is not ToolStatus.OK:
            failures.append(result)

    source = push()
    sink = ToolSink(trivial, key="key")
    sink.results.subscribe(on_result)
    pipeline = Pipeline("activations", source).to(sink)
    n = int(rate * seconds)
    per_tick = max(1, int(rate * TICK))

    async def produce() -> None:
        start = perf()
        sent = 0
        while sent < n:
            # push what is due by now (catching up after a late wake-up)
            due = min(n, int((perf() - start) * rate) + per_tick)
            while sent < due:
                await source.send({"key": f"k{sent % KEYS}", "pushed": perf()})
                sent += 1
            await asyncio.sleep(TICK)
        source.complete()

    started = perf()
    cpu = time.process_time()
    await asyncio.gather(pipeline.run(), produce())
    wall = perf() - started
    cpu = time.process_time() - cpu
    if failures:
        raise SystemExit(f"{len(failures)} activations failed, first: {failures[0]}")
    if len(latencies) != n:
        raise SystemExit(f"{len(latencies)} calls for {n} events: benchmark invalid")
    latencies.sort()
    return {
        "rate": n / wall,
        "p50_ms": latencies[n // 2] * 1e3,
        "p99_ms": latencies[int(n * 0.99)] * 1e3,
        "max_ms": latencies[-1] * 1e3,
        "cpu_us": cpu / n * 1e6,
    }


def main(runs: int = 5) -> None:
    gc.collect()
    rows = [asyncio.run(run_once()) for _ in range(runs)]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(
        f"target {RATE:,} activations/s for {SECONDS:g}s, {KEYS} keys, policy queue, "
        f"concurrency 8; runs: {runs} (medians)"
    )
    print(
        f"achieved {med['rate']:,.0f}/s  ingest->call p50 {med['p50_ms']:.2f} ms  "
        f"p99 {med['p99_ms']:.2f} ms  max {med['max_ms']:.1f} ms  "
        f"cpu {med['cpu_us']:.1f} us/activation"
    )
    met = med["rate"] >= 0.97 * RATE and med["p99_ms"] < TARGET_P99_MS
    print(f"target: {RATE:,}/s with p99 < {TARGET_P99_MS:g} ms: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
