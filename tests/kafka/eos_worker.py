"""A worker for the exactly-once tests, run as a subprocess (or imported): Kafka ->
a per-key count in a durable store, and a Kafka sink writing, for each input event,
``{"id": <input id>, "key": <key>}`` to the output topic, all with
``processing_guarantee="exactly_once"``.

Usage: python eos_worker.py BOOTSTRAP TOPIC OUT_TOPIC GROUP STATE_DIR OUT_JSON
       [--until-eof] [--instance ID] [--slow]

``--slow`` adds a sink that ends each event 10 ms after the others did: the Kafka
sink has its record long before the event's offset may be committed, so records of
events behind unfinished ones must wait for their watermark.

Every 20 ms it prints a JSON line: events folded into the store (restored ones
included), the source's emitted count, transactions committed and records the
Kafka sink holds. It stops at the end of the topic with ``--until-eof``, otherwise
on SIGTERM (draining); then it writes the final state to OUT_JSON and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from rxagent import Pipeline, StateStore
from rxagent.events import Batch, Event
from rxagent.kafka import KafkaSink, KafkaSource
from rxagent.sinks import Sink


class SlowEnd(Sink):
    """Ends each batch 10 ms after it arrived: events stay in flight meanwhile."""

    kind = "slow"

    def on_batch(self, batch: Batch) -> None:
        events = batch.events(take=True)
        asyncio.get_running_loop().call_later(0.01, lambda: [e.end() for e in events])


def count(old: Any, event: Event) -> int:
    return (old or 0) + 1


def build(
    bootstrap: str,
    topic: str,
    out_topic: str,
    group: str,
    state_dir: str,
    *,
    instance: str,
    until_eof: bool,
    slow: bool,
) -> tuple[Pipeline, KafkaSource, StateStore, KafkaSink]:
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        instance_id=instance,
        processing_guarantee="exactly_once",
        until_eof=until_eof,
        credit=256,
        batch_size=64,
        commit_interval=0.1,
        revoke_timeout=2.0,
    )
    store = StateStore("counts", state_dir=state_dir)
    sink = KafkaSink(
        out_topic,
        bootstrap_servers=bootstrap,
        key=lambda value: value["key"],
        encode=lambda value: json.dumps({"id": value["id"], "key": value["key"]}).encode(),
    )
    pipeline = Pipeline("eos", source, checkpoint_interval=0.1)
    pipeline.to(store.sink(reducer=count, key=lambda v: v["key"]), sink)
    if slow:
        pipeline.to(SlowEnd())
    return pipeline, source, store, sink


async def report(store: StateStore, source: KafkaSource, sink: KafkaSink) -> None:
    while True:
        info = source.describe()
        line = {
            "folded": sum(store.snapshot.values()),
            "emitted": source.emitted,
            "transactions": info["transactions"]["transactions"],
            "held": sink.describe().get("held", 0),
            "partitions": info["assignment"],
        }
        print(json.dumps(line), flush=True)
        await asyncio.sleep(0.02)


async def main(argv: list[str]) -> None:
    bootstrap, topic, out_topic, group, state_dir, out = argv[:6]
    instance = argv[argv.index("--instance") + 1] if "--instance" in argv else "w0"
    pipeline, source, store, sink = build(
        bootstrap,
        topic,
        out_topic,
        group,
        state_dir,
        instance=instance,
        until_eof="--until-eof" in argv,
        slow="--slow" in argv,
    )
    held: dict[str, Any] = {}
    release = store.revoke_partitions

    async def keep_then_release(partitions: Any) -> None:
        # leaving the group releases the state: what it held is written out (one worker)
        held.update(store.snapshot.to_dict())
        await release(partitions)

    store.revoke_partitions = keep_then_release  # type: ignore[method-assign]
    draining: list[asyncio.Future[Any]] = []

    def stop() -> None:
        draining.append(asyncio.ensure_future(pipeline.drain()))

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    reporter = asyncio.ensure_future(report(store, source, sink))
    try:
        status = await pipeline.run()
        await source.wait_closed()
    finally:
        reporter.cancel()
    if status.state == "failed":
        raise SystemExit(f"pipeline failed: {status.last_error}")
    held.update(store.snapshot.to_dict())
    Path(out).write_text(json.dumps(held))  # noqa: ASYNC240 - the process's last act


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
