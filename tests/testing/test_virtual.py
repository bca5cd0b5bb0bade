"""Whole pipelines built in Python, run in virtual time by the testing kit's source."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from reactivex import operators as rxops
from reactivex.testing import TestScheduler

from rxagent import ConfigurationError, Pipeline, PipelineError, StateStore
from rxagent import operators as ops
from rxagent.events import Batch
from rxagent.sinks import Sink
from rxagent.testing.marbles import MarbleError
from rxagent.testing.strategies import timed_events
from rxagent.testing.virtual import (
    MarbleSink,
    TimedEvent,
    VirtualSource,
    marble_source,
    virtual_source,
)


class BatchSizes(Sink):
    """Notes the size of each batch it gets."""

    kind = "sizes"

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def on_batch(self, batch: Batch) -> None:
        self.sizes.append(len(batch))
        batch.end_all()


async def test_a_pipeline_runs_a_marble_diagram_in_virtual_time() -> None:
    sink = MarbleSink()
    pipeline = (
        Pipeline("p", marble_source("-a-b 5s c-x-|"))
        .pipe(ops.filter(lambda v: v != "x"), ops.map(str.upper))
        .to(sink)
    )
    scheduler = TestScheduler()
    await pipeline.start(scheduler=scheduler)
    status = await pipeline.wait()
    assert status.completed
    sink.assert_marbles("-A-B 5s C---|")
    assert scheduler.clock == pytest.approx(5.008)
    assert sink.diagram() == "-A-B 5s C---|"


async def test_window_timers_fire_at_their_virtual_time_inside_a_pipeline() -> None:
    sink = MarbleSink()
    pipeline = (
        Pipeline("p", marble_source("a 1s b 3s c 2s d 10s e|"))
        .pipe(ops.tumbling_window(5.0, agg=ops.count()), ops.map(lambda w: w.value))
        .to(sink)
    )
    await pipeline.start(scheduler=TestScheduler())
    status = await pipeline.wait()
    assert status.completed
    # [0, 5) closes on its timer at 5 s, [5, 10) at 10 s, and [15, 20) on completion
    sink.assert_marbles("5s x 4999ms y 6004ms (z|)", {"x": 3, "y": 1, "z": 1})


async def test_a_python_built_pipeline_runs_an_hour_into_a_state_store() -> None:
    # a tick per key every 10 s for an hour, and a burst of three at the half hour
    ticks = [
        TimedEvent(float(t), {"sym": sym, "px": float(t)}, time=1e9 + t)
        for t in range(0, 3600, 10)
        for sym in ("AAPL", "MSFT")
    ]
    ticks += [TimedEvent(1800.0, {"sym": "NVDA", "px": p}, time=1e9 + 1800) for p in (1, 2, 3)]
    store = StateStore("prices")
    windows = MarbleSink(frame=1.0)
    pipeline = (
        Pipeline("prices", virtual_source(ticks, until=3600.0, credit=64, batch_size=16))
        .pipe(
            ops.filter(lambda v: v["px"] > 0),
            ops.key_by("sym"),
            ops.count_window(60, key="sym", agg=ops.last("px")),
        )
        .to(store.sink(value="value"), windows)
    )
    scheduler = TestScheduler()
    await pipeline.start(scheduler=scheduler)
    status = await pipeline.wait()
    assert status.completed
    assert status.flow["pending"] == 0
    assert status.flow["peak_in_flight"] <= 64
    assert scheduler.clock == pytest.approx(3600.0)
    assert store["AAPL"] == 3590.0
    assert store["NVDA"] == 3
    # full windows of a key close every 600 s (60 ticks, one each 10 s), the rest at the end
    closed = [n.frame for n in windows.notifications if n.kind == "N" and n.value.count == 60]
    assert closed[:2] == [600, 600]  # the tick at 0 s has px 0 and is filtered out
    assert windows.notifications[-1].frame == 3600


async def test_credit_held_by_a_timer_lets_virtual_time_pass() -> None:
    # delay holds each event's credit for 10 ms; with credit 2 the source must wait,
    # and in virtual time waiting means letting the clock run to the next timer
    sink = MarbleSink()
    source = marble_source("abcdef|", credit=2, batch_size=1)
    pipeline = Pipeline("p", source).pipe(rxops.delay(0.010)).to(sink)
    scheduler = TestScheduler()
    await pipeline.start(scheduler=scheduler)
    await source.finished()
    # the completion delay schedules after the end waits for the test to move the clock
    scheduler.advance_by(0.1)
    status = await asyncio.wait_for(pipeline.wait(), 5)
    assert status.completed
    assert status.flow["peak_in_flight"] == 2
    sink.assert_marbles("10ms ab 8ms cd 8ms e(f|)")


async def test_an_error_in_the_diagram_fails_the_pipeline_at_its_frame() -> None:
    sink = MarbleSink()
    pipeline = Pipeline("p", marble_source("-a--#", error="feed lost")).to(sink)
    scheduler = TestScheduler()
    await pipeline.start(scheduler=scheduler)
    status = await pipeline.wait()
    assert status.state == "failed"
    assert status.last_error == "Exception: feed lost"
    assert scheduler.clock == pytest.approx(0.004)
    assert sink.values == ["a"]


async def test_an_open_diagram_runs_until_the_pipeline_is_drained() -> None:
    sink = MarbleSink()
    source = marble_source("-a-b-")
    pipeline = Pipeline("p", source).to(sink)
    await pipeline.start(scheduler=TestScheduler())
    await source.finished()
    assert pipeline.state == "running"
    status = await pipeline.drain(timeout=5)
    assert status.state == "stopped"
    assert sink.values == ["a", "b"]


async def test_a_hot_diagram_starts_at_its_subscription_point_with_keys_and_times() -> None:
    sink = MarbleSink()
    source = marble_source("ab^-c-(dE)|", keys=str.lower, times=lambda v: 100.0)
    pipeline = Pipeline("p", source).to(sink)
    await pipeline.start(scheduler=TestScheduler())
    await pipeline.wait()
    sink.assert_marbles("--c-(dE)|")
    assert [(e.key, e.time) for e in sink.events] == [("c", 100.0), ("d", 100.0), ("e", 100.0)]


async def test_letters_carry_their_own_keys_and_times_over_the_value_functions() -> None:
    sink = MarbleSink()
    source = marble_source(
        "a^b-a-c|",
        {"a": 1, "b": 2, "c": 1},
        keys=str,
        letter_keys={"a": "A", "b": None},
        letter_times={"a": 10.0, "c": 30.0},
        times=lambda v: 99.0,
    )
    pipeline = Pipeline("p", source).to(sink)
    await pipeline.start(scheduler=TestScheduler())
    await pipeline.wait()
    sink.assert_marbles("-b-a-c|", {"a": 1, "b": 2, "c": 1})
    # c and a have the same value: the letter decides; b's explicit None key wins too
    assert [(e.key, e.time) for e in sink.events] == [(None, 99.0), ("A", 10.0), ("1", 30.0)]


def test_a_letter_the_diagram_never_draws_is_refused() -> None:
    with pytest.raises(MarbleError, match=r"letter_keys names 'x', not a value of '-a\|'"):
        marble_source("-a|", letter_keys={"x": 1})
    with pytest.raises(MarbleError, match=r"letter_times names '\|', .* \(its letters: a\)"):
        marble_source("-a|", letter_times={"|": 1.0})


async def test_pairs_at_one_instant_leave_in_one_batch() -> None:
    sizes = BatchSizes()
    pipeline = Pipeline("p", virtual_source([(0.5, "b"), (0.0, "a"), (0.5, "c")])).to(sizes)
    await pipeline.start(scheduler=TestScheduler())
    await pipeline.wait()
    assert sizes.sizes == [1, 2]


async def test_a_wall_clock_scheduler_is_refused_with_a_clear_error() -> None:
    pipeline = Pipeline("p", marble_source("a|")).to(MarbleSink())
    with pytest.raises(PipelineError, match="needs a virtual-time scheduler"):
        await pipeline.run(timeout=5)


def test_source_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=">= 0"):
        VirtualSource([(-1.0, "a")])
    with pytest.raises(ConfigurationError, match="before the last arrival"):
        VirtualSource([(2.0, "a")], until=1.0)
    with pytest.raises(ConfigurationError, match="not both"):
        VirtualSource([], error=ValueError("x"), forever=True)


@given(stream=timed_events(keys=3, max_size=30, burst_rate=0.3, silence_rate=0.1, max_silence=5))
def test_every_event_arrives_at_its_time_in_order(stream: list[TimedEvent]) -> None:
    """A pass-through pipeline delivers each event at its arrival frame, keys intact."""
    sink = MarbleSink()

    async def main() -> None:
        pipeline = Pipeline("p", virtual_source(stream, credit=4, batch_size=2)).to(sink)
        await pipeline.start(scheduler=TestScheduler())
        await pipeline.wait()

    asyncio.run(main())
    got = [(n.frame, n.value, n.key) for n in sink.notifications if n.kind == "N"]
    assert got == [(round(ev.arrival * 1000), ev.value, ev.key) for ev in stream]


@given(stream=timed_events(keys=2, max_size=30, duplicate_rate=0.2, max_disorder=1.0))
def test_count_windows_over_generated_streams_fold_every_event(stream: list[TimedEvent]) -> None:
    """A keyed count window in a whole pipeline: every event lands in one window."""
    sink = MarbleSink()
    state: dict[str, object] = {}

    async def main() -> None:
        pipeline = (
            Pipeline("p", virtual_source(stream, credit=3, batch_size=2))
            .pipe(ops.count_window(3))
            .to(sink)
        )
        await pipeline.start(scheduler=TestScheduler())
        state["status"] = await pipeline.wait()

    asyncio.run(main())
    windows = sink.values
    assert sum(w.count for w in windows) == len(stream)
    for key in {ev.key for ev in stream}:
        counts = [w.count for w in windows if w.key == key]
        assert all(c == 3 for c in counts[:-1])
    assert state["status"].flow["pending"] == 0  # type: ignore[attr-defined]
