"""Lossy source policies: never wait for credit, drop by an explicit policy, count every drop."""

from __future__ import annotations

import asyncio

import pytest

from rxagent import ConfigurationError, Pipeline
from rxagent.events import Batch
from rxagent.sinks import ListSink
from rxagent.sources import Overflow, memory


class SlowSink(ListSink):
    """Holds each batch for a while before ending it: a slow downstream."""

    def __init__(self, hold: float) -> None:
        super().__init__("slow")
        self.hold = hold

    def on_batch(self, batch: Batch) -> None:
        events = batch.events(take=True)
        self.events.extend(events)

        def end_all() -> None:
            for ev in events:
                ev.end()

        asyncio.get_running_loop().call_later(self.hold, end_all)


async def run_lossy(policy: str, n: int = 2000, **kw: object) -> tuple[Pipeline, SlowSink]:
    sink = SlowSink(0.005)
    overflow = Overflow(policy, capacity=50, **kw)  # type: ignore[arg-type]
    items = [{"k": i % 5, "i": i} for i in range(n)]
    pipeline = Pipeline(
        "lossy", memory(items, credit=20, batch_size=100, key=lambda v: v["k"], overflow=overflow)
    ).to(sink)
    await asyncio.wait_for(pipeline.run(), 20)
    return pipeline, sink


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "latest"])
async def test_the_source_never_waits_and_every_drop_is_counted(policy: str) -> None:
    pipeline, sink = await run_lossy(policy)
    status = pipeline.status()
    # had the source waited for credit, nothing would have been dropped
    assert status.flow["peak_in_flight"] <= 20
    dropped = status.stages["memory"]["dropped"]
    assert dropped > 0
    assert status.stages["memory"][f"dropped_{policy}"] == dropped
    assert len(sink.values) + dropped == 2000, "delivered + dropped != input"
    seen = [v["i"] for v in sink.values]
    assert seen == sorted(seen), "positions went backwards"
    assert pipeline.flow is not None
    # dropped positions are passed once a later row has ended (conservative, never early)
    assert pipeline.flow.watermark() == seen[-1] + 1


async def test_drop_newest_keeps_the_head_and_drop_oldest_the_tail() -> None:
    _, newest = await run_lossy("drop_newest")
    _, oldest = await run_lossy("drop_oldest")
    assert newest.values[0]["i"] == 0
    assert oldest.values[-1]["i"] == 1999, "drop_oldest lost the newest event"


async def test_latest_keeps_the_newest_row_per_key() -> None:
    _, sink = await run_lossy("latest")
    last_per_key = {v["k"]: v["i"] for v in sink.values}
    assert last_per_key == {k: 1995 + k for k in range(5)}


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="overflow policy must be one of"):
        Overflow("block")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="capacity must be >= 1"):
        Overflow("latest", capacity=0)
