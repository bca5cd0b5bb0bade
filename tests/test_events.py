"""The event envelope and the batch that carries rows (rxagent.events)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxagent import Batch, Event, Flow, Position
from rxagent.context import PipelineContext
from rxagent.events import KeptPositions, _select_positions, _take_positions


async def _batch(n: int, flow: Flow | None = None, **columns: object) -> tuple[Batch, Flow]:
    flow = flow or Flow("src", capacity=100)
    await flow.acquire(n)
    ticket = flow.ticket(n, first=0, last=n - 1)
    batch = Batch(
        list(range(n)),
        ctx=PipelineContext("p"),
        source="src",
        time=1.0,
        ticket=ticket,
        positions=range(n),
        **columns,  # type: ignore[arg-type]
    )
    return batch, flow


async def test_select_keeps_rows_and_ends_the_dropped_ones() -> None:
    batch, flow = await _batch(6, keys=list("abcdef"))
    kept = batch.select([v % 2 == 0 for v in batch.values])
    assert kept.values == [0, 2, 4]
    assert kept.keys == ["a", "c", "e"]
    assert list(kept.positions or []) == [0, 2, 4]
    assert flow.pending == 3
    kept.end_all()
    assert flow.pending == 0
    assert flow.watermark() == 6


async def test_event_take_moves_the_hold() -> None:
    batch, flow = await _batch(2)
    ev = batch.event(1, take=True)
    assert ev.position == Position("src", None, 1)
    ev.end()
    ev.end()  # idempotent
    assert flow.pending == 1
    batch.end_row(0)
    assert flow.pending == 0


async def test_of_events_round_trips_columns_and_holds() -> None:
    batch, flow = await _batch(3, keys=["x", "y", "z"])
    events = batch.events(take=True)
    rebuilt = Batch.of_events(events, ctx=batch.ctx, source="src", time=2.0)
    assert rebuilt.values == [0, 1, 2]
    assert rebuilt.keys == ["x", "y", "z"]
    assert list(rebuilt.positions or []) == [0, 1, 2]
    assert all(ev.hold is None for ev in events), "events kept holds after handing them over"
    rebuilt.end_all()
    assert flow.pending == 0


async def test_retain_makes_fan_out_end_twice() -> None:
    batch, flow = await _batch(4)
    batch.retain(1)
    batch.end_all()
    assert flow.pending == 4
    batch.end_all()
    assert flow.pending == 0


def test_event_replace_moves_hold() -> None:
    ev = Event(1, key="k")
    other = ev.replace(value=2)
    assert other == Event(2, key="k")
    assert str(Position("ws", 3, 10)) == "ws[3]@10"


@pytest.mark.parametrize("n", [1, 5])
async def test_take_does_not_end(n: int) -> None:
    batch, flow = await _batch(n)
    part = batch.take([0])
    assert part.values == [0]
    assert flow.pending == n


@given(
    start=st.integers(0, 2**40),
    masks=st.lists(st.lists(st.booleans(), min_size=40, max_size=40), min_size=1, max_size=3),
    indices=st.lists(st.integers(0, 39), max_size=10),
)
def test_kept_positions_read_as_the_list_of_kept_positions(
    start: int, masks: list[list[bool]], indices: list[int]
) -> None:
    # a select over range positions keeps row numbers and makes each position as it
    # is read: it must read exactly as the list it stands for, through any number of
    # selects, takes and slices
    positions: Sequence[int] = range(start, start + 40)
    expected: list[int] = list(positions)
    for mask in masks:
        mask = mask[: len(expected)]
        positions = _select_positions(positions, mask)
        expected = [p for p, keep in zip(expected, mask, strict=True) if keep]
        assert isinstance(positions, KeptPositions)
        assert positions == expected
        assert list(positions) == expected
        assert len(positions) == len(expected)
        assert [positions[i] for i in range(-len(expected), len(expected))] == expected * 2
        assert positions[1:-1] == expected[1:-1]
    valid = [i for i in indices if i < len(expected)]
    taken = _take_positions(positions, valid)
    assert taken == [expected[i] for i in valid]
    with pytest.raises(IndexError):
        positions[len(expected)]


async def test_a_filtered_batch_of_range_positions_keeps_its_positions() -> None:
    batch, flow = await _batch(6)
    kept = batch.select([True, False, True, True, False, True])
    assert isinstance(kept.positions, KeptPositions)
    assert list(kept.positions) == [0, 2, 3, 5]
    assert kept.position(1) == Position("src", None, 2)
    again = kept.take([3, 0])
    assert list(again.positions or []) == [5, 0]
    kept.end_all()
    assert flow.pending == 0
