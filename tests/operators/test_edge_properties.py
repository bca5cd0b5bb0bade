"""Operator edge cases found by property tests (issue 12), each in virtual time.

- Times compared with bounds made by adding or subtracting durations are compared to
  the microsecond (``rxagent.clock.snap``): an event exactly on the watermark is not
  late, a circuit's reset timeout ends exactly on time, a retry wait ending exactly at
  ``max_elapsed`` is not past it.
- Session windows keep their values in arrival order, also after two sessions merge.
- ``buffer(policy="latest")`` decides row by row: what it keeps does not depend on how
  the source cut its batches.
"""

from __future__ import annotations

from typing import Any

from _helpers import VIRTUAL_MS
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex.testing import TestScheduler
from test_backpressure import slow
from test_windows_timed import Row, batch_sizes, feed, indices, timed_rows

from rxagent import Backoff
from rxagent import clock as clocks
from rxagent.clock import scheduler_clock
from rxagent.operators.backpressure import buffer
from rxagent.operators.circuit import CircuitBreaker, CircuitState
from rxagent.operators.retry import retry
from rxagent.operators.windows import session_window
from rxagent.testing.marbles import Notification, run_marbles

DOWN = ConnectionError("feed down")


def test_snap_is_to_the_microsecond() -> None:
    snap = clocks.snap
    assert 0.001 + 0.008 != 0.009
    assert snap(0.001 + 0.008) == snap(0.009) == 0.009
    assert snap(0.010 - 0.009) == 0.001
    assert snap(1_700_000_000.1234564) == 1_700_000_000.123456


# -- boundaries ----------------------------------------------------------------------------


@given(top_ms=st.integers(0, 200), lateness_ms=st.integers(0, 200), gap_ms=st.integers(1, 50))
def test_a_session_event_exactly_on_the_watermark_is_not_late(
    top_ms: int, lateness_ms: int, gap_ms: int
) -> None:
    if lateness_ms > top_ms:
        lateness_ms = top_ms
    on = (top_ms - lateness_ms) * VIRTUAL_MS
    op = session_window(
        gap_ms * VIRTUAL_MS, time="event", allowed_lateness=lateness_ms * VIRTUAL_MS, late="stream"
    )
    _, late = feed(op, [(0, "k", top_ms * VIRTUAL_MS), (1, "k", on)], [1])
    assert late == [], f"{on} is on the watermark {top_ms} ms - {lateness_ms} ms"
    if top_ms - lateness_ms - 1 >= 0 and lateness_ms >= 1:  # 1 ms behind it: late
        before = (top_ms - lateness_ms - 1) * VIRTUAL_MS
        op = session_window(
            gap_ms * VIRTUAL_MS,
            time="event",
            allowed_lateness=lateness_ms * VIRTUAL_MS,
            late="stream",
        )
        _, late = feed(op, [(0, "k", top_ms * VIRTUAL_MS), (1, "k", before)], [1])
        assert late == [1]


def test_the_reported_session_case() -> None:
    op = session_window(0.005, time="event", allowed_lateness=0.009, late="stream")
    _, late = feed(op, [(0, "k", 0.010), (1, "k", 0.001)], [1])
    assert late == []


@given(opened_ms=st.integers(0, 100), reset_ms=st.integers(1, 100))
def test_a_circuit_half_opens_exactly_when_its_reset_timeout_ends(
    opened_ms: int, reset_ms: int
) -> None:
    scheduler = TestScheduler()
    clock = scheduler_clock(scheduler)
    breaker = CircuitBreaker(
        "edge", failure_threshold=1, reset_timeout=reset_ms * VIRTUAL_MS, clock=clock
    )
    scheduler.advance_to(opened_ms * VIRTUAL_MS)
    breaker.record_failure()
    assert breaker.current() is CircuitState.OPEN
    scheduler.advance_to((opened_ms + reset_ms - 1) * VIRTUAL_MS)
    assert not breaker.allow(), "refused before the reset timeout ends"
    scheduler.advance_to((opened_ms + reset_ms) * VIRTUAL_MS)
    assert breaker.allow(), f"opened at {opened_ms} ms for {reset_ms} ms"


def test_the_reported_circuit_case() -> None:
    breaker = CircuitBreaker("edge", failure_threshold=1, reset_timeout=0.008)
    breaker.record_failure(now=0.001)
    assert breaker.allow(now=0.009)


@given(delay_ms=st.integers(1, 6), max_elapsed_ms=st.integers(0, 40))
def test_retry_waits_that_end_exactly_at_max_elapsed_are_made(
    delay_ms: int, max_elapsed_ms: int
) -> None:
    op = retry(
        Backoff(
            initial=delay_ms * VIRTUAL_MS,
            factor=1,
            jitter="none",
            max_attempts=None,
            max_elapsed=max_elapsed_ms * VIRTUAL_MS,
        )
    )
    run = run_marbles(op, "-#", error=DOWN, horizon=300)
    # each subscription fails 1 ms after it starts; the run's first failure is at 1 ms,
    # so a subscription at s fails s ms into the run, and waits when s + delay <= max
    want = [0]
    while want[-1] + delay_ms <= max_elapsed_ms:
        want.append(want[-1] + 1 + delay_ms)
    assert [sub for sub, _ in run.subscriptions] == want


@given(
    first_us=st.integers(0, 10**7),
    elapsed_us=st.integers(0, 10**6),
    delay_us=st.integers(0, 10**6),
)
def test_a_wait_ending_exactly_at_max_elapsed_is_not_past_it(
    first_us: int, elapsed_us: int, delay_us: int
) -> None:
    """What the retry operator computes: elapsed = now - first failure (scheduler
    seconds), then the wait against ``max_elapsed``, all whole microseconds."""
    max_elapsed = (elapsed_us + delay_us) * 1e-6
    policy = Backoff(
        initial=delay_us * 1e-6, factor=1, jitter="none", max_attempts=None, max_elapsed=max_elapsed
    )
    elapsed = (first_us + elapsed_us) * 1e-6 - first_us * 1e-6
    assert policy.next_delay(2, elapsed, DOWN) == delay_us * 1e-6
    if delay_us:
        assert policy.next_delay(2, elapsed + 1e-6, DOWN) is None


def test_the_reported_retry_case() -> None:
    policy = Backoff(initial=0.003, factor=1, jitter="none", max_elapsed=0.009)
    assert policy.next_delay(2, 0.006, DOWN) == 0.003  # ends exactly at 9 ms: not past it


# -- session values in arrival order ---------------------------------------------------------


#: Rows of one or two keys over a short span: sessions that a later row bridges.
close_rows = st.lists(
    st.tuples(st.sampled_from("xy"), st.integers(0, 16)), min_size=3, max_size=16
).map(lambda events: [(i, k, float(t)) for i, (k, t) in enumerate(events)])


@settings(max_examples=300)
@given(
    rows=close_rows | timed_rows,
    gap=st.integers(1, 5),
    lateness=st.integers(0, 16),
    sizes=batch_sizes,
)
def test_session_values_come_out_in_arrival_order(
    rows: list[Row], gap: int, lateness: int, sizes: list[int]
) -> None:
    op = session_window(gap, time="event", allowed_lateness=lateness, late="stream")
    h, _ = feed(op, rows, sizes)
    for window in h.windows:
        assert indices(window) == sorted(indices(window)), window


def test_merged_sessions_interleave_by_arrival() -> None:
    # a (t=0) and c (t=4) open two sessions; b (t=1) and d (t=5) join them; e (t=2) bridges
    rows: list[Row] = [(0, "k", 0.0), (1, "k", 4.0), (2, "k", 1.0), (3, "k", 5.0), (4, "k", 2.5)]
    h, late = feed(session_window(2, time="event", allowed_lateness=10, late="stream"), rows, [1])
    assert late == []
    assert [indices(w) for w in h.windows] == [[0, 1, 2, 3, 4]]


# -- buffer(policy="latest"), row by row ----------------------------------------------------


def _latest_model(rows: list[str], capacity: int) -> list[str]:
    """Row by row: a waiting key's row is replaced in its place in line; a new key past
    ``capacity`` pushes the oldest waiting one out."""
    line: dict[str, str] = {}
    for row in rows:
        key = row[0]
        if key in line:
            line[key] = row
        else:
            line[key] = row
            if len(line) > capacity:
                del line[next(iter(line))]
    return list(line.values())


@given(
    keys=st.lists(st.sampled_from("abcd"), min_size=1, max_size=14),
    capacity=st.integers(1, 4),
    cuts=st.lists(st.integers(1, 5), min_size=1, max_size=4),
)
def test_latest_keeps_the_same_rows_however_the_source_cut_its_batches(
    keys: list[str], capacity: int, cuts: list[int]
) -> None:
    rows = [f"{k}{i}" for i, k in enumerate(keys)]
    notes: list[Notification] = [Notification(1, "N", "z9")]  # holds downstream for 50 frames
    frame, i, c = 2, 0, 0
    while i < len(rows):
        size = cuts[c % len(cuts)]
        notes.extend(Notification(frame, "N", row) for row in rows[i : i + size])
        i += size
        c += 1
        frame += 1
    notes.append(Notification(frame + 100, "C"))

    def hold(value: Any) -> int:
        return 50 if value == "z9" else 1

    run = slow(buffer(capacity, "latest", in_flight=1, key=lambda v: v[0]), notes, hold)
    sent = [value for _, value in run.sent]
    assert sent == ["z9", *_latest_model(rows, capacity)]
    assert run.metrics.dropped == len(rows) - (len(sent) - 1)
    assert run.flow.pending == 0


def test_the_reported_buffer_case() -> None:
    def cut_into(frames: list[list[str]]) -> list[str]:
        notes = [Notification(1, "N", "z9")]
        for f, rows in enumerate(frames, start=2):
            notes.extend(Notification(f, "N", r) for r in rows)
        notes.append(Notification(200, "C"))
        run = slow(
            buffer(1, "latest", in_flight=1, key=lambda v: v[0]),
            notes,
            lambda v: 50 if v == "z9" else 1,
        )
        return [value for _, value in run.sent]

    assert cut_into([["a1", "b2", "a3"]]) == cut_into([["a1"], ["b2"], ["a3"]]) == ["z9", "a3"]
