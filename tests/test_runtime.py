"""Pipelines and apps: composition, lifecycle, failures that never pass silently."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from reactivex import operators as rxops

from rxagent import (
    App,
    ConfigurationError,
    Pipeline,
    PipelineError,
    PipelineState,
    StateStore,
)
from rxagent import operators as ops
from rxagent.events import Batch
from rxagent.sinks import ListSink, MemoryDeadLetters, Sink
from rxagent.sources import memory


def ticks(n: int) -> list[dict[str, Any]]:
    syms = ["A", "B", "C"]
    return [{"sym": syms[i % 3], "px": float(i), "seq": i} for i in range(n)]


async def test_memory_filter_map_state_end_to_end() -> None:
    store = StateStore("last")
    pipeline = (
        Pipeline("e2e", memory(ticks(300), credit=32, batch_size=8))
        .pipe(
            ops.filter(lambda t: t["seq"] % 2 == 0),
            ops.map(lambda t: {**t, "px2": t["px"] * 2}),
            ops.key_by("sym"),
        )
        .to(store.sink(value="px2"))
    )
    assert pipeline.state is PipelineState.CREATED
    status = await pipeline.run()
    assert status.state is PipelineState.STOPPED
    assert status.completed
    # last even seq per symbol: A=294, B=298, C=296
    assert store.snapshot.to_dict() == {"A": 588.0, "B": 596.0, "C": 592.0}
    assert status.flow["pending"] == 0
    assert status.flow["peak_in_flight"] <= 32
    assert status.stages["filter"]["dropped"] == 150


async def test_a_raising_user_map_goes_to_dead_letters_and_the_rest_flows() -> None:
    dead = MemoryDeadLetters()
    sink = ListSink()
    pipeline = (
        Pipeline("dl", memory(["1", "2", "x", "4"]), dead_letters=dead)
        .pipe(ops.map(int, name="parse"))
        .to(sink)
    )
    status = await pipeline.run()
    assert sink.values == [1, 2, 4]
    assert len(dead) == 1
    (letter,) = dead.letters
    assert (letter.stage, letter.error_type, letter.pipeline) == ("parse", "ValueError", "dl")
    assert "invalid literal" in letter.message
    assert status.stages["parse"]["dead_lettered"] == 1


class ExplodingSink(Sink):
    """A sink with a bug: raises from on_batch."""

    def on_batch(self, batch: Batch) -> None:
        raise RuntimeError("sink bug")


async def test_a_sink_bug_fails_the_pipeline_loudly() -> None:
    pipeline = Pipeline("bug", memory(range(10))).to(ExplodingSink("boom"))
    with pytest.raises(PipelineError, match=r"pipeline 'bug' failed in stage 'boom'.*sink bug"):
        await pipeline.run(timeout=5)
    status = pipeline.status()
    assert status.state is PipelineState.FAILED
    assert status.last_error == "RuntimeError: sink bug"


async def test_an_error_raised_on_a_scheduler_timer_does_not_stop_silently() -> None:
    """Under AsyncIOScheduler, an exception in on_next called from a timer never
    reaches on_error by itself: the pipeline must still fail visibly."""
    pipeline = (
        Pipeline("timer", memory(range(5)))
        .pipe(rxops.delay(0.01))  # emissions now come from scheduler callbacks
        .to(ExplodingSink("late"))
    )
    with pytest.raises(PipelineError, match="sink bug"):
        await pipeline.run(timeout=5)


async def test_a_raw_rx_operator_error_fails_the_pipeline() -> None:
    pipeline = (
        Pipeline("rx", memory(range(5)))
        .pipe(rxops.delay(0.01), rxops.map(lambda b: 1 / 0))
        .to(ListSink())
    )
    with pytest.raises(PipelineError, match="ZeroDivisionError"):
        await pipeline.run(timeout=5)


async def test_a_failing_source_fails_the_pipeline() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise OSError("feed went away")

    pipeline = Pipeline("src", memory(broken(), name="feed")).to(ListSink())
    with pytest.raises(PipelineError, match="feed went away"):
        await pipeline.run(timeout=5)
    assert pipeline.status().failed_stage == "feed"


async def test_drain_stops_an_endless_source_and_ends_in_flight_work() -> None:
    sink = ListSink()
    pipeline = Pipeline("endless", memory(itertools.count(), batch_size=64)).to(sink)
    await pipeline.start()
    await asyncio.sleep(0.05)
    assert pipeline.state is PipelineState.RUNNING
    status = await pipeline.drain(timeout=2)
    assert status.state is PipelineState.STOPPED
    assert not status.completed
    assert status.flow["pending"] == 0
    assert len(sink.values) == status.flow["emitted"] > 0


async def test_composition_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="needs a Source"):
        Pipeline("x", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="has no sink"):
        await Pipeline("x", memory([1])).start()
    with pytest.raises(ConfigurationError, match="is not a Sink"):
        Pipeline("x", memory([1])).to(print)  # type: ignore[arg-type]
    p = Pipeline("x", memory([1])).to(ListSink())
    await p.run()
    with pytest.raises(ConfigurationError, match=r"pipe\(\) only works before start"):
        p.pipe(ops.map(str))


async def test_fan_out_to_two_sinks_ends_each_event_once_per_sink() -> None:
    a, b = ListSink("a"), ListSink("b")
    status = await Pipeline("fan", memory(range(50), credit=8, batch_size=4)).to(a, b).run()
    assert a.values == b.values == list(range(50))
    assert status.flow["pending"] == 0


def slow_numbers() -> Iterator[int]:
    yield from range(1_000_000)


async def test_app_runs_several_pipelines_on_one_loop() -> None:
    s1, s2 = StateStore("one"), StateStore("two")
    app = App()
    app.pipeline("p1", memory(ticks(30))).pipe(ops.key_by("sym")).to(s1.sink(value="seq"))
    app.pipeline("p2", memory(ticks(60))).pipe(ops.key_by("sym")).to(s2.sink(value="seq"))
    statuses = await app.run(duration=10)
    assert all(s.state is PipelineState.STOPPED and s.completed for s in statuses.values())
    assert s1.snapshot.to_dict() == {"A": 27, "B": 28, "C": 29}
    assert s2.snapshot.to_dict() == {"A": 57, "B": 58, "C": 59}
    with pytest.raises(ConfigurationError, match="has a pipeline 'p1' already"):
        app.add(Pipeline("p1", memory([1])))


async def test_app_drains_on_sigterm() -> None:
    sink = ListSink()
    app = App([Pipeline("forever", memory(itertools.count())).to(sink)])
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
    statuses = await asyncio.wait_for(app.run(handle_signals=True, drain_timeout=2), 10)
    status = statuses["forever"]
    assert status.state is PipelineState.STOPPED
    assert not status.completed
    assert status.flow["pending"] == 0
    assert len(sink.values) > 0
