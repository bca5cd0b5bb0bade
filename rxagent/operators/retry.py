"""Retry: resubscribe a failed upstream after the delays of a :class:`~rxagent.backoff.Backoff`.

``retry(backoff)`` passes batches through untouched. When the upstream fails
(``on_error``), it asks the backoff whether and when to try again, waits that
long *on the scheduler* (virtual time in tests, the asyncio loop in a pipeline)
and subscribes to the upstream again. When the backoff gives up, the error goes
on downstream, unchanged.

Every decision is published on :attr:`RetryOperator.status`, an Rx observable of
:class:`RetryStatus` records: each retry with its attempt number and delay, the
giving up with its reason, and the reset after a stable period.

What to retry: upstreams that connect on subscribe (a feed written as an
observable, a cold replay), or stages that fail on a bad batch and start clean.
A pipeline's own source is a hot subject: what it emits while nothing is
subscribed (during a delay) reaches nobody, so sources reconnect with their own
backoff instead.

Time is counted for a *run* of failures: ``max_elapsed`` counts from the first
failure of the run (not from the first subscription: a stream runs for hours
before it fails, and that says nothing about how long to keep retrying), and
with ``reset_after`` a resubscription that stays up that long ends the run, so
the next failure starts again at attempt 1 with the initial delay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import reactivex as rx
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SerialDisposable
from reactivex.subject import Subject

from ..backoff import Backoff
from ..clock import scheduler_clock, snap
from ..events import Batch
from ..exceptions import ConfigurationError
from .base import Operator
from .toolkit import publish, require_scheduler

if TYPE_CHECKING:
    from ..context import PipelineContext

# ``publish`` and ``require_scheduler`` live in the toolkit; re-exported for old imports.
__all__ = ["RetryKind", "RetryOperator", "RetryStatus", "publish", "require_scheduler", "retry"]

#: What a :class:`RetryStatus` reports.
RetryKind: TypeAlias = Literal["retrying", "gave_up", "reset"]


@dataclass(frozen=True, slots=True)
class RetryStatus:
    """One decision of a retry stage.

    - ``"retrying"``: subscription number ``attempt`` failed with ``error``; the
      next one starts after ``delay`` seconds.
    - ``"gave_up"``: subscription ``attempt`` failed and the error goes on
      downstream; ``reason`` is ``"not retryable"``, ``"max_attempts"`` or
      ``"max_elapsed"``.
    - ``"reset"``: subscription ``attempt`` stayed up ``reset_after`` seconds; the
      next failure counts as attempt 1 again.

    ``elapsed`` is the time since the run's first failure, ``time`` the
    scheduler's clock (seconds) when the decision was made.
    """

    stage: str
    kind: RetryKind
    attempt: int
    delay: float | None = None
    error: BaseException | None = None
    elapsed: float = 0.0
    time: float = 0.0
    reason: str | None = None


class RetryOperator(Operator):
    """The :func:`retry` operator; :attr:`status` streams its decisions."""

    __slots__ = ("backoff", "status")

    def __init__(
        self,
        build: Callable[[str, Observable[Batch]], Observable[Batch]],
        name: str | None,
        backoff: Backoff,
        status: Subject[RetryStatus],
    ) -> None:
        super().__init__("retry", build, name)
        self.backoff = backoff
        #: Every retry decision of every subscription of this operator. It never
        #: completes: the operator may be subscribed again.
        self.status: Subject[RetryStatus] = status

    def named(self, name: str) -> RetryOperator:
        return RetryOperator(self._build, name, self.backoff, self.status)


def retry(
    backoff: Backoff,
    *,
    reset_after: float | None = None,
    rng: random.Random | None = None,
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> RetryOperator:
    """Resubscribe the upstream when it fails, after the delays of ``backoff``.

    ``backoff`` decides everything: the delays (``initial``, ``factor``,
    ``max_delay``, ``jitter``), when to give up (``max_attempts`` counts
    subscriptions, the first included; ``max_elapsed`` seconds since the run's
    first failure) and which errors are worth it (``retry_on``). Once it gives
    up, the upstream's error goes on downstream. ``reset_after`` seconds without
    an error after a resubscription end the run of failures (by default a run
    never ends). ``rng`` makes the jitter reproducible.

    Delays run on ``scheduler`` (default: the one the stream is subscribed with).
    Decisions are published on the returned operator's ``status`` stream.

    ::

        source, per subscription:  -a-#
        retry(Backoff(initial=0.002, factor=1, jitter="none", max_attempts=3))
        output:                    -a----a----a-#    (1 ms frames)

    Args:
        backoff: the delays between resubscriptions, when to give up
            (``max_attempts``, ``max_elapsed``) and which errors to retry
            (``retry_on``); see :class:`~rxagent.Backoff`.
        reset_after: seconds without an error after a resubscription that end a
            run of failures, so the next failure starts from ``backoff``'s first
            delay again (default None: a run never ends).
        rng: the random source of the jitter (default: one shared by the
            process); give a seeded ``random.Random`` for reproducible delays.
        scheduler: where the delays run (default: the one the stream is
            subscribed with; a test's virtual time).
        name: the stage's name in status, metrics and dead letters (default:
            ``retry``, numbered when a pipeline has several: ``retry#2``).
    """
    if not isinstance(backoff, Backoff):
        raise ConfigurationError(f"retry: backoff must be a Backoff, got {backoff!r}")
    if reset_after is not None and not (math.isfinite(reset_after) and reset_after > 0):
        raise ConfigurationError(
            f"retry: reset_after must be a number of seconds > 0 or None, got {reset_after!r}"
        )
    status: Subject[RetryStatus] = Subject()

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        def subscribe(
            observer: abc.ObserverBase[Batch], at_subscribe: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            sched = require_scheduler("retry", stage, scheduler, at_subscribe)
            upstream = SerialDisposable()
            wait = SerialDisposable()
            stable = SerialDisposable()
            attempt = 1  # the number of the current subscription within the run
            run_start: float | None = None  # clock at the run's first failure
            ctx: PipelineContext | None = None

            now = scheduler_clock(sched)

            def on_next(batch: Batch) -> None:
                nonlocal ctx
                ctx = batch.ctx
                metrics = ctx.stage(stage)
                n = len(batch.values)
                metrics.events_in += n
                metrics.events_out += n
                observer.on_next(batch)

            def on_error(error: Exception) -> None:
                nonlocal attempt, run_start
                stable.disposable = None
                t = now()
                if run_start is None:
                    run_start = t
                elapsed = snap(t - run_start)
                delay = backoff.next_delay(attempt, elapsed, error, rng)
                if ctx is not None:
                    ctx.stage(stage).record_error(error)
                if delay is None:
                    publish(
                        status,
                        RetryStatus(
                            stage, "gave_up", attempt, None, error, elapsed, t, _reason(error)
                        ),
                        stage,
                    )
                    observer.on_error(error)
                    return
                publish(
                    status, RetryStatus(stage, "retrying", attempt, delay, error, elapsed, t), stage
                )
                if ctx is not None:
                    extra = ctx.stage(stage).extra
                    extra["retries"] = extra.get("retries", 0) + 1
                attempt += 1
                wait.disposable = sched.schedule_relative(delay, resubscribe)

            def _reason(error: Exception) -> str:
                if not backoff.retryable(error):
                    return "not retryable"
                if backoff.max_attempts is not None and attempt >= backoff.max_attempts:
                    return "max_attempts"
                return "max_elapsed"

            def on_stable(_s: abc.SchedulerBase, _state: Any = None) -> None:
                nonlocal attempt, run_start
                publish(status, RetryStatus(stage, "reset", attempt, time=now()), stage)
                attempt = 1
                run_start = None

            def connect() -> None:
                # the stable-period timer first: an upstream that fails while being
                # subscribed cancels it in on_error
                if reset_after is not None and attempt > 1:
                    stable.disposable = sched.schedule_relative(reset_after, on_stable)
                upstream.disposable = source.subscribe(
                    on_next, on_error, observer.on_completed, scheduler=sched
                )

            def resubscribe(_s: abc.SchedulerBase, _state: Any = None) -> None:
                try:
                    connect()
                except Exception as error:  # a timer callback never raises into the loop
                    observer.on_error(error)

            connect()
            return CompositeDisposable(upstream, wait, stable)

        return rx.create(subscribe)

    return RetryOperator(build, name, backoff, status)
