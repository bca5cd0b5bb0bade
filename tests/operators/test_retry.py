"""retry: resubscribe after Backoff delays in virtual time, give up, reset, report status."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
import reactivex as rx
from _helpers import VIRTUAL_MS
from hypothesis import given
from hypothesis import strategies as st
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler.eventloop import AsyncIOScheduler

from rxagent import Backoff, ConfigurationError
from rxagent.context import PipelineContext
from rxagent.events import Batch
from rxagent.flow import Flow
from rxagent.operators.retry import RetryStatus, retry
from rxagent.testing.marbles import assert_marbles, run_marbles

DOWN = ConnectionError("feed down")


def fixed(delay_ms: float, **kw: Any) -> Backoff:
    return Backoff(initial=delay_ms * VIRTUAL_MS, factor=1, jitter="none", **kw)


def watch(op: Any) -> list[RetryStatus]:
    seen: list[RetryStatus] = []
    op.status.subscribe(seen.append)
    return seen


def fails_first(times: int) -> Callable[[Observable[Batch]], Observable[Batch]]:
    """An upstream stage that fails at the first 'x' of its first ``times`` subscriptions."""
    count = 0

    def op(source: Observable[Batch]) -> Observable[Batch]:
        def subscribe(
            observer: abc.ObserverBase[Batch], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            nonlocal count
            count += 1
            failing = count <= times

            def on_next(batch: Batch) -> None:
                if failing and "x" in batch.values:
                    batch.end_all()
                    observer.on_error(ConnectionError("lost at x"))
                else:
                    observer.on_next(batch)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return rx.create(subscribe)

    return op


def test_resubscribes_after_each_delay_then_gives_up_with_the_error() -> None:
    op = retry(fixed(2, max_attempts=3))
    seen = watch(op)
    run = assert_marbles(op, "-a-#", "-a----a----a-#", error=DOWN)
    assert run.subscriptions == [(0, 3), (5, 8), (10, 13)]
    errors = [n.value for n in run.notifications if n.kind == "E"]
    assert errors == [DOWN], "the upstream's own error goes on, unchanged"
    assert [(s.kind, s.attempt, s.delay) for s in seen] == [
        ("retrying", 1, 0.002),
        ("retrying", 2, 0.002),
        ("gave_up", 3, None),
    ]
    assert seen[-1].reason == "max_attempts"
    assert seen[-1].error is DOWN
    assert seen[1].elapsed == pytest.approx(0.005)  # counted from the run's first failure


def test_values_and_completion_pass_through() -> None:
    run = assert_marbles(retry(fixed(2)), "-a-b-|", "-a-b-|")
    assert run.subscriptions == [(0, 5)]
    assert run.ctx.stage("retry").as_dict()["out"] == 2


def test_delays_grow_and_are_capped() -> None:
    op = retry(Backoff(initial=0.002, factor=2, max_delay=0.005, jitter="none", max_attempts=5))
    seen = watch(op)
    run = run_marbles(op, "#", error=DOWN)
    assert [s.delay for s in seen if s.kind == "retrying"] == [0.002, 0.004, 0.005, 0.005]
    assert [sub for sub, _ in run.subscriptions] == [0, 2, 6, 11, 16]


def test_recovers_when_a_resubscription_works() -> None:
    op = retry(fixed(2, max_attempts=3))
    seen = watch(op)
    run = assert_marbles(
        lambda source: fails_first(1)(source).pipe(op),
        "-a-x-b-|",
        "-a----a-x-b-|",
    )
    assert len(run.subscriptions) == 2
    assert [s.kind for s in seen] == ["retrying"]
    assert run.ctx.stage("retry").extra["retries"] == 1


def test_an_error_not_worth_retrying_goes_on_at_once() -> None:
    op = retry(Backoff(initial=0.002, retry_on=(ConnectionError,)))
    seen = watch(op)
    run = assert_marbles(op, "-a-#", "-a-#", error=ValueError("bad frame"))
    assert len(run.subscriptions) == 1
    assert [(s.kind, s.reason) for s in seen] == [("gave_up", "not retryable")]


def test_gives_up_rather_than_wait_past_max_elapsed() -> None:
    op = retry(fixed(2, max_attempts=None, max_elapsed=0.010))
    seen = watch(op)
    run = assert_marbles(op, "-#", "----------#", error=DOWN)
    # subscribed at 0, 3, 6, 9 (each fails a frame later); at 10 the next wait
    # would end at 12, past 10 ms after the first failure (at 1)
    assert [sub for sub, _ in run.subscriptions] == [0, 3, 6, 9]
    assert seen[-1].kind == "gave_up"
    assert seen[-1].reason == "max_elapsed"
    assert all(s.elapsed + s.delay <= 0.010 + 1e-9 for s in seen if s.delay is not None)


def test_a_stable_period_resets_the_attempts() -> None:
    # each subscription fails 11 ms after it started
    policy = Backoff(initial=0.002, factor=2, jitter="none", max_attempts=2)
    without = retry(policy)
    # fails at 11, resubscribes 2 ms later at 13, fails at 24 and gives up
    run = assert_marbles(without, "- 10ms #", "- 10ms --- 10ms #", error=DOWN)
    assert run.subscriptions == [(0, 11), (13, 24)]

    with_reset = retry(policy, reset_after=0.005)
    seen = watch(with_reset)
    run = run_marbles(with_reset, "- 10ms #", error=DOWN, horizon=100)
    assert not [n for n in run.notifications if n.kind == "E"], "it never gives up"
    kinds = [s.kind for s in seen]
    assert kinds[:5] == ["retrying", "reset", "retrying", "reset", "retrying"]
    # after each reset the run starts again at attempt 1, with the initial delay
    assert {(s.attempt, s.delay) for s in seen if s.kind == "retrying"} == {(1, 0.002)}


def test_a_failure_before_the_stable_period_keeps_counting() -> None:
    policy = Backoff(initial=0.002, factor=1, jitter="none", max_attempts=3)
    op = retry(policy, reset_after=0.005)
    seen = watch(op)
    assert_marbles(op, "-a-#", "-a----a----a-#", error=DOWN)
    assert "reset" not in [s.kind for s in seen]


def test_unsubscribing_during_a_delay_cancels_the_resubscription() -> None:
    run = run_marbles(retry(fixed(5)), "-a-#", error=DOWN, unsubscribe=6)
    assert [n.value for n in run.notifications] == ["a"]
    assert run.subscriptions == [(0, 3)]


def test_disposal_while_subscribed_unsubscribes_upstream() -> None:
    assert_marbles(retry(fixed(2)), "-a-b-c-|", "-a-b", unsubscribe="^---!", subscriptions="^---!")


def test_a_status_subscriber_that_raises_does_not_break_the_stream() -> None:
    op = retry(fixed(2, max_attempts=2))

    def boom(_: RetryStatus) -> None:
        raise RuntimeError("bad subscriber")

    op.status.subscribe(boom)
    assert_marbles(op, "-a-#", "-a----a-#", error=DOWN)


def test_named_keeps_the_status_stream() -> None:
    op = retry(fixed(2, max_attempts=2))
    seen = watch(op)
    assert_marbles(op.named("feed"), "#", "--#", error=DOWN)
    assert {s.stage for s in seen} == {"feed"}


def test_bad_arguments_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="retry: backoff must be a Backoff"):
        retry(0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="retry: reset_after"):
        retry(Backoff(), reset_after=0)


def test_without_a_scheduler_subscribing_fails_clearly() -> None:
    errors: list[Exception] = []
    rx.empty().pipe(retry(Backoff(), name="feed")).subscribe(on_error=errors.append)
    assert len(errors) == 1
    assert isinstance(errors[0], ConfigurationError)
    assert "retry 'feed' needs a scheduler" in str(errors[0])


async def test_runs_on_the_asyncio_scheduler() -> None:
    """The same operator on the pipeline's scheduler: real (tiny) delays on the loop."""
    loop = asyncio.get_running_loop()
    ctx = PipelineContext("p")
    flow = Flow("s", capacity=100)
    subscriptions = 0

    def subscribe(
        observer: abc.ObserverBase[Batch], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        nonlocal subscriptions
        subscriptions += 1
        flow.try_acquire(1)
        observer.on_next(Batch([subscriptions], ctx=ctx, source="s", time=0, ticket=flow.ticket(1)))
        if subscriptions < 3:
            observer.on_error(DOWN)
        else:
            observer.on_completed()
        return CompositeDisposable(Disposable())

    got: list[int] = []
    done = loop.create_future()
    rx.create(subscribe).pipe(retry(Backoff(initial=0.001, max_attempts=5))).subscribe(
        lambda b: (got.extend(b.values), b.end_all()),
        done.set_exception,
        lambda: done.set_result(None),
        scheduler=AsyncIOScheduler(loop),
    )
    await asyncio.wait_for(done, 10)
    assert got == [1, 2, 3]
    assert flow.pending == 0


@given(
    initial_ms=st.integers(0, 20),
    factor=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    cap_ms=st.integers(0, 40),
    jitter=st.sampled_from(["none", "full", "equal"]),
    max_attempts=st.integers(1, 6),
    max_elapsed_ms=st.none() | st.integers(0, 60),
    seed=st.integers(0, 2**16),
)
def test_delays_stay_in_bounds_and_attempts_never_exceed_the_maximum(
    initial_ms: int,
    factor: float,
    cap_ms: int,
    jitter: Any,
    max_attempts: int,
    max_elapsed_ms: int | None,
    seed: int,
) -> None:
    policy = Backoff(
        initial=initial_ms * VIRTUAL_MS,
        factor=factor,
        max_delay=max(cap_ms, initial_ms) * VIRTUAL_MS,
        jitter=jitter,
        max_attempts=max_attempts,
        max_elapsed=None if max_elapsed_ms is None else max_elapsed_ms * VIRTUAL_MS,
    )
    op = retry(policy, rng=random.Random(seed))
    seen = watch(op)
    run = run_marbles(op, "-a-#", error=DOWN, horizon=1000)

    assert 1 <= len(run.subscriptions) <= max_attempts
    retries = [s for s in seen if s.kind == "retrying"]
    assert len(retries) == len(run.subscriptions) - 1
    assert [s.attempt for s in seen] == list(range(1, len(seen) + 1))
    for s in retries:
        assert s.delay is not None
        base = policy.base_delay(s.attempt)
        low = {"none": base, "full": 0.0, "equal": base / 2}[jitter]
        assert low - 1e-12 <= s.delay <= base + 1e-12
        if policy.max_elapsed is not None:
            assert s.elapsed + s.delay <= policy.max_elapsed + 1e-12
    # each resubscription happens its delay after the failure (to the frame)
    for s, (sub, _) in zip(retries, run.subscriptions[1:], strict=True):
        assert s.delay is not None
        assert abs(sub * VIRTUAL_MS - (s.time + s.delay)) <= VIRTUAL_MS
    # after exhaustion the error propagates, once, and the status says why
    assert [n.value for n in run.notifications if n.kind == "E"] == [DOWN]
    assert seen[-1].kind == "gave_up"
    assert run.values == ["a"] * len(run.subscriptions)
    assert run.flow.pending == 0
