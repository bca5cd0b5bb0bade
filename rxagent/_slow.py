"""Warnings for user functions that hold the event loop.

Maps, filters, key functions and state reducers run on the event loop, batch by
batch: while one runs, no source reads, no timer fires and no tool call
progresses. The stages that call user functions time each batch (two clock reads
per batch, not per event) and report a batch that held the loop longer than
:data:`SLOW_BATCH_SECONDS`: a warning naming the stage, the time and the events,
at most once per :data:`WARN_EVERY` seconds per stage, and a count in the
stage's metrics (``slow_batches``, ``slowest_batch_seconds``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import PipelineContext

__all__ = ["SLOW_BATCH_SECONDS", "WARN_EVERY", "clock", "note"]

log = logging.getLogger("rxagent.slow")

#: A batch that holds the loop longer than this is reported.
SLOW_BATCH_SECONDS = 0.5
#: At most one warning per stage this often (the counts go on).
WARN_EVERY = 30.0

clock = time.perf_counter
_warned: dict[tuple[int, str], float] = {}


def note(ctx: PipelineContext, stage: str, started: float, events: int) -> None:
    """Call after a batch: reports it when it held the loop too long."""
    seconds = clock() - started
    if seconds < SLOW_BATCH_SECONDS:
        return
    metrics = ctx.stage(stage)
    extra = metrics.extra
    extra["slow_batches"] = extra.get("slow_batches", 0) + 1
    if seconds > extra.get("slowest_batch_seconds", 0.0):
        extra["slowest_batch_seconds"] = round(seconds, 3)
    now = time.monotonic()
    key = (id(ctx), stage)
    last = _warned.get(key)
    if last is not None and now - last < WARN_EVERY:
        return
    if len(_warned) > 1024:
        _warned.clear()
    _warned[key] = now
    per_event = f" ({seconds / events * 1000:.1f} ms per event)" if events else ""
    log.warning(
        "pipeline %r: stage %r held the event loop for %.2fs with one batch of %d events%s: "
        "while it runs nothing else in the process moves (sources, timers, tool calls). "
        "Move slow work to a tool (synchronous tools run in threads) or make the "
        "function fast (docs/architecture.md, Decision 4)",
        ctx.pipeline,
        stage,
        seconds,
        events,
        per_event,
        extra={"pipeline": ctx.pipeline, "stage": stage},
    )
