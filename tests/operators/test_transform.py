"""filter, map, key_by, event_time, flat_map, tap."""

from __future__ import annotations

import pytest

from rxagent import PipelineError
from rxagent import operators as ops
from rxagent.testing import run


async def test_filter_keeps_matching_values_and_counts_drops() -> None:
    result = await run(range(100), ops.filter(lambda v: v % 3 == 0))
    assert result.values == list(range(0, 100, 3))
    stage = result.status.stages["filter"]
    assert stage["in"] == 100
    assert stage["dropped"] == 100 - len(result.values)
    assert result.status.flow["pending"] == 0


async def test_map_replaces_values_and_keeps_positions() -> None:
    result = await run(["a", "b", "c"], ops.map(str.upper))
    assert result.values == ["A", "B", "C"]
    assert [ev.position.offset for ev in result.events if ev.position] == [0, 1, 2]


async def test_a_raising_map_dead_letters_that_event_and_the_rest_flows() -> None:
    def invert(v: int) -> float:
        return 1 / v

    result = await run([2, 0, 4, 0, 5], ops.map(invert, name="invert"))
    assert result.values == [0.5, 0.25, 0.2]
    assert len(result.dead_letters) == 2
    letter = result.dead_letters[0]
    assert letter.stage == "invert"
    assert letter.error_type == "ZeroDivisionError"
    assert letter.event.value == 0
    assert letter.event.position is not None
    assert letter.event.position.offset == 1
    assert result.status.flow["pending"] == 0, "dead-lettered events were not ended"


async def test_a_raising_filter_dead_letters_only_the_failing_rows() -> None:
    result = await run([{"px": 1}, {}, {"px": 3}], ops.filter(lambda v: v["px"] > 1))
    assert result.values == [{"px": 3}]
    assert [d.error_type for d in result.dead_letters] == ["KeyError"]


async def test_fail_fast_turns_the_error_into_a_pipeline_failure() -> None:
    with pytest.raises(PipelineError, match=r"stage 'map'.*ZeroDivisionError"):
        await run([1, 0], ops.map(lambda v: 1 / v), fail_fast=True)


async def test_key_by_field_name_and_function() -> None:
    result = await run([{"s": "a"}, {"s": "b"}], ops.key_by("s"))
    assert result.keys == ["a", "b"]
    result = await run([1, 2], ops.key_by(lambda v: v * 10))
    assert result.keys == [10, 20]


async def test_event_time_from_field() -> None:
    result = await run([{"ts": 5}, {"ts": 7.5}], ops.event_time("ts"))
    assert [ev.time for ev in result.events] == [5.0, 7.5]


async def test_flat_map_fans_out_and_holds_until_all_outputs_end() -> None:
    result = await run([1, 2, 0, 3], ops.flat_map(lambda v: [v] * v))
    assert result.values == [1, 2, 2, 3, 3, 3]
    assert result.status.flow["pending"] == 0
    assert result.status.stages["flat_map"]["dropped"] == 1


async def test_tap_sees_every_value() -> None:
    seen: list[int] = []
    result = await run(range(5), ops.tap(seen.append))
    assert seen == result.values == [0, 1, 2, 3, 4]


async def test_step_names_are_unique_in_a_pipeline() -> None:
    result = await run(range(4), ops.map(lambda v: v + 1), ops.map(lambda v: v * 2))
    assert result.values == [2, 4, 6, 8]
    assert {"map", "map#2"} <= set(result.status.stages)
