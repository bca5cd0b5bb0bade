"""100,000 events as fast as the source goes, into a tool that sleeps 1 ms, concurrency 8.

With backpressure the source reads only while it holds credit, so memory stays
flat however many events come: peak RSS after 10,000 and after 100,000 events
must be within 20 MiB. The baseline, run in a separate process in the same
invocation, is the hand-written loop this replaces: one task per event, limited
by a semaphore, which buffers every event not yet processed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

N = 100_000
CHECKPOINTS = (10_000, 100_000)
MIB = 1024 * 1024


def rss() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def events(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"sym": f"S{i % 10}", "px": 100.0 + (i % 97) / 10, "seq": i, "pad": "x" * 200}


async def work(sym: str, px: float, seq: int) -> None:
    await asyncio.sleep(0.001)


def run_rxagent() -> dict[str, Any]:
    from rxagent import Pipeline
    from rxagent.sinks.tools import ToolSink, ToolStatus
    from rxagent.sources import memory

    peaks: dict[int, int] = {}
    done = 0
    peak = rss()

    def on_result(result: Any) -> None:
        nonlocal done, peak
        done += 1
        if result.status is not ToolStatus.OK:
            raise SystemExit(f"tool call failed: {result}")
        if done % 500 == 0:
            peak = max(peak, rss())
        if done in CHECKPOINTS:
            peaks[done] = max(peak, rss())

    sink = ToolSink(
        work,
        args=lambda v: {"sym": v["sym"], "px": v["px"], "seq": v["seq"]},
        policy="parallel",
        concurrency=8,
    )
    sink.results.subscribe(on_result)
    pipeline = Pipeline("bp", memory(events(N), credit=256, batch_size=64)).to(sink)
    start = time.perf_counter()
    status = asyncio.run(pipeline.run())
    elapsed = time.perf_counter() - start
    return {
        "peaks": peaks,
        "elapsed": elapsed,
        "peak_in_flight": status.flow["peak_in_flight"],
        "credit": status.flow["capacity"],
        "done": done,
    }


def run_baseline() -> dict[str, Any]:
    """The hand-written way: a task per event, a semaphore for concurrency."""
    peaks: dict[int, int] = {}
    done = 0
    peak = rss()

    async def main() -> None:
        nonlocal done, peak
        sem = asyncio.Semaphore(8)

        async def one(v: dict[str, Any]) -> None:
            nonlocal done, peak
            async with sem:
                await work(v["sym"], v["px"], v["seq"])
            done += 1
            if done % 500 == 0:
                peak = max(peak, rss())
            if done in CHECKPOINTS:
                peaks[done] = max(peak, rss())

        tasks = [asyncio.create_task(one(v)) for v in events(N)]
        await asyncio.gather(*tasks)

    start = time.perf_counter()
    asyncio.run(main())
    return {"peaks": peaks, "elapsed": time.perf_counter() - start, "done": done}


def _child(which: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_backpressure", which],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    # each in a fresh process so one's heap does not hide the other's
    rxa = _child("rxagent")
    base = _child("baseline")
    r10, r100 = (rxa["peaks"][str(c)] / MIB for c in CHECKPOINTS)
    b10, b100 = (base["peaks"][str(c)] / MIB for c in CHECKPOINTS)
    print(f"events: {N:,}, tool sleeps 1 ms, concurrency 8")
    print(
        f"rxagent  (credit {rxa['credit']}): peak RSS {r10:6.1f} MiB at 10k, {r100:6.1f} MiB "
        f"at 100k: growth {r100 - r10:+.1f} MiB (limit 20); peak in flight "
        f"{rxa['peak_in_flight']}; {rxa['elapsed']:.1f} s"
    )
    print(
        f"baseline (task per event):  peak RSS {b10:6.1f} MiB at 10k, {b100:6.1f} MiB "
        f"at 100k: growth {b100 - b10:+.1f} MiB; {base['elapsed']:.1f} s"
    )
    print(
        f"rxagent peak RSS at 100k = {r100 / b100:.2f}x the baseline's; "
        f"time {rxa['elapsed'] / base['elapsed']:.2f}x"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        fn = {"rxagent": run_rxagent, "baseline": run_baseline}[sys.argv[1]]
        print(json.dumps(fn()))
    else:
        main()
