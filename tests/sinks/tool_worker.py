"""A worker process for tests/sinks/test_tool_idempotency.py (killed with SIGKILL there).

``python tool_worker.py STATE_DIR CALLS PROGRESS RUN N [DELAY]`` runs one pipeline:
N events from a memory source (positions 0..N-1 on every run: a restarted worker
replays from the start) into a ToolSink with ``state_dir``. Its tool appends
``RUN KEY TRIGGER`` to CALLS (flush + fsync) when a call starts, then sleeps DELAY
seconds, so a kill lands with calls in flight. After each checkpoint of the
activation record the worker appends ``checkpoint DONE`` to PROGRESS (DONE: the
keys recorded so far); at the end ``finished SKIPPED`` (events skipped as already
done).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from typing import Any

from rxagent import Pipeline, sources
from rxagent.sinks import ToolSink
from rxagent.tools import current_activation, tool


def append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


class ReportingSink(ToolSink):
    """Says when a checkpoint of the record returned (what the test waits for)."""

    progress = ""

    async def checkpoint(self, meta: Mapping[str, Any] | None = None) -> None:
        await super().checkpoint(meta)
        info = self.describe()["activation_record"]
        append(self.progress, f"checkpoint {info['done'] - info['pending']}")


async def main(state_dir: str, calls: str, progress: str, run: str, n: int, delay: float) -> None:
    @tool
    async def act(i: int) -> int:
        """Record the call, then take a while."""
        activation = current_activation()
        key = None if activation is None else activation.idempotency_key
        assert key is not None
        append(calls, f"{run} {key} {i}")
        await asyncio.sleep(delay)
        return i

    sink = ReportingSink(
        act,
        args=lambda v: {"i": v},
        policy="parallel",
        concurrency=3,
        state_dir=state_dir,
    )
    sink.progress = progress
    pipeline = Pipeline(
        "tool-worker",
        sources.memory(list(range(n)), credit=8, batch_size=4),
        checkpoint_interval=0.05,
    ).to(sink)
    status = await pipeline.run()
    skipped = status.stages[sink.name].get("skipped_done", 0)
    append(progress, f"finished {skipped}")


if __name__ == "__main__":
    state_dir, calls, progress, run, n = sys.argv[1:6]
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.03
    asyncio.run(main(state_dir, calls, progress, run, int(n), delay))
