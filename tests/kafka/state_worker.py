"""A worker for the durable-state tests, run as a subprocess: Kafka -> per-key count
and sum -> a durable state store, slowly enough to be killed mid-stream.

Usage: python state_worker.py BOOTSTRAP TOPIC GROUP STATE_DIR OUT_JSON [--until-eof]
       [--assign] [--instance ID]

Every 20 ms it prints the number of events folded into the store so far (restored
ones included), so the test can kill it at a chosen point; with ``--until-eof`` it
writes the final state to OUT_JSON and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rxagent import Pipeline, StateStore
from rxagent.events import Batch, Event
from rxagent.kafka import KafkaSource
from rxagent.sinks import Sink


class SlowEnd(Sink):
    """Ends each batch 10 ms after it arrived: events stay in flight meanwhile."""

    kind = "slow"

    def on_batch(self, batch: Batch) -> None:
        events = batch.events(take=True)
        asyncio.get_running_loop().call_later(0.01, lambda: [e.end() for e in events])


def total(old: Any, event: Event) -> dict[str, int]:
    old = old or {"count": 0, "sum": 0}
    return {"count": old["count"] + 1, "sum": old["sum"] + event.value["n"]}


async def report(store: StateStore) -> None:
    while True:
        folded = sum(v["count"] for v in store.snapshot.values())
        print(folded, flush=True)
        await asyncio.sleep(0.02)


async def main(argv: list[str]) -> None:
    bootstrap, topic, group, state_dir, out = argv[:5]
    config: dict[str, Any] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    if "--instance" in argv:
        config["group.instance.id"] = argv[argv.index("--instance") + 1]
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        config=config,
        assign="--assign" in argv,
        until_eof="--until-eof" in argv,
        credit=256,
        batch_size=64,
        commit_interval=0.1,
    )
    store = StateStore("totals", state_dir=state_dir)
    pipeline = Pipeline("totals", source, checkpoint_interval=0.1)
    pipeline.to(store.sink(reducer=total), SlowEnd())
    reporter = asyncio.ensure_future(report(store))
    try:
        await pipeline.run()
        await source.wait_closed()
    finally:
        reporter.cancel()
    Path(out).write_text(json.dumps(store.snapshot.to_dict()))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
