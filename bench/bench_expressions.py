"""Per-event cost of an expression filter (rxagent.config.expressions) against a lambda.

1,000,000 dict events, ``{"sym": BTC/ETH/SOL, "px", "seq"}``, through three jobs in the
same run, interleaved, best of each:

- a plain Python loop keeping the values that pass ``lambda v: ...`` (baseline);
- a pipeline ``memory -> ops.filter(lambda) -> sink``;
- the same pipeline with ``expression_filter('value.px > 100 and value.sym == "BTC"')``.

Also printed: the predicate alone, ``list(map(lambda, values))`` against the
expression's per-row and per-batch (``evaluate_many``) forms. Issue target: the
expression filter stage costs no more than 3x the lambda filter stage.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from rxagent import Pipeline
from rxagent import operators as ops
from rxagent.config.expressions import compile_expression, expression_filter
from rxagent.events import Batch
from rxagent.sinks import Sink
from rxagent.sources import memory

N = 1_000_000
BATCH = 512
TEXT = 'value.px > 100 and value.sym == "BTC"'


def predicate(v: Any) -> bool:
    return bool(v["px"] > 100 and v["sym"] == "BTC")


class _Count(Sink):
    def __init__(self) -> None:
        super().__init__("count")
        self.n = 0

    def on_batch(self, batch: Batch) -> None:
        self.n += len(batch.values)
        batch.end_all()


def make(n: int = N) -> list[dict[str, Any]]:
    syms = ("BTC", "ETH", "SOL")
    return [{"sym": syms[i % 3], "px": 90.0 + (i % 23), "seq": i} for i in range(n)]


def plain_loop(events: list[dict[str, Any]]) -> int:
    kept = [v for v in events if predicate(v)]
    return len(kept)


def pipeline(events: list[dict[str, Any]], stage: Callable[[Any], Any] | None) -> int:
    sink = _Count()
    p = Pipeline("b", memory(events, credit=8192, batch_size=BATCH))
    if stage is not None:
        p = p.pipe(stage)
    p.to(sink)
    asyncio.run(p.run())
    return sink.n


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(runs: int = 3) -> None:
    events = make()
    gc.freeze()
    expr = compile_expression(TEXT, kind="predicate")
    jobs: dict[str, Callable[[], int]] = {
        "plain loop": lambda: plain_loop(events),
        "pipeline, no stage": lambda: pipeline(events, None),
        "pipeline + filter(lambda)": lambda: pipeline(events, ops.filter(predicate)),
        "pipeline + expression_filter": lambda: pipeline(events, expression_filter(expr)),
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    counts: dict[str, int] = {}
    for _ in range(runs):
        for name, job in jobs.items():
            t, n = timed(job)
            times[name].append(t)
            counts[name] = n
    expected = counts["plain loop"]
    for name in ("pipeline + filter(lambda)", "pipeline + expression_filter"):
        if counts[name] != expected:
            raise SystemExit(f"{name} kept {counts[name]} events, the loop {expected}: invalid")

    best = {name: min(ts) for name, ts in times.items()}
    ns = 1e9 / N
    print(f"events: {N:,}  batch: {BATCH}  runs: {runs} (best of each, interleaved)")
    print(f"expression: {TEXT}")
    for name, t in best.items():
        print(f"{name:32s} {t * ns:7.1f} ns/event  {t / best['plain loop']:5.2f}x plain loop")
    base = best["pipeline, no stage"]
    lam = (best["pipeline + filter(lambda)"] - base) * ns
    exp = (best["pipeline + expression_filter"] - base) * ns
    print(f"filter stage, lambda             {lam:7.1f} ns/event")
    print(f"filter stage, expression         {exp:7.1f} ns/event  {exp / lam:5.2f}x lambda")
    print(
        f"whole pipeline, expression/lambda "
        f"{best['pipeline + expression_filter'] / best['pipeline + filter(lambda)']:.2f}x"
        "  (target: the stage <= 3x)"
    )

    values = events[:200_000]
    chunks = [values[i : i + BATCH] for i in range(0, len(values), BATCH)]

    def alone(fn: Callable[[list[Any]], list[Any]]) -> float:
        start = time.perf_counter()
        for chunk in chunks:
            fn(chunk)
        return (time.perf_counter() - start) * 1e9 / len(values)

    lam_alone = min(alone(lambda c: list(map(predicate, c))) for _ in range(runs))
    row_alone = min(alone(lambda c: list(map(expr, c))) for _ in range(runs))
    many_alone = min(alone(expr.evaluate_many) for _ in range(runs))
    print("the predicate alone, per 512-value batch:")
    rows = [
        ("list(map(lambda))", lam_alone),
        ("list(map(expression)), per row", row_alone),
        ("expression.evaluate_many", many_alone),
    ]
    for label, cost in rows:
        print(f"  {label:31s} {cost:7.1f} ns/event  {cost / lam_alone:5.2f}x")


if __name__ == "__main__":
    main()
