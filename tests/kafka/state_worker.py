"""A worker for the durable-state tests, run as a subprocess: Kafka -> per-key count
and sum -> a durable state store, slowly enough to be killed mid-stream.

Usage: python state_worker.py BOOTSTRAP TOPIC GROUP STATE_DIR OUT_JSON [--until-eof]
       [--assign] [--instance ID] [--window N]

With ``--window N`` events go through a count window of N per key first; the
store folds each window's events it has not folded yet (by id: a window's
boundaries move when a partition is replayed from its committed offset).

Every 20 ms it prints a JSON line: events folded into the store so far (restored
ones included), keys held, partitions assigned, and the source's consumed count.
With ``--until-eof`` it stops at the end of the topic, otherwise on SIGTERM; then
it writes the final state to OUT_JSON and exits.
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


def window_total(old: Any, event: Event) -> dict[str, int]:
    old = old or {"count": 0, "sum": 0, "last": -1}
    new = [v for v in event.value.value if v["id"] > old["last"]]
    if not new:
        return old
    return {
        "count": old["count"] + len(new),
        "sum": old["sum"] + sum(v["n"] for v in new),
        "last": new[-1]["id"],
    }


async def report(store: StateStore, source: KafkaSource) -> None:
    while True:
        snap = store.snapshot
        line = {
            "folded": sum(v["count"] for v in snap.values()),
            "keys": len(snap),
            "partitions": source.describe()["assignment"],
            "emitted": source.emitted,
            "revocations": source.revocations,
            "last_revoke": source.last_revoke_seconds,
        }
        print(json.dumps(line), flush=True)
        await asyncio.sleep(0.02)


async def main(argv: list[str]) -> None:
    bootstrap, topic, group, state_dir, out = argv[:5]
    config: dict[str, Any] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    instance = argv[argv.index("--instance") + 1] if "--instance" in argv else None
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        config=config,
        instance_id=instance,
        assign="--assign" in argv,
        until_eof="--until-eof" in argv,
        credit=256,
        batch_size=64,
        commit_interval=0.1,
        revoke_timeout=2.0,
    )
    store = StateStore("totals", state_dir=state_dir)
    pipeline = Pipeline("totals", source, checkpoint_interval=0.1)
    if "--window" in argv:
        pipeline.pipe(ops.count_window(int(argv[argv.index("--window") + 1])))
        pipeline.to(store.sink(reducer=window_total), SlowEnd())
    else:
        pipeline.to(store.sink(reducer=total), SlowEnd())
    stopping = False
    held: dict[str, Any] = {}
    release = store.revoke_partitions

    async def keep_then_release(partitions: Any) -> None:
        # leaving the group releases the state: what it held at stop is written out
        if stopping:
            held.update(store.snapshot.to_dict())
        await release(partitions)

    store.revoke_partitions = keep_then_release  # type: ignore[method-assign]

    draining: list[asyncio.Future[Any]] = []

    def stop() -> None:
        nonlocal stopping
        stopping = True
        draining.append(asyncio.ensure_future(pipeline.drain()))

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    reporter = asyncio.ensure_future(report(store, source))
    try:
        await pipeline.run()
        stopping = True
        await source.wait_closed()
    finally:
        reporter.cancel()
    held.update(store.snapshot.to_dict())
    Path(out).write_text(json.dumps(held))  # noqa: ASYNC240 - the process's last act


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
