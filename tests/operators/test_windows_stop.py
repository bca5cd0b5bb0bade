"""A stop is not the end of the input: windows still open when a pipeline stops.

The rule (docs/operators.md, "Windows and stops"): at the end of a finite input,
open windows are emitted as they are (their final value, ``partial=False``). On a
stop (drain, SIGTERM, ``--duration``), with the default ``emit_partial="auto"``:

- a source that replays what was not committed (Kafka) gets the open windows'
  events back *uncommitted*: nothing is emitted, the watermark stays before them,
  and a restart recomputes the windows (tests/kafka/test_kafka_windows_stop.py);
- any other source (push, memory, WebSocket, replay files) gets them emitted
  marked ``partial=True``.

``emit_partial=True`` always emits them (marked), ``False`` never does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import pytest
from _helpers import until

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.exceptions import ConfigurationError
from rxagent.operators import Window
from rxagent.plain import plain
from rxagent.runtime import App
from rxagent.sinks import ListSink
from rxagent.sources import memory, push
from rxagent.sources.base import Emitter, Source
from rxagent.sources.store_changes import StateChangesSource

WINDOWS: dict[str, Callable[..., Any]] = {
    "count": lambda **kw: ops.count_window(3, key="k", agg=ops.count(), **kw),
    "tumbling": lambda **kw: ops.tumbling_window(60.0, key="k", agg=ops.count(), **kw),
    "sliding": lambda **kw: ops.sliding_window(60.0, 30.0, key="k", agg=ops.count(), **kw),
    "session": lambda **kw: ops.session_window(60.0, key="k", agg=ops.count(), **kw),
    "event time": lambda **kw: ops.tumbling_window(
        60.0, time="event", key="k", agg=ops.count(), **kw
    ),
}


def steps(kind: str, **options: Any) -> list[Any]:
    window = WINDOWS[kind](**options)
    return [ops.event_time("t"), window] if kind == "event time" else [window]


class Replayable(Source):
    """Emits ``items`` with positions 0, 1, ... and stays open; like a Kafka
    partition, what was not committed would be read again after a restart."""

    kind = "replayable"
    replays_uncommitted = True

    def __init__(self, items: list[Any]) -> None:
        super().__init__("replayable", batch_size=2)
        self.items = items

    async def run(self, out: Emitter) -> None:
        at = 0
        while at < len(self.items):
            took = await out.credit(self.batch_size)
            chunk = self.items[at : at + took]
            out.give_back(took - len(chunk))
            out.emit(chunk, positions=range(at, at + len(chunk)))
            at += len(chunk)
        await asyncio.Event().wait()  # a live feed: only a stop ends it


def ev(k: str, t: float) -> dict[str, Any]:
    return {"k": k, "t": t}


def taken(pipeline: Pipeline, stage: str | None = None) -> int:
    """Events the window stage (the last operator) has taken in so far."""
    name = stage or pipeline.stage_names[-2]
    return int(pipeline.status().stages.get(name, {}).get("in", 0))


@pytest.mark.parametrize("kind", list(WINDOWS))
async def test_a_stop_emits_the_open_windows_of_a_push_source_marked_partial(kind: str) -> None:
    source = push()
    out = ListSink()
    pipeline = Pipeline("p", source).pipe(*steps(kind)).to(out)
    await pipeline.start()
    for value in (ev("a", 1.0), ev("a", 2.0), ev("b", 3.0)):
        source.push(value)
    await until(lambda: taken(pipeline) == 3)
    status = await pipeline.drain()
    # (a sliding window's events are in two windows each: the set)
    assert {(w.key, w.value, w.count, w.partial) for w in out.values} == {
        ("a", 2, 2, True),
        ("b", 1, 1, True),
    }
    assert all(isinstance(w, Window) for w in out.values)
    assert status.stages[pipeline.stage_names[-2]]["partial"] == len(out.values)
    assert plain(out.values[0])["partial"] is True  # what state, JSON and file tests see


@pytest.mark.parametrize("kind", list(WINDOWS))
async def test_the_end_of_a_finite_input_flushes_the_open_windows_as_final(kind: str) -> None:
    out = ListSink()
    items = [ev("a", 1.0), ev("a", 2.0), ev("b", 3.0)]
    await Pipeline("p", memory(items)).pipe(*steps(kind)).to(out).run()
    assert {(w.key, w.value, w.partial) for w in out.values} == {
        ("a", 2, False),
        ("b", 1, False),
    }
    assert plain(out.values[0])["partial"] is False  # present on every window


@pytest.mark.parametrize("kind", list(WINDOWS))
async def test_a_stop_gives_a_replayable_source_s_open_windows_back_uncommitted(
    kind: str,
) -> None:
    # 3 a's close a count window at position 2; the rest stays open at the stop
    items = [ev("a", 1.0), ev("a", 2.0), ev("a", 3.0), ev("b", 4.0), ev("a", 5.0)]
    if kind != "count":
        items = items[3:]  # time windows: nothing closes before the stop
    out = ListSink()
    pipeline = Pipeline("p", Replayable(items)).pipe(*steps(kind)).to(out)
    await pipeline.start()
    stage = pipeline.stage_names[-2]
    await until(lambda: taken(pipeline) == len(items))
    status = await pipeline.drain()
    assert status.state == "stopped"
    assert all(not w.partial for w in out.values)  # nothing half-finished went out
    assert pipeline.flow is not None
    if kind == "count":
        assert [(w.key, w.value) for w in out.values] == [("a", 3)]
        # the closed window's batches are done; the batch holding b (3, 4) is not
        assert pipeline.flow.watermark() == 2
    else:
        assert out.values == []
        assert pipeline.flow.watermark() is None  # nothing committed: all read again
    released = 2 if kind == "count" else 2 * (2 if kind == "sliding" else 1)
    assert status.stages[stage]["released_at_stop"] == released
    assert status.flow["pending"] == 0  # the stop did not wait for the windows


async def test_emit_partial_true_and_false_at_a_stop() -> None:
    for option, want in ((True, [("a", 2, True)]), (False, [])):
        source = Replayable([ev("a", 1.0), ev("a", 2.0)])
        out = ListSink()
        window = ops.count_window(3, key="k", agg=ops.count(), emit_partial=option)
        pipeline = Pipeline("p", source).pipe(window).to(out)
        await pipeline.start()
        await until(lambda p=pipeline: taken(p) == 2)
        await pipeline.drain()
        assert [(w.key, w.value, w.partial) for w in out.values] == want
        assert pipeline.flow is not None
        # True ended the events (committed); False on a replayable source released them
        assert pipeline.flow.watermark() == (2 if option else None)


async def test_emit_partial_false_at_the_end_of_input_drops_the_open_windows() -> None:
    out = ListSink()
    window = ops.count_window(3, key="k", emit_partial=False)
    await Pipeline("p", memory([ev("a", 1.0)])).pipe(window).to(out).run()
    assert out.values == []


def test_emit_partial_takes_auto_true_or_false_only() -> None:
    with pytest.raises(ConfigurationError, match="emit_partial must be 'auto', true or false"):
        ops.count_window(3, emit_partial="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"tumbling_window\('w'\): emit_partial"):
        ops.tumbling_window(1.0, emit_partial=None, name="w")  # type: ignore[arg-type]


async def test_a_window_behind_a_buffer_gives_its_events_back_too() -> None:
    out = ListSink()
    source = Replayable([ev("a", 1.0), ev("a", 2.0), ev("b", 3.0)])
    pipeline = (
        Pipeline("p", source)
        .pipe(ops.buffer(8), ops.count_window(3, key="k", agg=ops.count()))
        .to(out)
    )
    await pipeline.start()
    await until(lambda: taken(pipeline) == 3)
    status = await pipeline.drain()
    assert out.values == []
    assert pipeline.flow is not None
    assert pipeline.flow.watermark() is None
    assert status.flow["pending"] == 0


async def test_a_partial_window_reaches_the_pipeline_reading_its_store_before_it_stops() -> None:
    windows = StateStore("windows")
    seen = StateStore("seen")
    feed = push()
    writer = (
        Pipeline("writer", feed)
        .pipe(ops.tumbling_window(60.0, key="k", agg=ops.count()))
        .to(windows.sink())
    )
    reader = (
        Pipeline("reader", StateChangesSource(windows))
        .pipe(ops.map(lambda w: {"count": w.count, "partial": w.partial}))
        .to(seen.sink())
    )
    app = App([reader, writer])  # the reader first: drain must still stop the writer first
    assert [[p.name for p in wave] for wave in app.drain_order()] == [["writer"], ["reader"]]
    await app.start()
    feed.push(ev("a", 1.0))
    feed.push(ev("a", 2.0))
    await until(lambda: taken(writer) == 2)
    await app.drain()
    assert windows.snapshot.to_dict()["a"].partial is True
    assert seen.snapshot.to_dict() == {"a": {"count": 2, "partial": True}}


@pytest.mark.parametrize("emit_partial", ["auto", True])
async def test_windows_of_many_keys_at_a_stop_give_back_or_emit_what_they_hold(
    emit_partial: bool | Literal["auto"],
) -> None:
    # batches of distinct keys take the count window's per-row path (issue 16): a and b
    # close at positions 8 and 9; c, d, e and f are still open (6 events) at the stop
    keys = ["a", "b", "c", "d", "a", "b", "c", "d", "a", "b", "e", "f"]
    items = [ev(k, float(i)) for i, k in enumerate(keys)]
    out = ListSink()
    window = ops.count_window(3, key="k", agg=ops.count(), emit_partial=emit_partial)
    pipeline = Pipeline("p", Replayable(items)).pipe(ops.event_time("t"), window).to(out)
    await pipeline.start()
    stage = pipeline.stage_names[-2]
    await until(lambda: taken(pipeline) == len(items))
    status = await pipeline.drain()
    closed = [(w.key, w.value, w.start, w.end) for w in out.values if not w.partial]
    assert closed == [("a", 3, 0.0, 8.0), ("b", 3, 1.0, 9.0)]
    assert pipeline.flow is not None
    assert status.flow["pending"] == 0
    if emit_partial == "auto":
        # given back uncommitted: the watermark stays at c's first event (2)
        assert [w for w in out.values if w.partial] == []
        assert status.stages[stage]["released_at_stop"] == 6
        assert pipeline.flow.watermark() == 2
    else:
        partial = {(w.key, w.value, w.start, w.end) for w in out.values if w.partial}
        assert partial == {
            ("c", 2, 2.0, 6.0),
            ("d", 2, 3.0, 7.0),
            ("e", 1, 10.0, 10.0),
            ("f", 1, 11.0, 11.0),
        }
        assert pipeline.flow.watermark() == 12  # emitted and ended: all committed
