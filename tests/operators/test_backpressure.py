"""buffer: in flight bounded, waiting rows under a policy, the flow rule kept throughout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex import Observable
from reactivex.testing import TestScheduler

from rxagent import ConfigurationError, FlowError, Pipeline
from rxagent.context import PipelineContext, StageMetrics
from rxagent.events import Batch
from rxagent.flow import Flow
from rxagent.operators.backpressure import buffer
from rxagent.operators.windows import count_window
from rxagent.sinks import ListSink, Sink
from rxagent.sources import memory
from rxagent.testing import run
from rxagent.testing.marbles import (
    Notification,
    assert_marbles,
    marble_batches,
    parse_marbles,
    render_marbles,
)

F = 0.001
Op = Callable[[Observable[Batch]], Observable[Batch]]


@dataclass
class SlowRun:
    """What a buffer sent to a downstream that holds each row ``hold`` frames."""

    diagram: str
    sent: list[tuple[int, Any]]
    flow: Flow
    metrics: StageMetrics
    peak_in_flight: int
    completed_at: int | None
    errors: list[Exception] = field(default_factory=list)


def slow(
    op: Op,
    source: str | list[Notification],
    hold: int | Callable[[Any], int],
    *,
    keys: Callable[[Any], Hashable] | None = None,
    unsubscribe: int | None = None,
) -> SlowRun:
    """Run ``op`` on marbles; downstream ends each row ``hold`` frames after receiving it."""
    scheduler = TestScheduler()
    ctx = PipelineContext("t", scheduler=scheduler)
    flow = Flow("t", 1 << 20)
    notes = parse_marbles(source) if isinstance(source, str) else source
    observable, _ = marble_batches(scheduler, notes, ctx=ctx, flow=flow, frame=F, keys=keys)
    out: list[Notification] = []
    sent: list[tuple[int, Any]] = []
    errors: list[Exception] = []
    in_flight = [0, 0]  # now, peak

    def frame() -> int:
        return round(scheduler.clock / F)

    def on_next(batch: Batch) -> None:
        for i, value in enumerate(batch.values):
            out.append(Notification(frame(), "N", value))
            sent.append((frame(), value))
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
            event = batch.event(i, take=True)
            delay = hold(value) if callable(hold) else hold

            def end(*_: Any, event: Any = event) -> None:
                in_flight[0] -= 1
                event.end()

            scheduler.schedule_relative(delay * F, end)

    def on_error(error: Exception) -> None:
        out.append(Notification(frame(), "E", error))
        errors.append(error)

    subscription = op(observable).subscribe(
        on_next, on_error, lambda: out.append(Notification(frame(), "C")), scheduler=scheduler
    )
    if unsubscribe is not None:
        scheduler.schedule_absolute(unsubscribe * F, lambda *_: subscription.dispose())
    scheduler.advance_to(10.0)
    completed = [n.frame for n in out if n.kind == "C"]
    return SlowRun(
        render_marbles(out)[0],
        sent,
        flow,
        ctx.metrics.get("buffer") or ctx.stage("buffer"),
        in_flight[1],
        completed[0] if completed else None,
        errors,
    )


# -- marbles: a downstream busy 3 frames a row, one row at a time --------------------------------

BURST = "-(abcde)------|"


def test_block_delivers_everything_in_order_one_at_a_time() -> None:
    result = slow(buffer(2, in_flight=1), BURST, 3)
    assert result.diagram == "-a--b--c--d--e|"
    assert result.metrics.dropped == 0
    assert result.metrics.extra["peak_waiting"] == 4  # block waits beyond capacity
    assert result.peak_in_flight == 1
    assert result.flow.pending == 0


def test_drop_newest_drops_arrivals_that_find_the_waiting_room_full() -> None:
    result = slow(buffer(2, "drop_newest", in_flight=1), BURST, 3)
    assert result.diagram == "-a--b--c------|"
    assert result.metrics.extra["dropped_newest"] == result.metrics.dropped == 2
    assert result.flow.pending == 0


def test_drop_oldest_pushes_the_oldest_waiting_out() -> None:
    result = slow(buffer(2, "drop_oldest", in_flight=1), BURST, 3)
    assert result.diagram == "-a--d--e------|"
    assert result.metrics.extra["dropped_oldest"] == result.metrics.dropped == 2
    assert result.flow.pending == 0


def test_latest_keeps_the_newest_waiting_row() -> None:
    result = slow(buffer(2, "latest", in_flight=1), BURST, 3)
    assert result.diagram == "-a--e---------|"
    assert result.metrics.extra["dropped_replaced"] == 3
    assert result.flow.pending == 0


def test_latest_per_key_keeps_each_keys_place_in_line() -> None:
    result = slow(buffer(2, "latest", in_flight=1), "-(abAB)-----|", 3, keys=str.isupper)
    assert result.diagram == "-a--b--B----|"
    assert result.metrics.extra["dropped_replaced"] == 1


def test_latest_beyond_capacity_drops_the_oldest_waiting_key() -> None:
    result = slow(buffer(1, "latest", in_flight=1, key=str.isupper), "-(abAB)---|", 3)
    assert result.diagram == "-a--B-----|"
    assert result.metrics.extra["dropped_replaced"] == 1  # A, by B
    assert result.metrics.extra["dropped_oldest"] == 1  # b, for B's key
    assert result.flow.pending == 0


def test_in_flight_defaults_to_capacity() -> None:
    result = slow(buffer(2), BURST, 3)
    assert result.sent == [(1, "a"), (1, "b"), (4, "c"), (4, "d"), (7, "e")]
    assert result.peak_in_flight == 2


def test_completion_waits_for_the_waiting_rows() -> None:
    result = slow(buffer(1), "-(abc)|", 5)
    assert result.diagram == "-a----b----(c|)"


def test_a_downstream_that_ends_at_once_is_never_busy() -> None:
    # rows in chunks of in_flight, all in the same frame; no drop even with a lossy policy
    assert_marbles(buffer(2), "-a-b-(cdefg)-|", "-a-b-(cdefg)-|")
    run = assert_marbles(buffer(1, "drop_newest"), "-(abcde)-|", "-(abcde)-|")
    assert run.ctx.metrics["buffer"].dropped == 0
    assert run.ctx.metrics["buffer"].extra["peak_in_flight"] == 1


def test_an_upstream_error_passes_and_waiting_rows_stay_unended() -> None:
    result = slow(buffer(1), "-(abc)#", 10)
    assert result.diagram == "-a----#"
    assert result.flow.pending == 2  # b and c: never processed, never ended


def test_disposal_forgets_the_waiting_rows() -> None:
    result = slow(buffer(1), "-(abc)-----|", 2, unsubscribe=4)
    assert result.diagram == "-a-b"
    assert result.flow.pending == 1  # c
    assert_marbles(buffer(1), "-a-b-|", "-a-", unsubscribe="^--!")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: buffer(0), "buffer: capacity must be an int >= 1, got 0"),
        (lambda: buffer(2, in_flight=0), "buffer: in_flight must be an int >= 1, got 0"),
        (lambda: buffer(2.5), "buffer: capacity must be an int >= 1"),
        (lambda: buffer(2, "fifo"), "buffer: policy must be one of 'block', 'latest'"),
        (lambda: buffer(2, "block", key="k"), "buffer: key only applies to policy 'latest'"),
        (lambda: buffer(2, "latest", key=1.5), "buffer: key must be a field name"),
    ],
)
def test_bad_arguments_name_the_operator_and_the_argument(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


# -- the lease: credit per row at once, completion with the last row ---------------------------


def test_credit_returns_row_by_row_and_completion_with_the_whole_lease() -> None:
    scheduler = TestScheduler()
    ctx = PipelineContext("t", scheduler=scheduler)
    flow = Flow("t", 10)
    notes = [Notification(0, "N", v) for v in "abc"]
    source, _ = marble_batches(scheduler, notes, ctx=ctx, flow=flow, frame=F)
    got: list[Batch] = []
    buffer(3)(source).subscribe(got.append, scheduler=scheduler)
    scheduler.advance_to(F)
    (batch,) = got
    events = batch.events(take=True)
    events[0].end()
    assert flow.in_flight == 2  # a's credit is back
    assert flow.watermark() is None  # but the batch is not complete
    events[1].end()
    events[2].end()
    assert (flow.in_flight, flow.pending, flow.watermark()) == (0, 0, 3)
    with pytest.raises(FlowError, match="buffer 'buffer' passed on were ended more often"):
        batch.ticket.end(1)  # type: ignore[union-attr]


async def test_a_window_larger_than_in_flight_after_the_buffer_does_not_stall() -> None:
    # the window folds what it takes in: the lease gives the slot back at once
    result = await run(range(200), buffer(2), count_window(50), credit=8, batch_size=4)
    assert [w.count for w in result.values] == [50, 50, 50, 50]
    assert result.status.flow["pending"] == 0


async def test_fan_out_aggregates_and_buffers_in_a_row() -> None:
    second = ListSink("second")
    result = await run(
        range(30), count_window(3), buffer(1), buffer(2, "drop_newest"), sinks=[second]
    )
    assert [w.value for w in result.values] == [[i, i + 1, i + 2] for i in range(0, 30, 3)]
    assert len(second.events) == 10
    assert result.status.flow["pending"] == 0


# -- in a pipeline: block pauses the source, lossy policies do not ---------------------------------


class LateSink(Sink):
    """Ends each row on a later turn of the event loop, one row per turn."""

    kind = "late"

    def __init__(self) -> None:
        super().__init__()
        self.values: list[Any] = []
        self.queue: list[Any] = []

    def on_batch(self, batch: Batch) -> None:
        self.values.extend(batch.values)
        if not self.queue:
            asyncio.get_running_loop().call_soon(self._end_one)
        self.queue.extend(batch.events(take=True))

    def _end_one(self) -> None:
        self.queue.pop(0).end()
        if self.queue:
            asyncio.get_running_loop().call_soon(self._end_one)


async def _pipeline(op: Op, n: int = 400) -> tuple[LateSink, dict[str, Any], dict[str, Any]]:
    sink = LateSink()
    pipeline = Pipeline("p", memory(range(n), credit=32, batch_size=8)).pipe(op).to(sink)
    status = await pipeline.run(timeout=30)
    return sink, status.flow, status.stages["buffer"]


async def test_block_slows_the_source_and_loses_nothing() -> None:
    sink, flow, stage = await _pipeline(buffer(4, in_flight=2))
    assert sink.values == list(range(400))
    # the buffer held the source's whole credit: the source was paced by the sink
    assert flow["peak_in_flight"] == 32
    assert stage["peak_waiting"] == 32 - 2
    assert flow["pending"] == 0
    assert stage["dropped"] == 0
    assert stage["peak_in_flight"] <= 2


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "latest"])
async def test_lossy_policies_never_slow_the_source_and_count_every_drop(policy: Any) -> None:
    sink, flow, stage = await _pipeline(buffer(4, policy, in_flight=2))
    # the buffer holds the credit of at most in_flight rows (plus the batch coming in):
    # the source never runs out of credit
    assert flow["peak_in_flight"] <= 2 + 8
    assert flow["waits"] == 0
    assert flow["pending"] == 0
    assert len(sink.values) + stage["dropped"] == 400
    assert stage["dropped"] == sum(v for k, v in stage.items() if k.startswith("dropped_"))
    assert stage["peak_waiting"] <= 4
    assert sink.values == sorted(sink.values)


# -- properties ----------------------------------------------------------------------------------


@given(
    frames=st.lists(st.tuples(st.integers(0, 20), st.sampled_from("abAB")), max_size=30),
    policy=st.sampled_from(["block", "latest", "drop_oldest", "drop_newest"]),
    capacity=st.integers(1, 4),
    in_flight=st.integers(1, 3),
    hold=st.integers(0, 4),
)
def test_buffer_invariants(
    frames: list[tuple[int, str]], policy: Any, capacity: int, in_flight: int, hold: int
) -> None:
    events = [(t, (i, k)) for i, (t, k) in enumerate(sorted(frames, key=lambda e: e[0]))]
    notes = [Notification(t, "N", v) for t, v in events]
    notes.append(Notification(max((t for t, _ in events), default=0) + 1, "C"))
    result = slow(
        buffer(capacity, policy, in_flight=in_flight),
        notes,
        lambda v: hold + v[0] % 2,  # rows take turns being slower
        keys=lambda v: v[1].isupper(),
    )
    sent = [v for _, v in result.sent]
    metrics = result.metrics
    # the flow rule: every row delivered was ended by downstream, every other one dropped
    assert result.flow.pending == 0
    assert len(sent) + metrics.dropped == len(events) == metrics.events_in
    assert metrics.dropped == sum(v for k, v in metrics.extra.items() if k.startswith("dropped_"))
    assert result.peak_in_flight <= in_flight
    assert result.completed_at is not None
    assert all(f <= result.completed_at for f, _ in result.sent)
    if policy == "block":
        assert sent == [v for _, v in events]
    else:
        assert metrics.extra.get("peak_waiting", 0) <= capacity
        for upper in (False, True):  # in order per key; across keys too for FIFO policies
            ids = [i for i, k in sent if policy != "latest" or k.isupper() is upper]
            assert ids == sorted(ids)
