"""Stopping a Kafka-sourced pipeline leaves no partial window in state.

A stop is not the end of the input (docs/operators.md, "Windows and stops"):
the windows still open give their events up *uncommitted*, so the durable state
holds only windows that closed, and a restart reads those events again and
computes the window whole. Real broker (Tansu), real consumer group, a durable
store; batches of two messages, so the batch that closes one window also holds
an event of the next.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _helpers import until

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.kafka import KafkaSource
from rxagent.values import Window


def messages(times: list[int]) -> list[tuple[str, bytes]]:
    return [("a", json.dumps({"t": t, "n": t * 10}).encode()) for t in times]


def window_pipeline(
    bootstrap: str, topic: str, group: str, state_dir: Path, *, until_eof: bool
) -> tuple[Pipeline, StateStore]:
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        assign=True,
        until_eof=until_eof,
        batch_size=2,
        commit_interval=0.1,
    )
    store = StateStore("windows", state_dir=state_dir)
    sums = ops.tumbling_window(10, time="event", agg={"count": ops.count(), "sum": ops.sum_("n")})

    def entry(w: Window) -> dict[str, Any]:
        return {**w.value, "partial": w.partial}

    pipeline = (
        Pipeline("sums", source, checkpoint_interval=0.1)
        .pipe(ops.event_time("t"), sums)
        .to(store.sink(key=lambda w: f"{w.key}@{w.start:g}", value=entry))
    )
    return pipeline, store


async def test_a_stopped_kafka_pipeline_keeps_no_partial_window_and_a_restart_completes_it(
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    kafka_produce: Callable[..., None],
    tmp_path: Path,
) -> None:
    topic = kafka_topic(1)
    group = f"stop-{uuid.uuid4().hex[:8]}"
    # window [0, 10) closes when 11 arrives; [10, 20) is open (11, 13) at the stop
    kafka_produce(topic, messages([0, 2, 4, 6, 8, 11, 13]))
    pipeline, store = window_pipeline(kafka_bootstrap, topic, group, tmp_path, until_eof=False)
    await pipeline.start()
    await until(lambda: pipeline.status().stages.get("tumbling_window", {}).get("in") == 7, 30)
    await until(lambda: "a@0" in store.snapshot, 30)
    status = await pipeline.drain()
    assert status.state == "stopped"
    assert status.stages["tumbling_window"]["released_at_stop"] == 2
    first = store.snapshot.to_dict()
    # only the window that closed: no half-finished [10, 20) with 2 of its 5 events
    assert first == {"a@0": {"count": 5, "sum": 200, "partial": False}}

    # the rest of [10, 20), and 21, which closes it; then a restart to the end
    kafka_produce(topic, messages([15, 17, 19, 21]))
    pipeline, store = window_pipeline(kafka_bootstrap, topic, group, tmp_path, until_eof=True)
    await pipeline.run(timeout=60)
    assert store.snapshot.to_dict() == {
        "a@0": {"count": 5, "sum": 200, "partial": False},  # replayed events change nothing
        "a@10": {"count": 5, "sum": 750, "partial": False},  # 11 and 13 were read again
        "a@20": {"count": 1, "sum": 210, "partial": False},  # the end of the input: final
    }
