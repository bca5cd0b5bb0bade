"""Time windows: tumbling, sliding and session windows by processing or event time.

Marble tests use 1 ms frames: ``tumbling_window(0.004)`` is four frames wide.
Event-time tests read each value's time from its ``t`` field (seconds).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex import Observable
from reactivex.subject import Subject
from reactivex.testing import TestScheduler

from rxagent import ConfigurationError, StageError
from rxagent import operators as ops
from rxagent.context import PipelineContext
from rxagent.events import Batch, Event
from rxagent.flow import Flow
from rxagent.operators import Window
from rxagent.operators.windows import (
    WindowOperator,
    session_window,
    sliding_window,
    tumbling_window,
)
from rxagent.sinks.deadletters import MemoryDeadLetters
from rxagent.testing import run
from rxagent.testing.marbles import assert_marbles, run_marbles

Op = Callable[[Observable[Batch]], Observable[Batch]]


def joined(window_op: Op) -> Op:
    """The window, then each window's values joined into one string (``"ab"``)."""
    return lambda source: ops.map(lambda w: "".join(w.value))(window_op(source))


def timed(chars: str, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Values whose event time is their position in ``chars`` (a=0, b=1, ...)."""
    values = {c: {"c": c, "t": float(i)} for i, c in enumerate(chars)}
    for c, fields in extra.items():
        values[c] = {**values[c], **fields}
    return values


def event_joined(window_op: Op) -> Op:
    return lambda source: ops.map(lambda w: "".join(v["c"] for v in w.value))(window_op(source))


def by_time(v: dict[str, Any]) -> float:
    return float(v["t"])


# -- processing time -----------------------------------------------------------------


def test_tumbling_processing_time_closes_on_timers() -> None:
    assert_marbles(
        joined(tumbling_window(0.004)),
        "-a-b--c---d-|",
        "----x---y---(z|)",
        expected_values={"x": "ab", "y": "c", "z": "d"},
    )


def test_tumbling_windows_carry_their_bounds_and_last_arrival_time() -> None:
    result = run_marbles(tumbling_window(0.004), "-a-b--c--|")
    windows: list[Window] = result.values
    assert [(w.value, w.count) for w in windows] == [(["a", "b"], 2), (["c"], 1)]
    assert [w.start for w in windows] == pytest.approx([0.0, 0.004])
    assert [w.end for w in windows] == pytest.approx([0.004, 0.008])


def test_a_quiet_processing_time_window_still_closes_at_its_end() -> None:
    # nothing arrives after b, and the source never completes
    assert_marbles(
        joined(tumbling_window(0.004)),
        "-a-b-------",
        "----x------",
        expected_values={"x": "ab"},
    )


def test_tumbling_per_key_and_empty_windows_emit_nothing() -> None:
    values = {"a": ("x", 1), "b": ("y", 2), "c": ("x", 3), "d": ("x", 4)}
    assert_marbles(
        lambda s: ops.map(lambda w: (w.key, w.value))(
            tumbling_window(0.004, key=0, agg=ops.sum_(1))(s)
        ),
        "-ab-------cd---|",
        "----(pq)----r--|",
        values,
        expected_values={"p": ("x", 1), "q": ("y", 2), "r": ("x", 7)},
    )


def test_tumbling_offset_shifts_the_grid() -> None:
    assert_marbles(
        joined(tumbling_window(0.004, offset=0.002)),
        "-a-bc---|",
        "--x---y-|",
        expected_values={"x": "a", "y": "bc"},
    )


def test_completion_emits_partial_windows_or_drops_them() -> None:
    assert_marbles(joined(tumbling_window(0.01)), "-ab-|", "----(x|)", expected_values={"x": "ab"})
    result = assert_marbles(tumbling_window(0.01, emit_partial=False), "-ab-|", "----|")
    assert result.ctx.stage("tumbling_window").dropped == 2


def test_an_upstream_error_passes_and_open_windows_stay_unended() -> None:
    result = assert_marbles(
        tumbling_window(0.01), "-ab-#", "----#", error=RuntimeError("boom"), check_flow=False
    )
    assert result.flow.pending == 2  # never processed: the commit watermark stays before them


def test_disposal_cancels_the_timers() -> None:
    result = assert_marbles(
        joined(tumbling_window(0.004)),
        "-a---b--c|",
        "----x-",
        {},
        unsubscribe="^-----!",
        expected_values={"x": "a"},
    )
    assert result.subscriptions == [(0, 6)]
    assert result.flow.pending == 1  # b, folded into the window dropped by disposal


def test_sliding_processing_time() -> None:
    assert_marbles(
        joined(sliding_window(0.004, 0.002)),
        "-a--b---c----|",
        "--v-w-x-y-z-u|",
        expected_values={"v": "a", "w": "a", "x": "b", "y": "b", "z": "c", "u": "c"},
    )


def test_sliding_windows_overlap() -> None:
    assert_marbles(
        joined(sliding_window(0.004, 0.002)),
        "ab-c-----|",
        "--x-y-z--|",
        expected_values={"x": "ab", "y": "abc", "z": "c"},
    )


def test_session_processing_time() -> None:
    assert_marbles(
        joined(session_window(0.003)),
        "-a-b-----c-|",
        "------x----(y|)",
        expected_values={"x": "ab", "y": "c"},
    )


def test_session_windows_report_first_and_last_arrival() -> None:
    result = run_marbles(session_window(0.003), "-a-b-c-------|")
    (window,) = result.values
    assert (window.value, window.start, window.end) == (["a", "b", "c"], 0.001, 0.005)


def test_sessions_per_key() -> None:
    assert_marbles(
        joined(session_window(0.004, key=str.isupper)),
        "Ab-Cd-----E-|",
        "-------xy---(z|)",
        expected_values={"x": "AC", "y": "bd", "z": "E"},
    )


# -- event time ---------------------------------------------------------------------------


def test_tumbling_event_time_closes_when_the_watermark_passes() -> None:
    assert_marbles(
        event_joined(tumbling_window(2, time="event")),
        "-a-b-c-d-e--|",
        "-----x---y--(z|)",
        timed("abcde"),
        expected_values={"x": "ab", "y": "cd", "z": "e"},
        times=by_time,
    )


def test_late_events_are_dropped_and_counted_by_default() -> None:
    result = assert_marbles(
        event_joined(tumbling_window(2, time="event")),
        "-a-d-b-c-e--|",
        "---x-----y--(z|)",
        timed("abcde"),
        expected_values={"x": "a", "y": "dc", "z": "e"},
        times=by_time,
    )
    metrics = result.ctx.stage("tumbling_window")
    assert (metrics.dropped, metrics.extra["late"]) == (1, 1)


def test_allowed_lateness_keeps_windows_open_longer() -> None:
    assert_marbles(
        event_joined(tumbling_window(2, time="event", allowed_lateness=1.5)),
        "-a-d-b-c-e--|",
        "---------x--(yz|)",
        timed("abcde"),
        expected_values={"x": "ab", "y": "dc", "z": "e"},
        times=by_time,
    )


def test_late_events_to_dead_letters() -> None:
    result = assert_marbles(
        event_joined(tumbling_window(2, time="event", late="dead_letter", name="w")),
        "-a-d-b-|",
        "---x---(y|)",
        timed("abcd"),
        expected_values={"x": "a", "y": "d"},
        times=by_time,
    )
    (letter,) = result.dead_letters
    assert letter.stage == "w"
    assert letter.event.value["c"] == "b"
    assert "late event" in letter.message
    assert "2" in letter.message  # the watermark its window closed at


def test_late_events_to_the_late_stream_are_ended_after_delivery() -> None:
    window = tumbling_window(2, time="event", late="stream")
    seen: list[Event] = []
    window.late.subscribe(seen.append)
    result = assert_marbles(
        event_joined(window),
        "-a-d-b-|",
        "---x---(y|)",
        timed("abcd"),
        expected_values={"x": "a", "y": "d"},
        times=by_time,
    )
    assert [ev.value["c"] for ev in seen] == ["b"]
    assert seen[0].time == 1.0
    assert result.flow.pending == 0


def test_a_late_stream_subscriber_can_take_the_event_over() -> None:
    window = tumbling_window(2, time="event", late="stream")
    kept: list[Event] = []
    window.late.subscribe(lambda ev: kept.append(ev.replace()))
    result = run_marbles(window, "-a-d-b-|", timed("abcd"), times=by_time)
    assert result.flow.pending == 1  # b waits for whoever took it
    kept[0].end()
    assert result.flow.pending == 0


def test_named_window_operators_keep_their_late_stream() -> None:
    window = tumbling_window(1, time="event", late="stream")
    renamed = window.named("prices")
    assert isinstance(renamed, WindowOperator)
    assert renamed.late is window.late
    assert renamed.name == "prices"


def test_idle_timeout_emits_the_last_window_of_a_quiet_feed() -> None:
    window = tumbling_window(2, time="event", idle_timeout=0.005)
    result = assert_marbles(
        event_joined(window),
        "-a-b-c------------d-",
        "-----x----y---------",
        timed("abcd", d={"t": 3.0}),
        expected_values={"x": "ab", "y": "c"},
        times=by_time,
    )
    metrics = result.ctx.stage("tumbling_window")
    assert metrics.extra["idle_closes"] == 1
    assert metrics.extra["late"] == 1  # d came for the window the idle close emitted


def test_idle_timeout_restarts_with_every_batch() -> None:
    assert_marbles(
        event_joined(session_window(10, time="event", idle_timeout=0.004)),
        "-a-b-c-d-----e|",
        "-----------x--(y|)",
        timed("abcde", e={"t": 20.0}),  # after the watermark the idle close set (13)
        expected_values={"x": "abcd", "y": "e"},
        times=by_time,
    )


def test_sliding_event_time() -> None:
    assert_marbles(
        event_joined(sliding_window(4, 2, time="event")),
        "-a-b-c-d-e-f-g-|",
        "-----v---w---x-(yz|)",
        timed("abcdefg"),
        expected_values={"v": "ab", "w": "abcd", "x": "cdef", "y": "efg", "z": "g"},
        times=by_time,
    )


def test_session_event_time_merges_out_of_order_events() -> None:
    values = timed("abcdefgh")
    # b (t=1) and d (t=3) are two sessions of gap 1.5 until c (t=2) bridges them
    assert_marbles(
        event_joined(session_window(1.5, time="event", allowed_lateness=2)),
        "-b-d-c-h-|",
        "-------x-(y|)",
        values,
        expected_values={"x": "bdc", "y": "h"},
        times=by_time,
    )


def test_session_event_time_late_events() -> None:
    result = assert_marbles(
        event_joined(session_window(2, time="event", late="dead_letter")),
        "-a-b-f-c-d-|",
        "-----x-----(y|)",
        timed("abcdef"),
        expected_values={"x": "ab", "y": "f"},
        times=by_time,
    )
    # c (t=2) is behind the watermark (5) and before f's session: late; so is d (t=3)
    assert [d.event.value["c"] for d in result.dead_letters] == ["c", "d"]
    assert "before every open session" in result.dead_letters[0].message


def test_an_event_behind_the_watermark_still_joins_an_open_session() -> None:
    values = timed("abcdefgh")
    assert_marbles(
        event_joined(session_window(3, time="event")),
        "-c-e-d-|",
        "-------(x|)",
        values,
        expected_values={"x": "ced"},
        times=by_time,
    )


def test_event_time_without_times_fails_with_a_clear_error() -> None:
    result = run_marbles(tumbling_window(1, time="event"), "-a-|")
    (note,) = result.notifications
    assert note.kind == "E"
    assert isinstance(note.value, ConfigurationError)
    assert "ops.event_time" in str(note.value)


def test_rows_without_a_finite_time_are_dead_lettered() -> None:
    values = {"a": {"c": "a", "t": 0.0}, "b": {"c": "b", "t": None}, "n": {"c": "n", "t": 1e400}}
    result = assert_marbles(
        event_joined(tumbling_window(2, time="event")),
        "-(abn)--|",
        "--------(x|)",
        values,
        expected_values={"x": "a"},
        times=lambda v: v["t"],
    )
    assert [d.event.value["c"] for d in result.dead_letters] == ["b", "n"]
    assert "not a finite number" in result.dead_letters[0].message


# -- errors in user functions --------------------------------------------------------------


def test_a_raising_key_function_dead_letters_that_event() -> None:
    result = assert_marbles(
        joined(tumbling_window(0.004, key=lambda v: {"a": 1, "c": 1}[v])),
        "-abc-|",
        "----x|",
        expected_values={"x": "ac"},
    )
    assert [d.event.value for d in result.dead_letters] == ["b"]


def test_a_raising_aggregation_dead_letters_the_window_and_ends_its_events() -> None:
    def boom(values: list[Any]) -> Any:
        raise ValueError("no")

    result = assert_marbles(tumbling_window(0.004, agg=boom), "-ab-|", "----|")
    (letter,) = result.dead_letters
    assert letter.error_type == "ValueError"
    assert letter.event.value.value == ["a", "b"]  # the window with its raw values
    assert result.flow.pending == 0


def test_an_error_on_a_timer_becomes_on_error_not_a_raise() -> None:
    def boom(values: list[Any]) -> Any:
        raise ValueError("no")

    h = Harness(tumbling_window(0.004, agg=boom), fail_fast=True)
    h.send([("a", None, None)], at=0.001)
    h.scheduler.advance_to(0.010)  # the close timer fires at 4 ms and must not raise
    (error,) = h.errors
    assert isinstance(error, StageError)
    assert "ValueError: no" in str(error)
    assert h.flow.pending == 0  # fail_fast ends the event before raising


def test_a_raising_late_subscriber_fails_the_stage_and_the_event_still_ends() -> None:
    window = tumbling_window(1, time="event", late="stream")

    def refuse(event: Event) -> None:
        raise RuntimeError("cannot take it")

    window.late.subscribe(refuse)
    h = Harness(window)
    h.send([("a", None, 5.0), ("b", None, 1.0)])
    (error,) = h.errors
    assert isinstance(error, RuntimeError)
    assert h.flow.pending == 1  # b ended; a sits in its window, never processed


def test_processing_time_without_a_scheduler_fails_with_a_clear_error() -> None:
    ctx = PipelineContext("p")  # no scheduler anywhere
    flow = Flow("p")
    subject: Subject[Batch] = Subject()
    errors: list[Exception] = []
    tumbling_window(1, name="w")(subject).subscribe(on_error=errors.append)
    flow.try_acquire(1)
    subject.on_next(Batch(["a"], ctx=ctx, source="p", time=0.0, ticket=flow.ticket(1)))
    (error,) = errors
    assert isinstance(error, ConfigurationError)
    assert "'w' needs a scheduler" in str(error)


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tumbling_window(0), r"tumbling_window: size must be a positive number"),
        (lambda: tumbling_window(-1, name="w"), r"tumbling_window\('w'\): size"),
        (lambda: tumbling_window(float("nan")), "size"),
        (lambda: sliding_window(1, 2), r"slide \(2 s\) must not exceed size \(1 s\)"),
        (lambda: sliding_window(1, 1e-7), "panes"),
        (lambda: session_window(0), "gap must be a positive"),
        (lambda: tumbling_window(1, allowed_lateness=1), "allowed_lateness only applies"),
        (lambda: tumbling_window(1, late="drop"), "late only applies"),
        (lambda: tumbling_window(1, idle_timeout=5), "idle_timeout only applies"),
        (lambda: tumbling_window(1, time="event", late="keep"), "late must be"),  # type: ignore[arg-type]
        (lambda: tumbling_window(1, time="wall"), "time must be"),  # type: ignore[arg-type]
        (lambda: tumbling_window(1, time="event", allowed_lateness=-1), "allowed_lateness"),
        (lambda: session_window(1, time="event", idle_timeout=0), "idle_timeout"),
        (lambda: tumbling_window(1, offset=float("inf")), "offset must be a finite number"),
        (lambda: tumbling_window(1e-12), "too small"),
    ],
)
def test_bad_arguments_name_the_operator_and_the_argument(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_durations_may_be_timedeltas() -> None:
    assert_marbles(
        joined(tumbling_window(timedelta(milliseconds=4))),
        "-a-b--c--|",
        "----x---y|",
        expected_values={"x": "ab", "y": "c"},
    )


# -- in pipelines ------------------------------------------------------------------------------


async def test_processing_time_windows_in_a_pipeline_account_for_every_event() -> None:
    items = [{"k": i % 3, "v": i} for i in range(300)]
    result = await run(items, tumbling_window(60.0, key="k", agg=ops.count()), batch_size=7)
    windows: list[Window] = result.values
    assert sum(w.value for w in windows) == 300
    assert sorted({w.key for w in windows}) == [0, 1, 2]
    assert result.status.flow["pending"] == 0


async def test_event_time_windows_in_a_pipeline_larger_than_the_credit() -> None:
    items = [{"t": i * 0.5, "v": i} for i in range(200)]
    result = await run(
        items,
        ops.event_time("t"),
        tumbling_window(25, time="event", agg=ops.sum_("v")),
        credit=8,
        batch_size=4,
    )
    windows: list[Window] = result.values
    assert [w.count for w in windows] == [50, 50, 50, 50]
    assert [w.start for w in windows] == [0.0, 25.0, 50.0, 75.0]
    assert [ev.time for ev in result.events] == [24.5, 49.5, 74.5, 99.5]  # latest event time
    assert result.status.flow["pending"] == 0
    assert result.status.flow["peak_in_flight"] <= 8


async def test_windows_over_windows_fold_aggregate_holds() -> None:
    items = [{"t": float(i)} for i in range(40)]
    result = await run(
        items,
        ops.event_time("t"),
        tumbling_window(2, time="event", agg=ops.count()),
        sliding_window(8, 4, time="event", agg=ops.sum_("value")),
        batch_size=3,
    )
    windows: list[Window] = result.values
    assert [w.value for w in windows] == [4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 4]
    assert result.status.flow["pending"] == 0


async def test_sliding_windows_after_a_fan_out_end_each_copy() -> None:
    result = await run(
        [{"t": float(i)} for i in range(10)],
        ops.flat_map(lambda v: [v, v]),
        ops.event_time("t"),
        sliding_window(4, 2, time="event", agg=ops.count()),
    )
    assert sum(w.value for w in result.values) == 2 * 10 * 2
    assert result.status.flow["pending"] == 0


async def test_the_wall_clock_pipeline_runs_event_time_with_idle_close() -> None:
    # the asyncio scheduler's clock: idle_timeout arms a real timer, never fires here
    items = [{"t": float(i)} for i in range(5)]
    result = await run(items, ops.event_time("t"), session_window(2, time="event", idle_timeout=30))
    assert [w.count for w in result.values] == [5]
    await asyncio.sleep(0)


# -- holds -------------------------------------------------------------------------------


def test_a_sliding_window_event_stays_pending_until_its_last_window_ended() -> None:
    h = Harness(sliding_window(4, 2, time="event"), end_outputs=False)
    h.send([("a", None, 3.0)])  # in [0, 4) and [2, 6)
    h.send([("b", None, 5.0)])  # in [2, 6) and [4, 8); the watermark passes 4
    h.complete()
    rows = [(w.start, "".join(v for v, _, _ in w.value)) for w in h.windows]
    assert rows == [(0.0, "a"), (2.0, "ab"), (4.0, "b")]
    first, second = h.batches
    assert h.flow.pending == 2 + 2  # a and b, each in two windows
    first.end_all()
    assert h.flow.watermark() is None, "a is still in window [2, 6)"
    second.end_row(0)
    assert h.flow.watermark() == 1, "a ended with its last window"
    second.end_row(1)
    assert h.flow.pending == 0


# -- properties ----------------------------------------------------------------------------

Row = tuple[int, str, float]  # (index, key, time): the value windows collect


class Harness:
    """Feeds batches straight into an operator on a TestScheduler and records
    what comes out (with the virtual time), ending output rows like a sink."""

    def __init__(self, op: Op, *, end_outputs: bool = True, fail_fast: bool = False) -> None:
        self.scheduler = TestScheduler()
        self.ctx = PipelineContext(
            "h", scheduler=self.scheduler, dead_letters=MemoryDeadLetters(), fail_fast=fail_fast
        )
        self.flow = Flow("h", capacity=1 << 30)
        self.subject: Subject[Batch] = Subject()
        self.batches: list[Batch] = []
        self.emitted_at: list[float] = []
        self.errors: list[Exception] = []
        self.end_outputs = end_outputs
        self.position = 0
        op(self.subject).subscribe(
            self._on_next, self.errors.append, lambda: None, scheduler=self.scheduler
        )

    def _on_next(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.emitted_at.extend([float(self.scheduler.clock)] * len(batch.values))
        if self.end_outputs:
            batch.end_all()

    def send(
        self, rows: Sequence[tuple[Any, Hashable, float | None]], at: float | None = None
    ) -> None:
        if at is not None:
            self.scheduler.advance_to(at)
        n = len(rows)
        assert self.flow.try_acquire(n) == n
        start = self.position
        self.position += n
        self.subject.on_next(
            Batch(
                list(rows),
                ctx=self.ctx,
                source="h",
                time=self.ctx.now(),
                ticket=self.flow.ticket(n, None, start, start + n - 1),
                keys=[r[1] for r in rows],
                times=[r[2] for r in rows],
                positions=range(start, start + n),
            )
        )

    def complete(self, at: float | None = None) -> None:
        if at is not None:
            self.scheduler.advance_to(at)
        self.subject.on_completed()
        assert not self.errors, self.errors

    @property
    def windows(self) -> list[Window]:
        return [w for batch in self.batches for w in batch.values]


def cut(rows: list[Row], sizes: list[int]) -> list[list[Row]]:
    """``rows`` in batches of the given sizes, repeated."""
    out: list[list[Row]] = []
    i = 0
    k = 0
    while i < len(rows):
        n = sizes[k % len(sizes)]
        out.append(rows[i : i + n])
        i += n
        k += 1
    return out


def feed(op: WindowOperator, rows: list[Row], sizes: list[int]) -> tuple[Harness, list[int]]:
    """Run event-time ``rows`` through ``op`` (late="stream") in batches; returns the
    harness and the indices of the late rows."""
    late: list[int] = []
    op.late.subscribe(lambda ev: late.append(ev.value[0]))
    h = Harness(op)
    for batch in cut(rows, sizes):
        h.send(batch)
    h.complete()
    return h, late


def indices(window: Window) -> list[int]:
    return [row[0] for row in window.value]


timed_rows = st.lists(st.tuples(st.sampled_from("xyz"), st.integers(0, 40)), max_size=40).map(
    lambda events: [(i, k, float(t)) for i, (k, t) in enumerate(events)]
)
batch_sizes = st.lists(st.integers(1, 6), min_size=1, max_size=4)


@given(rows=timed_rows, size=st.integers(1, 6), lateness=st.integers(0, 6), sizes=batch_sizes)
def test_tumbling_windows_partition_the_on_time_events(
    rows: list[Row], size: int, lateness: int, sizes: list[int]
) -> None:
    h, late = feed(
        tumbling_window(size, time="event", allowed_lateness=lateness, late="stream"), rows, sizes
    )
    # the model, row by row: late when the window ended at or before the watermark
    want: dict[tuple[str, float], list[int]] = {}
    want_late: list[int] = []
    top: float | None = None
    for i, k, t in rows:
        start = t // size * size
        if top is not None and start + size <= top - lateness:
            want_late.append(i)
        else:
            want.setdefault((k, start), []).append(i)
        top = t if top is None else max(top, t)
    got = {(w.key, w.start): indices(w) for w in h.windows}
    assert len(got) == len(h.windows), "a window was emitted twice"
    assert got == want
    assert late == want_late
    assert sum(w.count for w in h.windows) + len(late) == len(rows)
    for w in h.windows:
        assert all(w.start <= t < w.end for _, _, t in w.value)
    ends = [w.end for w in h.windows]
    assert ends == sorted(ends), "windows close in order"
    assert h.flow.pending == 0


@given(
    rows=timed_rows,
    slide=st.integers(1, 4),
    extra=st.integers(0, 5),
    lateness=st.integers(0, 6),
    sizes=batch_sizes,
)
def test_sliding_windows_take_each_event_into_every_open_window(
    rows: list[Row], slide: int, extra: int, lateness: int, sizes: list[int]
) -> None:
    size = slide + extra  # aligned or not
    h, late = feed(
        sliding_window(size, slide, time="event", allowed_lateness=lateness, late="stream"),
        rows,
        sizes,
    )
    want: dict[tuple[str, float], list[int]] = {}
    want_late: list[int] = []
    top: float | None = None
    for i, k, t in rows:
        starts = [j * slide for j in range(int((t - size) // slide) + 1, int(t // slide) + 1)]
        open_ = [s for s in starts if top is None or s + size > top - lateness]
        if not open_:
            want_late.append(i)
        for s in open_:
            want.setdefault((k, float(s)), []).append(i)
        top = t if top is None else max(top, t)
    got = {(w.key, w.start): indices(w) for w in h.windows}
    assert len(got) == len(h.windows)
    assert {key: sorted(v) for key, v in got.items()} == want
    assert late == want_late
    assert h.flow.pending == 0


@given(rows=timed_rows, slide=st.integers(1, 4), m=st.integers(1, 4), sizes=batch_sizes)
def test_aligned_sliding_windows_hold_each_in_order_event_size_over_slide_times(
    rows: list[Row], slide: int, m: int, sizes: list[int]
) -> None:
    ordered = [(i, k, t) for i, (_, k, t) in enumerate(sorted(rows, key=lambda r: r[2]))]
    h, late = feed(sliding_window(slide * m, slide, time="event", late="stream"), ordered, sizes)
    assert late == []
    seen: dict[int, int] = {}
    for w in h.windows:
        for i in indices(w):
            seen[i] = seen.get(i, 0) + 1
    assert seen == dict.fromkeys(range(len(ordered)), m)
    assert h.flow.pending == 0


def sessions_of(h: Harness) -> list[tuple[Hashable, float, float, list[int]]]:
    return sorted((w.key, w.start, w.end, indices(w)) for w in h.windows)


@given(rows=timed_rows, gap=st.integers(1, 5), lateness=st.integers(0, 6), sizes=batch_sizes)
def test_sessions_are_separated_by_the_gap_and_do_not_depend_on_batching(
    rows: list[Row], gap: int, lateness: int, sizes: list[int]
) -> None:
    def window() -> WindowOperator:
        return session_window(gap, time="event", allowed_lateness=lateness, late="stream")

    h, late = feed(window(), rows, sizes)
    one_by_one, late_one_by_one = feed(window(), rows, [1])
    assert sessions_of(h) == sessions_of(one_by_one)
    assert late == late_one_by_one
    times = {i: t for i, _, t in rows}
    by_key: dict[Hashable, list[Window]] = {}
    for w in h.windows:
        by_key.setdefault(w.key, []).append(w)
        ts = sorted(times[i] for i in indices(w))
        assert (ts[0], ts[-1]) == (w.start, w.end)
        assert all(b - a < gap for a, b in itertools.pairwise(ts))
    for sessions in by_key.values():
        sessions.sort(key=lambda w: w.start)
        for a, b in itertools.pairwise(sessions):
            assert b.start - a.end >= gap
    placed = sorted(i for w in h.windows for i in indices(w))
    assert sorted(placed + late) == list(range(len(rows)))
    top: float | None = None
    for i, _, t in rows:  # a late event was behind the watermark
        if i in late:
            assert top is not None
            assert t < top - lateness
        top = t if top is None else max(top, t)
    assert h.flow.pending == 0


@given(rows=timed_rows, gap=st.integers(1, 5), sizes=batch_sizes)
def test_in_order_sessions_split_each_key_where_the_gap_opens(
    rows: list[Row], gap: int, sizes: list[int]
) -> None:
    ordered = [(i, k, t) for i, (_, k, t) in enumerate(sorted(rows, key=lambda r: r[2]))]
    h, late = feed(session_window(gap, time="event", late="stream"), ordered, sizes)
    assert late == []
    want: list[tuple[Hashable, float, float, list[int]]] = []
    for key in sorted({k for _, k, _ in ordered}):
        mine = [(i, t) for i, k, t in ordered if k == key]
        run_: list[tuple[int, float]] = [mine[0]]
        for i, t in mine[1:]:
            if t - run_[-1][1] >= gap:
                want.append((key, run_[0][1], run_[-1][1], [j for j, _ in run_]))
                run_ = []
            run_.append((i, t))
        want.append((key, run_[0][1], run_[-1][1], [j for j, _ in run_]))
    assert sessions_of(h) == sorted(want)


arrivals = st.lists(st.tuples(st.sampled_from("xy"), st.integers(0, 6)), max_size=30).map(
    lambda steps: list(enumerate(steps))
)


@given(steps=arrivals, size=st.integers(1, 6))
def test_processing_time_tumbling_windows_partition_by_arrival(
    steps: list[tuple[int, tuple[str, int]]], size: int
) -> None:
    """Events arrive ``step`` ms after the previous one; windows of ``size`` ms."""
    h = Harness(tumbling_window(size / 1000))
    frame = 0
    want: dict[tuple[str, int], list[int]] = {}
    for i, (k, step) in steps:
        frame += step
        h.send([(i, k, None)], at=frame / 1000)
        want.setdefault((k, frame // size * size), []).append(i)
    h.complete(at=(frame + 2 * size) / 1000)
    got = {(w.key, round(w.start * 1000)): indices(w) for w in h.windows}
    assert got == want
    for w, at in zip(h.windows, h.emitted_at, strict=True):
        assert at == pytest.approx(w.end), "emitted on the timer at the window's end"
    assert h.flow.pending == 0


@given(steps=arrivals, gap=st.integers(1, 6))
def test_processing_time_sessions_close_gap_after_the_last_arrival(
    steps: list[tuple[int, tuple[str, int]]], gap: int
) -> None:
    h = Harness(session_window(gap / 1000))
    frame = 0
    last: dict[str, int] = {}
    want: list[tuple[str, list[int]]] = []
    current: dict[str, list[int]] = {}
    for i, (k, step) in steps:
        frame += step
        h.send([(i, k, None)], at=frame / 1000)
        if k in last and frame - last[k] >= gap:
            want.append((k, current.pop(k)))
        current.setdefault(k, []).append(i)
        last[k] = frame
    want.extend(current.items())
    h.complete(at=(frame + 2 * gap) / 1000)
    assert sorted((w.key, indices(w)) for w in h.windows) == sorted(want)
    for w, at in zip(h.windows, h.emitted_at, strict=True):
        assert at == pytest.approx(w.end + gap / 1000)
    assert h.flow.pending == 0


@given(steps=arrivals, slide=st.integers(1, 3), m=st.integers(1, 3))
def test_processing_time_sliding_windows_hold_each_event_size_over_slide_times(
    steps: list[tuple[int, tuple[str, int]]], slide: int, m: int
) -> None:
    size = slide * m
    h = Harness(sliding_window(size / 1000, slide / 1000))
    frame = 0
    want: dict[tuple[str, int], list[int]] = {}
    for i, (k, step) in steps:
        frame += step
        h.send([(i, k, None)], at=frame / 1000)
        for j in range(frame // slide - m + 1, frame // slide + 1):
            want.setdefault((k, j * slide), []).append(i)
    h.complete(at=(frame + 2 * size) / 1000)
    got = {(w.key, round(w.start * 1000)): indices(w) for w in h.windows}
    assert got == want
    assert h.flow.pending == 0


ms_rows = st.lists(st.tuples(st.sampled_from("xy"), st.integers(0, 60)), max_size=40).map(
    lambda events: [(i, k, t / 1000) for i, (k, t) in enumerate(events)]
)


@given(
    rows=ms_rows,
    size=st.integers(1, 9),
    slide=st.integers(1, 9),
    lateness=st.integers(0, 9),
    sizes=batch_sizes,
)
def test_event_time_panes_on_millisecond_floats_do_not_depend_on_batching(
    rows: list[Row], size: int, slide: int, lateness: int, sizes: list[int]
) -> None:
    """Sorted batches (bisect), unsorted ones (per row) and single rows agree,
    on times that are not exact in binary (0.003 / 0.001 is not 3.0)."""
    slide = min(slide, size)

    def window() -> WindowOperator:
        return sliding_window(
            size / 1000, slide / 1000, time="event", allowed_lateness=lateness / 1000, late="stream"
        )

    def result(h: Harness) -> list[tuple[Hashable, int, list[int]]]:
        return sorted((w.key, round(w.start * 1000), indices(w)) for w in h.windows)

    cut_, late = feed(window(), rows, sizes)
    single, late_single = feed(window(), rows, [1])
    assert result(cut_) == result(single)
    assert late == late_single
    for w in single.windows:  # and each event lies in its window's bounds, in whole ms
        start, end = round(w.start * 1000), round(w.end * 1000)
        assert all(start <= round(t * 1000) < end for _, _, t in w.value)


def test_old_import_paths_still_work() -> None:
    """``rxagent.operators.timewindows`` is kept for old imports of the time windows."""
    from rxagent.operators import timewindows, windows

    assert timewindows.tumbling_window is tumbling_window is ops.tumbling_window
    assert timewindows.WindowOperator is WindowOperator
    assert windows.count_window is ops.count_window
    assert windows.Window is Window
