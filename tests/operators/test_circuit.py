"""Circuit breaker: the pure state machine, and the operator that fails events fast."""

from __future__ import annotations

import itertools
import logging
import string
from typing import Any

import pytest
import reactivex as rx
from hypothesis import given
from hypothesis import strategies as st
from reactivex.subject import Subject

from rxagent import ConfigurationError
from rxagent import operators as ops
from rxagent.context import PipelineContext
from rxagent.events import Batch
from rxagent.flow import Flow
from rxagent.operators.circuit import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CircuitTransition,
    circuit_breaker,
)
from rxagent.testing import run
from rxagent.testing.marbles import assert_marbles, run_marbles

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def transitions(breaker: CircuitBreaker) -> list[CircuitTransition]:
    seen: list[CircuitTransition] = []
    breaker.on_transition(seen.append)
    return seen


# -- the state machine --------------------------------------------------------------


def test_failures_in_a_row_open_the_circuit_and_a_success_resets_the_count() -> None:
    b = CircuitBreaker("api", failure_threshold=3, reset_timeout=10)
    seen = transitions(b)
    b.record_failure(0)
    b.record_failure(1)
    b.record_success(2)
    b.record_failure(3)
    b.record_failure(4)
    assert b.state is CLOSED
    assert b.failures == 2
    b.record_failure(5, ValueError("boom"))
    assert b.state is OPEN
    assert b.open_until == 15
    assert seen == [CircuitTransition("api", CLOSED, OPEN, 5, 3, 15, "ValueError: boom")]


def test_open_fails_fast_until_the_timeout_then_half_open_trials_decide() -> None:
    b = CircuitBreaker("api", failure_threshold=1, reset_timeout=10, half_open_max_calls=2)
    b.record_failure(0)
    assert not b.allow(9.99)
    assert b.current(9.99) is OPEN
    assert b.allow(10)
    assert b.state is HALF_OPEN
    assert b.allow(10)
    assert not b.allow(10), "two trials at once at most"
    b.release()
    assert b.allow(11), "a released trial frees its slot"
    b.record_success(12)
    assert b.state is CLOSED


def test_a_failed_trial_opens_the_circuit_again() -> None:
    b = CircuitBreaker("api", failure_threshold=1, reset_timeout=10)
    seen = transitions(b)
    b.record_failure(0)
    assert b.allow(10)
    b.record_failure(11, "still down")
    assert b.state is OPEN
    assert b.open_until == 21
    assert [(t.old, t.new, t.time) for t in seen] == [
        (CLOSED, OPEN, 0),
        (OPEN, HALF_OPEN, 10),
        (HALF_OPEN, OPEN, 11),
    ]


def test_success_threshold_needs_that_many_trial_successes() -> None:
    b = CircuitBreaker("api", failure_threshold=1, reset_timeout=1, success_threshold=2)
    b.record_failure(0)
    assert b.allow(1)
    b.record_success(1)
    assert b.state is HALF_OPEN
    assert b.allow(2)
    b.record_success(2)
    assert b.state is CLOSED


def test_late_reports_while_open_change_nothing() -> None:
    b = CircuitBreaker("api", failure_threshold=1, reset_timeout=10)
    b.record_failure(0)
    b.record_success(1)
    b.record_failure(2)
    assert b.state is OPEN
    assert b.open_until == 10


def test_trip_and_reset_force_the_state() -> None:
    b = CircuitBreaker("api", reset_timeout=5)
    seen = transitions(b)
    b.trip(1, "maintenance")
    assert b.state is OPEN
    assert b.open_until == 6
    b.reset(2)
    assert b.state is CLOSED
    assert b.open_until is None
    assert [t.new for t in seen] == [OPEN, CLOSED]


def test_the_rejection_says_which_circuit_until_when_and_why() -> None:
    b = CircuitBreaker("quotes", failure_threshold=2, reset_timeout=4)
    b.record_failure(1, ConnectionError("refused"))
    b.record_failure(2, ConnectionError("refused"))
    error = b.rejection(3)
    assert isinstance(error, CircuitOpenError)
    assert (error.circuit, error.open_until) == ("quotes", 6)
    assert str(error) == (
        "circuit 'quotes' open until t=6.000s (in 3 s), after 2 failure(s); "
        "last: ConnectionError: refused"
    )
    wall = CircuitBreaker("quotes", failure_threshold=1)
    wall.record_failure(1_700_000_000.0)
    assert "open until 2023-11-14T22:13:50.000+00:00 (in 30 s)" in str(wall.rejection(1.7e9))


def test_the_clock_is_used_when_no_time_is_given() -> None:
    now = [100.0]
    b = CircuitBreaker("api", failure_threshold=1, reset_timeout=5, clock=lambda: now[0])
    b.record_failure()
    assert b.open_until == 105
    now[0] = 105
    assert b.allow()
    assert b.state is HALF_OPEN


def test_listeners_can_leave_and_a_raising_one_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker("api", failure_threshold=1)
    seen: list[CircuitTransition] = []
    leave = b.on_transition(seen.append)

    def boom(_: CircuitTransition) -> None:
        raise RuntimeError("bad listener")

    b.on_transition(boom)
    with caplog.at_level(logging.ERROR, logger="rxagent"):
        b.record_failure(0)
    assert len(seen) == 1
    assert "transition listener raised" in caplog.text
    leave()
    leave()  # twice is harmless
    b.reset(1)
    assert len(seen) == 1
    assert b.describe()["state"] == "closed"


def test_bad_arguments_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="CircuitBreaker 'x': failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ConfigurationError, match="half_open_max_calls"):
        CircuitBreaker("x", half_open_max_calls=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="reset_timeout"):
        CircuitBreaker("x", reset_timeout=float("nan"))
    with pytest.raises(ConfigurationError, match="clock must be a callable"):
        CircuitBreaker("x", clock=3)  # type: ignore[arg-type]


_ops = st.lists(
    st.tuples(st.sampled_from(["allow", "ok", "fail", "release"]), st.integers(0, 4)),
    max_size=60,
)


@given(
    steps=_ops,
    threshold=st.integers(1, 4),
    reset_timeout=st.integers(0, 6),
    successes=st.integers(1, 3),
    trials=st.integers(1, 3),
)
def test_the_state_machine_keeps_its_promises(
    steps: list[tuple[str, int]], threshold: int, reset_timeout: int, successes: int, trials: int
) -> None:
    b = CircuitBreaker(
        "p",
        failure_threshold=threshold,
        reset_timeout=reset_timeout,
        success_threshold=successes,
        half_open_max_calls=trials,
    )
    seen = transitions(b)
    legal = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
    now = 0
    in_a_row = 0  # failures in a row while closed
    in_flight = 0  # trials allowed while half-open and not reported
    for action, dt in steps:
        now += dt
        before = b.state
        if action == "allow":
            open_ = before is OPEN and b.open_until is not None and now < b.open_until
            allowed = b.allow(now)
            if open_:
                assert not allowed, "an open circuit fails fast until its timeout"
            if allowed and b.state is HALF_OPEN:
                in_flight += 1
                assert in_flight <= trials
        elif action == "ok":
            b.record_success(now)
            in_a_row = 0
            in_flight = max(0, in_flight - 1)
        elif action == "fail":
            b.record_failure(now)
            if before is CLOSED:
                in_a_row += 1
                assert (b.state is OPEN) == (in_a_row >= threshold)
            elif before is HALF_OPEN:
                assert b.state is OPEN, "a failed trial opens the circuit again"
            in_flight = max(0, in_flight - 1)
        else:
            b.release()
            in_flight = max(0, in_flight - 1)
        if b.state is not CLOSED:
            in_a_row = 0
        if b.state is not HALF_OPEN:
            in_flight = 0
        if b.state is OPEN:
            assert b.open_until is not None
        else:
            assert b.open_until is None
    for t in seen:
        assert (t.old, t.new) in legal
        if t.new is OPEN:
            assert t.open_until == t.time + reset_timeout
    assert [t.time for t in seen] == sorted(t.time for t in seen)
    for a, b_ in itertools.pairwise(seen):
        assert a.new == b_.old, "transitions chain"


# -- the operator -------------------------------------------------------------------


def fetch(v: str) -> str:
    if v in "ab":
        raise ConnectionError("down")
    return v.upper()


def test_failures_open_the_circuit_and_events_fail_fast_until_a_trial_succeeds() -> None:
    op = circuit_breaker(fetch, failure_threshold=2, reset_timeout=0.005, name="quotes")
    states: list[CircuitTransition] = []
    op.state.subscribe(states.append)
    result = assert_marbles(op, "-a-b-c-d-------e-|", "---------------E-|")
    assert [(t.new, round(t.time * 1000)) for t in states] == [
        (OPEN, 3),
        (HALF_OPEN, 8),  # on a timer, not at the next event
        (CLOSED, 15),
    ]
    letters = [(d.event.value, d.error_type) for d in result.dead_letters]
    assert letters == [
        ("a", "ConnectionError"),
        ("b", "ConnectionError"),
        ("c", "CircuitOpenError"),
        ("d", "CircuitOpenError"),
    ]
    assert result.dead_letters[2].message.startswith("circuit 'quotes' open until t=0.008s")
    metrics = result.ctx.stage("quotes").as_dict()
    assert (metrics["in"], metrics["out"], metrics["dead_lettered"]) == (5, 1, 4)
    assert (metrics["rejected"], metrics["failures"]) == (2, 2)


def test_results_replace_values_and_a_batch_stops_at_the_threshold() -> None:
    calls: list[str] = []

    def call(v: str) -> str:
        calls.append(v)
        return fetch(v)

    op = circuit_breaker(call, failure_threshold=2, reset_timeout=1.0)
    # a success between two failures resets the count: y does not open the circuit
    assert_marbles(op, "-(xaybz)-|", "-(XYZ)---|")
    calls.clear()
    result = assert_marbles(op, "-(xabyz)-|", "-X-------|")
    assert calls == ["x", "a", "b"], "one call per row, none once open"
    assert [d.error_type for d in result.dead_letters] == [
        "ConnectionError",
        "ConnectionError",
        "CircuitOpenError",
        "CircuitOpenError",
    ]


def test_a_failed_trial_opens_it_again() -> None:
    op = circuit_breaker(fetch, failure_threshold=1, reset_timeout=0.003)
    states: list[CircuitTransition] = []
    op.state.subscribe(states.append)
    assert_marbles(op, "-a-c-a-c-------c-|", "---------------C-|")
    assert [(t.new, round(t.time * 1000)) for t in states] == [
        (OPEN, 1),
        (HALF_OPEN, 4),
        (OPEN, 5),
        (HALF_OPEN, 8),
        (CLOSED, 15),
    ]


def test_half_open_trials_go_one_row_at_a_time_within_a_batch() -> None:
    op = circuit_breaker(fetch, failure_threshold=1, reset_timeout=0.002, success_threshold=2)
    # two successful trials close the circuit; the rest of the batch flows
    assert_marbles(op, "-a---(cde)-|", "-----(CDE)-|")
    # a failed trial opens it again: the rest of the batch is rejected
    result = assert_marbles(op, "-a---(cae)-|", "-----C-----|")
    assert [(d.event.value, d.error_type) for d in result.dead_letters] == [
        ("a", "ConnectionError"),
        ("a", "ConnectionError"),
        ("e", "CircuitOpenError"),
    ]


def test_an_inner_operator_is_guarded_by_its_dead_letters() -> None:
    op = circuit_breaker(ops.map(fetch), failure_threshold=2, reset_timeout=0.005)
    result = assert_marbles(op, "-a-b-c-d-------e-|", "---------------E-|")
    assert [(d.stage, d.error_type) for d in result.dead_letters] == [
        ("circuit_breaker.map", "ConnectionError"),
        ("circuit_breaker.map", "ConnectionError"),
        ("circuit_breaker", "CircuitOpenError"),
        ("circuit_breaker", "CircuitOpenError"),
    ]
    assert op.breaker.state is CLOSED


def test_an_inner_operator_in_half_open_gets_one_row_at_a_time() -> None:
    op = circuit_breaker(ops.map(fetch), failure_threshold=1, reset_timeout=0.002)
    assert_marbles(op, "-a---(cde)-|", "-----(CDE)-|")


def test_an_inner_stream_error_counts_as_a_failure_and_goes_on() -> None:
    inner = ops.Operator("broken", lambda _stage, _source: rx.throw(ValueError("gone")))
    op = circuit_breaker(inner, failure_threshold=1, reset_timeout=1.0)
    assert_marbles(op, "-a-|", "#", check_flow=False)
    assert op.breaker.state is OPEN


def test_a_shared_breaker_trips_every_stage_that_uses_it() -> None:
    shared = CircuitBreaker("api", failure_threshold=1, reset_timeout=10.0)
    first = circuit_breaker(fetch, breaker=shared, name="first")
    second = circuit_breaker(str.upper, breaker=shared, name="second")
    assert_marbles(lambda s: second(first(s)), "-a-c-|", "-----|")
    assert second.breaker is shared
    assert shared.state is OPEN


def test_errors_pass_on_and_disposal_stops_listening() -> None:
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=0.005)
    listeners = len(breaker._listeners)
    op = circuit_breaker(fetch, breaker=breaker)
    assert_marbles(op, "-c-#", "-C-#")
    run_ = run_marbles(op, "-a-c-|", unsubscribe=2)
    assert run_.values == []
    assert len(breaker._listeners) == listeners + 1, "only op.state's listener is left"


def test_named_keeps_the_breaker_and_state_stream() -> None:
    op = circuit_breaker(fetch)
    renamed = op.named("x")
    assert renamed.breaker is op.breaker
    assert renamed.state is op.state


def test_without_a_scheduler_it_turns_half_open_lazily() -> None:
    now = [0.0]
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=5, clock=lambda: now[0])
    subject: Subject[Batch] = Subject()
    got: list[Any] = []
    subject.pipe(circuit_breaker(fetch, breaker=breaker)).subscribe(
        lambda b: (got.extend(b.values), b.end_all())
    )
    ctx = PipelineContext("p")
    flow = Flow("s")

    def send(*values: str) -> None:
        flow.try_acquire(len(values))
        subject.on_next(
            Batch(list(values), ctx=ctx, source="s", time=0, ticket=flow.ticket(len(values)))
        )

    send("a")
    now[0] = 4.0
    send("c")
    assert breaker.state is OPEN
    now[0] = 5.0
    send("c")
    assert got == ["C"]
    assert flow.pending == 0


def test_bad_operator_arguments_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="belong to the CircuitBreaker"):
        circuit_breaker(fetch, breaker=CircuitBreaker(), failure_threshold=3)
    with pytest.raises(ConfigurationError, match="breaker must be a CircuitBreaker"):
        circuit_breaker(fetch, breaker="api")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="call must be a function"):
        circuit_breaker(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="CircuitBreaker 'circuit_breaker'"):
        circuit_breaker(fetch, failure_threshold=0)


async def test_in_a_pipeline_a_dead_service_stops_being_called() -> None:
    calls = 0

    def dead(v: int) -> int:
        nonlocal calls
        calls += 1
        raise TimeoutError("no answer")

    op = circuit_breaker(dead, failure_threshold=3, reset_timeout=60, name="svc")
    result = await run(range(50), op, credit=8, batch_size=4)
    assert calls == 3
    assert len(result.dead_letters) == 50
    assert result.status.stages["svc"]["rejected"] == 47
    assert result.status.flow["pending"] == 0


@given(
    outcomes=st.lists(st.booleans(), max_size=40),
    gaps=st.lists(st.integers(0, 3), min_size=40, max_size=40),
    threshold=st.integers(1, 3),
    reset_frames=st.integers(0, 6),
)
def test_the_operator_never_calls_while_open_and_accounts_for_every_event(
    outcomes: list[bool], gaps: list[int], threshold: int, reset_frames: int
) -> None:
    """Each event is either emitted (its call succeeded) or dead-lettered."""
    values = {string.ascii_letters[i]: (i, ok) for i, ok in enumerate(outcomes)}
    diagram = "".join("-" * (gap + 1) + c for gap, c in zip(gaps, values, strict=False)) + "-|"
    called: list[int] = []

    def call(v: tuple[int, bool]) -> int:
        called.append(v[0])
        if not v[1]:
            raise ConnectionError("down")
        return v[0]

    op = circuit_breaker(call, failure_threshold=threshold, reset_timeout=reset_frames / 1000)
    result = run_marbles(op, diagram, values)
    rejected = [d.event.value[0] for d in result.dead_letters if d.error_type == "CircuitOpenError"]
    assert sorted(result.values + [d.event.value[0] for d in result.dead_letters]) == list(
        range(len(outcomes))
    )
    assert sorted(called + rejected) == list(range(len(outcomes))), "called or rejected, once"
    assert result.values == [i for i in called if outcomes[i]]
    assert result.flow.pending == 0


def test_rejections_are_recorded_as_suppressions_until_the_circuit_half_opens() -> None:
    op = circuit_breaker(fetch, failure_threshold=2, reset_timeout=0.005, name="quotes")
    result = run_marbles(op, "-a-b-c-d-------e-|")
    [entry] = result.ctx.suppressions.entries("quotes")
    assert (entry.key, entry.reason, entry.count) == (None, "circuit_open", 2)
    assert (round(entry.last_at * 1000), entry.eligible_at) == (7, pytest.approx(0.008))
