"""A worker for the WebSocket resume tests, run as a subprocess: a WebSocket feed of
numbered messages -> per-key count and sum -> a durable state store.

Usage: python ws_state_worker.py URL STATE_DIR OUT_JSON

The source subscribes with ``{"op": "subscribe", "from": last_seq}``; ``last_seq``
starts at the resume position stored with the state by an earlier run, if any.
A second sink ends each batch 10 ms after it arrived, so the completion watermark
(hence the stored resume position) trails what the store already folded: a
restart is sent again messages the store holds, and must skip them.

Every 20 ms it prints a JSON line: events folded into the store (restored ones
included), keys, the store's checkpoints and skipped replays, and the source's
``last_seq``, ``resumed_from`` and the position stored at the last checkpoint. On
SIGTERM it drains, writes the final state to OUT_JSON and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.backoff import Backoff
from rxagent.events import Batch, Event
from rxagent.sinks import Sink
from rxagent.websocket.source import WebSocketSource


class SlowEnd(Sink):
    """Ends each batch 10 ms after it arrived: events stay in flight meanwhile."""

    kind = "slow"

    def on_batch(self, batch: Batch) -> None:
        events = batch.events(take=True)
        asyncio.get_running_loop().call_later(0.01, lambda: [e.end() for e in events])


def total(old: Any, event: Event) -> dict[str, int]:
    old = old or {"count": 0, "sum": 0}
    return {"count": old["count"] + 1, "sum": old["sum"] + event.value["n"]}


async def report(store: StateStore, source: WebSocketSource) -> None:
    while True:
        snap = store.snapshot
        stored = (store.stored_meta() or {}).get("source:feed")
        line = {
            "folded": sum(v["count"] for v in snap.values()),
            "keys": len(snap),
            "checkpoints": store.durability().get("checkpoints", 0),
            "ignored": store.ignored,
            "last_seq": source.last_seq,
            "resumed_from": source.resumed_from,
            "stored_seq": None if stored is None else stored.get("last_seq"),
        }
        print(json.dumps(line), flush=True)
        await asyncio.sleep(0.02)


async def main(argv: list[str]) -> None:
    url, state_dir, out = argv[:3]
    source = WebSocketSource(
        url,
        subscribe=lambda last_seq: [{"op": "subscribe", "from": last_seq}],
        sequence=lambda value: value["seq"],
        name="feed",
        credit=256,
        batch_size=64,
        backoff=Backoff(initial=0.01, factor=1.0, max_delay=0.01, max_attempts=None),
        stable_after=0,
    )
    store = StateStore("totals", state_dir=state_dir)
    pipeline = (
        Pipeline("totals", source, checkpoint_interval=0.1)
        .pipe(ops.key_by("k"))
        .to(store.sink(reducer=total), SlowEnd())
    )
    draining: list[asyncio.Future[Any]] = []
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(
        signal.SIGTERM, lambda: draining.append(loop.create_task(pipeline.drain()))
    )
    reporter = asyncio.ensure_future(report(store, source))
    try:
        await pipeline.run()
    finally:
        reporter.cancel()
    Path(out).write_text(json.dumps(store.snapshot.to_dict()))  # noqa: ASYNC240 - the last act


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
