"""The orchestrator-worker shape on a real broker.

An orchestrator pipeline publishes commands to a topic; two worker pipelines in one
consumer group share the commands and publish results; the orchestrator folds the
results into a state store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from rxagent import Pipeline, StateStore, sources
from rxagent import operators as ops
from rxagent.sinks import KafkaSink
from rxagent.sources import KafkaSource

FAST_GROUP = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 200,
    "max.poll.interval.ms": 2000,
}


async def test_workers_in_one_group_answer_every_command_of_the_orchestrator(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    commands, results = kafka_topic(4, prefix="commands"), kafka_topic(2, prefix="results")
    n = 400
    tasks = [{"id": f"t{i}", "x": i} for i in range(n)]

    def worker(name: str) -> tuple[KafkaSource, Pipeline]:
        source = KafkaSource(
            commands,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"workers-{commands}",
            config=FAST_GROUP,
            name=name,
        )
        pipeline = (
            Pipeline(name, source)
            .pipe(ops.map(lambda t, w=name: {"id": t["id"], "y": t["x"] ** 2, "by": w}))
            .to(KafkaSink(results, bootstrap_servers=kafka_bootstrap, key="id"))
        )
        return source, pipeline

    answers = StateStore("answers")
    collect_source = KafkaSource(
        results,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"orchestrator-{uuid.uuid4().hex[:6]}",
        assign=True,
    )
    collect = Pipeline("collect", collect_source).to(answers.sink())
    publish = (
        Pipeline("publish", sources.memory(tasks))
        .pipe(ops.key_by("id"))
        .to(KafkaSink(commands, bootstrap_servers=kafka_bootstrap))
    )
    workers = [worker("w1"), worker("w2")]
    running = [collect] + [p for _, p in workers]
    for pipeline in running:
        await pipeline.start()
    try:
        # commands go out once the group has settled: two members, two partitions each
        deadline = time.monotonic() + 20
        while sorted(len(s.describe()["assignment"]) for s, _ in workers) != [2, 2]:
            assert time.monotonic() < deadline, "the worker group did not settle"
            await asyncio.sleep(0.02)
        assert (await asyncio.wait_for(publish.run(), 20)).completed
        while len(answers.snapshot) < n:
            assert time.monotonic() < deadline, f"{len(answers.snapshot)} of {n} answers"
            await asyncio.sleep(0.02)
    finally:
        for pipeline in running:
            await pipeline.drain(5)
        for source, _ in [*workers, (collect_source, None)]:
            await source.wait_closed()
    snapshot = answers.snapshot
    assert {k: v["y"] for k, v in snapshot.items()} == {t["id"]: t["x"] ** 2 for t in tasks}
    # both workers took a share of the partitions and of the work
    assert {v["by"] for v in snapshot.values()} == {"w1", "w2"}
