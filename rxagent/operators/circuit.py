"""The circuit-breaker operator: fail events fast while what they call is down.

:func:`circuit_breaker` guards a function over values (or an inner operator)
with a :class:`~rxagent.circuit.CircuitBreaker` (the pure state machine, in
:mod:`rxagent.circuit` so sources and sinks use it without importing
operators; re-exported here). While the circuit is open, events are *failed
fast*: sent to dead letters with the reason (``circuit 'x' open until ...``)
and counted in the stage's ``extra["rejected"]``, instead of waiting on
something known to be down. Each rejection is also recorded per event key in
the pipeline's ``ctx.suppressions`` (reason ``"circuit_open"``, eligible at
``open_until``). Every transition is streamed on the operator's ``state``
observable. The breaker is driven with the pipeline's clock (the stage's
scheduler, else the batch's context) unless it has a ``clock`` of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import reactivex as rx
from reactivex import Observable, abc
from reactivex.disposable import SerialDisposable
from reactivex.subject import Subject

from ..circuit import CircuitBreaker, CircuitOpenError, CircuitState, CircuitTransition
from ..clock import scheduler_clock
from ..events import Batch
from ..exceptions import ConfigurationError
from .base import BatchHandler, Emit, Operator, batch_stage
from .toolkit import bump, publish

if TYPE_CHECKING:
    from ..context import StageMetrics

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitOperator",
    "CircuitState",
    "CircuitTransition",
    "circuit_breaker",
]


class CircuitOperator(Operator):
    """The :func:`circuit_breaker` operator: :attr:`breaker` is its state machine,
    :attr:`state` streams its transitions."""

    __slots__ = ("breaker", "state")

    def __init__(
        self,
        build: Callable[[str, Observable[Batch]], Observable[Batch]],
        name: str | None,
        breaker: CircuitBreaker,
        state: Subject[CircuitTransition],
    ) -> None:
        super().__init__("circuit_breaker", build, name)
        self.breaker = breaker
        #: The breaker's transitions; never completes (the breaker outlives streams).
        self.state: Subject[CircuitTransition] = state

    def named(self, name: str) -> CircuitOperator:
        return CircuitOperator(self._build, name, self.breaker, self.state)


class _Circuit(BatchHandler):
    """One subscription of a circuit-breaker stage: calls ``fn`` on each row, or
    lets rows into the inner stage (``inner_stage``), while ``breaker`` allows;
    rejects the others to dead letters. Turns an open circuit half-open on a
    timer, so the breaker's state stream says when."""

    def __init__(
        self,
        stage: str,
        breaker: CircuitBreaker,
        fn: Callable[[Any], Any] | None,
        inner_stage: str | None,
        observer: abc.ObserverBase[Batch],
        sched: abc.SchedulerBase | None,
    ) -> None:
        self.stage = stage
        self.breaker = breaker
        self.fn = fn
        self.inner_stage = inner_stage
        self.observer = observer
        self.sched = sched
        self.clock = None if sched is None else scheduler_clock(sched)
        self.timer = SerialDisposable()
        self.unlisten = breaker.on_transition(self._on_transition)

    def now(self, batch: Batch | None = None) -> float:
        if self.breaker.clock is not None:
            return self.breaker.clock()
        if self.clock is not None:
            return self.clock()
        if batch is not None:
            return batch.ctx.now()
        return self.breaker.now()  # not reached: timers run only with a scheduler

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        now = self.now(batch)
        if self.fn is not None:
            self._calls(batch, emit, now, self.fn)
        else:
            self._gate(batch, emit, now)

    def _metrics(self, batch: Batch) -> StageMetrics:
        return batch.ctx.stage(self.stage)

    def _reject(self, batch: Batch, rows: range, now: float) -> None:
        ctx = batch.ctx
        stage = self.stage
        bump(ctx.stage(stage), "rejected", len(rows))
        error = self.breaker.rejection(now)
        # "why didn't it fire?": per key, until the circuit lets trials through
        keys = batch.keys
        per_key: dict[Any, int] = {}
        for i in rows:
            k = None if keys is None else keys[i]
            per_key[k] = per_key.get(k, 0) + 1
        for k, count in per_key.items():
            ctx.suppressions.record(
                stage, k, "circuit_open", at=now, until=error.open_until, count=count
            )
        for i in rows:
            ctx.dead_letter(batch.event(i, take=True), stage, error)

    def _failed(self, batch: Batch, i: int, error: Exception, now: float) -> None:
        self.breaker.record_failure(now, error)
        bump(self._metrics(batch), "failures")
        batch.ctx.dead_letter(batch.event(i, take=True), self.stage, error)

    def _calls(self, batch: Batch, emit: Emit, now: float, fn: Callable[[Any], Any]) -> None:
        """Call ``fn`` once per row, in order, as long as the circuit allows."""
        breaker = self.breaker
        values = batch.values
        n = len(values)
        results: list[Any] = []
        keep: list[int] | None = None  # None while every row so far succeeded
        i = 0
        while i < n:
            current = breaker.current(now)
            if current is CircuitState.CLOSED:
                done = len(results)
                try:
                    # extend keeps what was appended before a raise: one call
                    # per row, the loop in C
                    results.extend(map(fn, values if i == 0 else values[i:]))
                except Exception as error:
                    j = i + len(results) - done
                    if keep is not None:
                        keep.extend(range(i, j))
                    else:
                        keep = list(range(j))
                    if j > i:
                        breaker.record_success(now, j - i)
                    self._failed(batch, j, error, now)
                    i = j + 1
                    continue
                if keep is not None:
                    keep.extend(range(i, n))
                breaker.record_success(now, n - i)
                break
            if keep is None:
                keep = list(range(i))
            if current is CircuitState.OPEN:
                self._reject(batch, range(i, n), now)
                break
            self._trial(batch, i, now, fn, results, keep)
            i += 1
        if not results:
            return
        out = batch if keep is None else batch.take(keep)
        self._metrics(batch).events_out += len(results)
        emit(out.with_values(results))

    def _trial(
        self,
        batch: Batch,
        i: int,
        now: float,
        fn: Callable[[Any], Any],
        results: list[Any],
        keep: list[int],
    ) -> None:
        """Half-open: row ``i`` is a trial call if the breaker allows one, else rejected."""
        breaker = self.breaker
        if not breaker.allow(now):
            self._reject(batch, range(i, i + 1), now)
            return
        try:
            result = fn(batch.values[i])
        except Exception as error:
            self._failed(batch, i, error, now)
        else:
            breaker.record_success(now)
            results.append(result)
            keep.append(i)

    def _gate(self, batch: Batch, emit: Emit, now: float) -> None:
        """Let rows into the inner stage as long as the circuit allows."""
        breaker = self.breaker
        n = len(batch.values)
        i = 0
        while i < n:
            current = breaker.current(now)
            if current is CircuitState.CLOSED:
                self._into(batch if i == 0 else batch.take(range(i, n)), emit, now)
                return
            if current is CircuitState.OPEN:
                self._reject(batch, range(i, n), now)
                return
            if breaker.allow(now):
                self._into(batch.take([i]), emit, now)
            else:
                self._reject(batch, range(i, i + 1), now)
            i += 1

    def _into(self, part: Batch, emit: Emit, now: float) -> None:
        assert self.inner_stage is not None
        inner_metrics = part.ctx.stage(self.inner_stage)
        before = inner_metrics.dead_lettered
        n = len(part.values)
        self._metrics(part).events_out += n
        emit(part)
        failed = min(n, inner_metrics.dead_lettered - before)
        # the order of successes and failures within a batch is not known:
        # count the failures last, so a failing batch can open the circuit
        if n > failed:
            self.breaker.record_success(now, n - failed)
        if failed:
            bump(self._metrics(part), "failures", failed)
            self.breaker.record_failure(now, inner_metrics.last_error, failed)

    # -- timer: open -> half-open on time, so the state stream says when ----

    def _on_transition(self, change: CircuitTransition) -> None:
        until = change.open_until
        sched = self.sched
        if change.new is not CircuitState.OPEN or until is None or sched is None:
            return
        self.timer.disposable = sched.schedule_relative(
            max(0.0, until - change.time), self._on_timer, until
        )

    def _on_timer(self, _s: abc.SchedulerBase, until: float | None = None) -> None:
        try:
            # the timer is for ``until``: a clock rounded a hair short still counts
            self.breaker.current(max(self.now(), until or 0.0))
        except Exception as error:  # never raise into the loop
            self.observer.on_error(error)

    def dispose(self) -> None:
        self.unlisten()
        self.timer.dispose()


def _failing_inner(
    guarded: Observable[Batch], breaker: CircuitBreaker, scheduler: abc.SchedulerBase | None
) -> Observable[Batch]:
    """``guarded`` (the gate and the inner stage), where an error on the inner
    stage's stream is also a failure of what the circuit guards."""

    def subscribe(
        observer: abc.ObserverBase[Batch], at_subscribe: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        sched = scheduler if scheduler is not None else at_subscribe
        clock = None if sched is None else scheduler_clock(sched)

        def on_error(error: Exception) -> None:
            if breaker.clock is not None or clock is None:
                breaker.record_failure(None, error)
            else:
                breaker.record_failure(clock(), error)
            observer.on_error(error)

        return guarded.subscribe(
            observer.on_next, on_error, observer.on_completed, scheduler=at_subscribe
        )

    return rx.create(subscribe)


def circuit_breaker(
    call: Callable[[Any], Any] | Operator,
    *,
    failure_threshold: int | None = None,
    reset_timeout: float | None = None,
    success_threshold: int | None = None,
    breaker: CircuitBreaker | None = None,
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> CircuitOperator:
    """Guard ``call`` with a circuit breaker; while open, fail events fast to dead letters.

    ``call`` is either a function of the value, whose result replaces the value
    (as in ``map``; a raising call dead-letters its event and counts as a
    failure), or an rxagent :class:`~rxagent.operators.Operator` (an inner stage:
    its dead letters while it handles a batch count as failures, the rest of the
    batch as successes, and an error on its stream as a failure).

    The breaker is ``breaker`` (share one with a tool sink or another stage), or
    a new :class:`CircuitBreaker` named after the stage with ``failure_threshold``
    (default 5), ``reset_timeout`` seconds (default 30) and ``success_threshold``
    (default 1). Time is the breaker's own clock if it has one, else
    ``scheduler``'s (default: the one the stream is subscribed with); an open
    circuit turns half-open on a timer at ``open_until``, so the ``state``
    stream tells when. Rejected events count in ``extra["rejected"]``, failed
    calls in ``extra["failures"]``.

    ::

        -a-b-c-d-------e-|   circuit_breaker(fetch, failure_threshold=2, reset_timeout=0.005)
        ---------------x-|   fetch fails on a and b: c and d are rejected; e is a trial

    Args:
        call: a function of the value whose result replaces the value, or an
            rxagent operator run as an inner stage.
        failure_threshold: failures in a row that open the circuit (default 5;
            only with a new breaker, not with ``breaker``).
        reset_timeout: seconds an open circuit waits before letting a trial
            call through (default 30; only with a new breaker).
        success_threshold: successful trial calls that close a half-open
            circuit (default 1; only with a new breaker).
        breaker: an existing :class:`CircuitBreaker` to share (with a tool sink
            or another stage); default: a new one named after the stage.
        scheduler: the clock when the breaker has none, and where the half-open
            timer runs (default: the one the stream is subscribed with).
        name: the stage's name in status, metrics and dead letters (default:
            ``circuit_breaker``, numbered when a pipeline has several: ``circuit_breaker#2``).
    """
    if breaker is not None:
        if not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(
                f"circuit_breaker: breaker must be a CircuitBreaker, got {breaker!r}"
            )
        given = [
            label
            for label, v in (
                ("failure_threshold", failure_threshold),
                ("reset_timeout", reset_timeout),
                ("success_threshold", success_threshold),
            )
            if v is not None
        ]
        if given:
            raise ConfigurationError(
                f"circuit_breaker: {', '.join(given)} belong to the CircuitBreaker when "
                "breaker= is given; set them there"
            )
    else:
        breaker = CircuitBreaker(
            name or "circuit_breaker",
            failure_threshold=5 if failure_threshold is None else failure_threshold,
            reset_timeout=30.0 if reset_timeout is None else reset_timeout,
            success_threshold=1 if success_threshold is None else success_threshold,
        )
    if not callable(call):
        raise ConfigurationError(
            f"circuit_breaker: call must be a function of the value or an Operator, got {call!r}"
        )
    the_breaker = breaker
    state: Subject[CircuitTransition] = Subject()
    the_breaker.on_transition(lambda change: publish(state, change, the_breaker.name))
    inner = call if isinstance(call, Operator) else None
    fn = None if isinstance(call, Operator) else call

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        inner_stage = None if inner is None else f"{stage}.{inner.name or inner.kind}"

        def make(
            observer: abc.ObserverBase[Batch], at_subscribe: abc.SchedulerBase | None
        ) -> _Circuit:
            sched = scheduler if scheduler is not None else at_subscribe
            return _Circuit(stage, the_breaker, fn, inner_stage, observer, sched)

        gated = batch_stage(source, make, stage)
        if inner is None:
            return gated
        guarded = inner.named(inner_stage or stage)(gated)
        return _failing_inner(guarded, the_breaker, scheduler)

    return CircuitOperator(build, name, the_breaker, state)
