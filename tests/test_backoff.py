"""The backoff policy: exact schedules, jitter bounds, limits, and their properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxagent.backoff import Backoff
from rxagent.clock import snap
from rxagent.exceptions import ConfigurationError

# -- exact behaviour ------------------------------------------------------------


def test_no_jitter_grows_by_factor_up_to_the_cap() -> None:
    policy = Backoff(initial=0.1, factor=2, max_delay=0.5, jitter="none", max_attempts=6)
    assert list(policy.delays()) == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_delays_count_is_max_attempts_minus_one() -> None:
    assert list(Backoff(max_attempts=1).delays()) == []
    assert len(list(Backoff(max_attempts=4).delays())) == 3


def test_unlimited_attempts_give_an_endless_schedule() -> None:
    delays = Backoff(jitter="none", max_attempts=None, max_delay=1.0).delays()
    taken = [next(delays) for _ in range(1000)]
    assert taken[-1] == 1.0


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    policy = Backoff(initial=1.0, factor=10.0, max_delay=60.0, jitter="none", max_attempts=None)
    assert policy.delay(10_000) == 60.0


def test_same_seed_same_schedule() -> None:
    policy = Backoff(jitter="full", max_attempts=10)
    assert list(policy.delays(random.Random(3))) == list(policy.delays(random.Random(3)))
    assert list(policy.delays(random.Random(3))) != list(policy.delays(random.Random(4)))


def test_next_delay_gives_up_after_max_attempts() -> None:
    policy = Backoff(initial=0.01, jitter="none", max_attempts=3)
    assert policy.next_delay(1, 0.0, OSError()) == pytest.approx(0.01)
    assert policy.next_delay(2, 0.0, OSError()) == pytest.approx(0.02)
    assert policy.next_delay(3, 0.0, OSError()) is None


def test_next_delay_gives_up_rather_than_wait_past_max_elapsed() -> None:
    policy = Backoff(initial=1.0, factor=1, jitter="none", max_attempts=None, max_elapsed=2.5)
    assert policy.next_delay(1, 0.0) == 1.0
    assert policy.next_delay(2, 1.5) == 1.0  # ends exactly at the limit: allowed
    assert policy.next_delay(2, 1.6) is None  # 1.6 + 1.0 > 2.5


def test_only_retry_on_types_are_retried() -> None:
    policy = Backoff(retry_on=(ConnectionError, TimeoutError), max_attempts=5)
    assert policy.retryable(ConnectionResetError())
    assert policy.next_delay(1, 0.0, TimeoutError()) is not None
    assert policy.next_delay(1, 0.0, ValueError("bad")) is None


def test_a_single_exception_type_is_accepted_for_retry_on() -> None:
    policy = Backoff(retry_on=KeyError)  # type: ignore[arg-type]
    assert policy.retry_on == (KeyError,)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"initial": -1}, "initial"),
        ({"factor": 0.5}, "factor"),
        ({"initial": 2, "max_delay": 1}, "max_delay"),
        ({"jitter": "wild"}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_elapsed": -1}, "max_elapsed"),
        ({"retry_on": (ValueError, "oops")}, "retry_on"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_describe_is_plain_data() -> None:
    assert Backoff(retry_on=(OSError,)).describe()["retry_on"] == ["OSError"]


# -- properties -------------------------------------------------------------------

policies = st.builds(
    Backoff,
    initial=st.floats(0, 10, allow_nan=False),
    factor=st.floats(1, 10, allow_nan=False),
    max_delay=st.floats(10, 100, allow_nan=False),
    jitter=st.sampled_from(["none", "full", "equal"]),
    max_attempts=st.one_of(st.none(), st.integers(1, 20)),
    max_elapsed=st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)),
)


@given(policies, st.integers(1, 10_000), st.randoms(use_true_random=False))
def test_every_delay_is_within_its_jitter_bounds(
    policy: Backoff, attempt: int, rng: random.Random
) -> None:
    base = policy.base_delay(attempt)
    delay = policy.delay(attempt, rng)
    assert 0 <= base <= policy.max_delay
    if policy.jitter == "none":
        assert delay == base
    elif policy.jitter == "full":
        assert 0 <= delay <= base
    else:
        assert base / 2 <= delay <= base


@given(policies, st.integers(1, 200))
def test_base_delay_never_shrinks(policy: Backoff, attempt: int) -> None:
    assert policy.base_delay(attempt) <= policy.base_delay(attempt + 1)


@given(
    policies,
    st.lists(st.floats(0, 50, allow_nan=False), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_a_retry_loop_never_exceeds_the_limits(
    policy: Backoff, call_durations: list[float], rng: random.Random
) -> None:
    """Drive the decision as a retrying caller would, with calls of given durations."""
    elapsed = 0.0
    attempts = 0
    for duration in call_durations:
        attempts += 1
        elapsed += duration
        wait = policy.next_delay(attempts, elapsed, OSError("down"), rng)
        if wait is None:
            break
        assert wait <= policy.max_delay
        elapsed += wait
        if policy.max_elapsed is not None:  # compared to the microsecond (rxagent.clock.snap)
            assert snap(elapsed) <= snap(policy.max_elapsed)
    if policy.max_attempts is not None:
        assert attempts <= policy.max_attempts


@given(policies, st.randoms(use_true_random=False))
def test_the_delays_iterator_matches_max_attempts(policy: Backoff, rng: random.Random) -> None:
    delays = []
    for i, delay in enumerate(policy.delays(rng)):
        delays.append(delay)
        if i > 50:
            break
    if policy.max_attempts is not None and policy.max_attempts <= 50:
        assert len(delays) == policy.max_attempts - 1
    assert all(0 <= d <= policy.max_delay for d in delays)
