"""A user function holding the event loop is reported, naming its stage (issue 12)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.events import Event
from rxagent.sources import memory
from rxagent.testing import run


def slow_double(value: int) -> int:
    time.sleep(0.2)
    return value * 2


async def test_a_slow_map_is_reported_with_its_stage_time_and_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rxagent.slow")
    result = await run(range(6), ops.map(slow_double, name="slow_double"), batch_size=3)
    assert result.values == [0, 2, 4, 6, 8, 10]
    warnings = [r.getMessage() for r in caplog.records if r.name == "rxagent.slow"]
    assert len(warnings) == 1, "one warning per stage, not per batch"
    assert "stage 'slow_double' held the event loop for 0.6" in warnings[0]
    assert "one batch of 3 events (200." in warnings[0]
    extra = result.status.stages["slow_double"]
    assert extra["slow_batches"] == 2
    assert extra["slowest_batch_seconds"] >= 0.6


async def test_a_slow_reducer_is_reported_with_its_sink(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rxagent.slow")
    store = StateStore("totals")

    def slow_count(old: Any, event: Event) -> int:
        time.sleep(0.15)
        return (old or 0) + 1

    pipeline = Pipeline("slowstate", memory(range(8), batch_size=4)).pipe(
        ops.key_by(lambda v: v % 2)
    )
    pipeline.to(store.sink(reducer=slow_count))
    await pipeline.run(timeout=30)
    assert store.snapshot.to_dict() == {0: 4, 1: 4}
    warnings = [r.getMessage() for r in caplog.records if r.name == "rxagent.slow"]
    assert len(warnings) == 1
    assert "pipeline 'slowstate': stage 'state:totals' held the event loop" in warnings[0]


async def test_fast_stages_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rxagent.slow")
    result = await run(range(1000), ops.map(lambda v: v + 1), ops.filter(lambda v: v % 2))
    assert len(result.values) == 500
    assert not [r for r in caplog.records if r.name == "rxagent.slow"]
    assert all("slow_batches" not in stage for stage in result.status.stages.values())
