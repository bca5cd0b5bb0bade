"""Circuit breaker: stop calling what keeps failing, try again after a while.

Two parts, as everywhere in rxagent where time meets decisions:

- :class:`CircuitBreaker` is the pure state machine (closed, open, half-open),
  with failure counting and a reset timeout on a clock. It never sleeps and
  knows nothing of Rx: the tool sink, a reconnecting source or your own code can
  hold one and ask ``allow()`` before each call, then report
  ``record_success()`` or ``record_failure()``.
- :func:`circuit_breaker` is the operator: it guards a function over values (or
  an inner operator) with a breaker. While the circuit is open, events are
  *failed fast*: sent to dead letters with the reason (``circuit 'x' open until
  ...``) and counted in the stage's ``extra["rejected"]``, instead of waiting on
  something known to be down. Each rejection is also recorded per event key in
  the pipeline's ``ctx.suppressions`` (reason ``"circuit_open"``, eligible at
  ``open_until``).

The states::

    closed ──(failure_threshold failures in a row)──► open
    open ──(reset_timeout passed)──► half-open
    half-open ──(success_threshold successes)──► closed
    half-open ──(a failure)──► open (for another reset_timeout)

Every transition is a :class:`CircuitTransition`, given to the breaker's
listeners and streamed on the operator's ``state`` observable.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import reactivex as rx
from reactivex import Observable, abc
from reactivex.disposable import SerialDisposable
from reactivex.subject import Subject

from ..clock import scheduler_clock, snap
from ..events import Batch
from ..exceptions import ConfigurationError, RxAgentError
from .base import BatchHandler, Emit, Operator, batch_stage
from .retry import publish

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitOperator",
    "CircuitState",
    "CircuitTransition",
    "circuit_breaker",
]

log = logging.getLogger("rxagent")


class CircuitState(enum.StrEnum):
    """Where a circuit is."""

    CLOSED = "closed"  # calls go through; failures are counted
    OPEN = "open"  # calls fail fast until the reset timeout passes
    HALF_OPEN = "half_open"  # a few trial calls decide: closed again, or open again


@dataclass(frozen=True, slots=True)
class CircuitTransition:
    """A circuit changed state at ``time`` (its clock's seconds).

    ``failures`` is the count of failures in a row at that moment, ``open_until``
    when an open circuit lets trial calls through (``None`` unless ``new`` is
    open) and ``error`` the last failure (``"Type: message"``), if any.
    """

    circuit: str
    old: CircuitState
    new: CircuitState
    time: float
    failures: int = 0
    open_until: float | None = None
    error: str | None = None


class CircuitOpenError(RxAgentError):
    """A call was not made: its circuit is open. Carries ``circuit`` and ``open_until``."""

    def __init__(self, message: str, *, circuit: str, open_until: float | None) -> None:
        super().__init__(message)
        self.circuit = circuit
        self.open_until = open_until


Listener = Callable[[CircuitTransition], None]


def _error_text(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}"


def _clock_text(t: float) -> str:
    # Wall clocks (the pipeline's scheduler) read as dates; monotonic and virtual
    # clocks do not mean anything as a date, so they stay seconds.
    if t > 1e9:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
    return f"t={t:.3f}s"


class CircuitBreaker:
    """The circuit-breaker state machine: pure, driven by the times it is given.

    - ``failure_threshold``: failures in a row that open a closed circuit.
    - ``reset_timeout``: seconds an open circuit stays open before it lets
      trial calls through (half-open).
    - ``success_threshold``: successes in a row, while half-open, that close it.
    - ``half_open_max_calls``: trial calls allowed at once while half-open.
    - ``clock``: seconds, for methods called without ``now`` (default
      :func:`time.monotonic`). Everyone sharing a breaker must use one clock.

    Usage around any call::

        breaker = CircuitBreaker("quotes-api", failure_threshold=3, reset_timeout=10)
        if not breaker.allow():
            raise breaker.rejection()
        try:
            result = fetch()
        except Exception as error:
            breaker.record_failure(error=error)
            raise
        breaker.record_success()

    A call allowed while closed that reports while half-open counts as a trial's
    result: the breaker does not tell calls apart. Listeners (``on_transition``)
    are called synchronously; one that raises is logged and skipped.
    """

    __slots__ = (
        "_failures",
        "_last_error",
        "_listeners",
        "_open_until",
        "_state",
        "_successes",
        "_trials",
        "clock",
        "failure_threshold",
        "half_open_max_calls",
        "name",
        "reset_timeout",
        "success_threshold",
    )

    def __init__(
        self,
        name: str = "circuit",
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        success_threshold: int = 1,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        where = f"CircuitBreaker {name!r}"
        for label, count in (
            ("failure_threshold", failure_threshold),
            ("success_threshold", success_threshold),
            ("half_open_max_calls", half_open_max_calls),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(f"{where}: {label} must be an int >= 1, got {count!r}")
        if isinstance(reset_timeout, bool) or not (
            isinstance(reset_timeout, int | float)
            and math.isfinite(reset_timeout)
            and reset_timeout >= 0
        ):
            raise ConfigurationError(
                f"{where}: reset_timeout must be a number of seconds >= 0, got {reset_timeout!r}"
            )
        if clock is not None and not callable(clock):
            raise ConfigurationError(f"{where}: clock must be a callable, got {clock!r}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.success_threshold = success_threshold
        self.half_open_max_calls = half_open_max_calls
        #: The clock used when a method gets no ``now``; ``None`` means monotonic.
        self.clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0  # in a row
        self._successes = 0  # in a row, while half-open
        self._trials = 0  # trial calls in flight, while half-open
        self._open_until: float | None = None
        self._last_error: str | None = None
        self._listeners: list[Listener] = []

    # -- reading --------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The state as of the last call; :meth:`current` also applies the timeout."""
        return self._state

    @property
    def failures(self) -> int:
        """Failures in a row (reset by a success)."""
        return self._failures

    @property
    def open_until(self) -> float | None:
        """When an open circuit turns half-open; ``None`` unless open."""
        return self._open_until

    def _now(self, now: float | None) -> float:
        if now is not None:
            return now
        return (self.clock or time.monotonic)()

    def current(self, now: float | None = None) -> CircuitState:
        """The state at ``now``: an open circuit whose timeout passed turns half-open."""
        if self._state is CircuitState.OPEN:
            t = self._now(now)
            until = self._open_until
            if until is not None and snap(t) >= until:
                self._successes = 0
                self._trials = 0
                self._move(CircuitState.HALF_OPEN, t)
        return self._state

    # -- deciding -------------------------------------------------------------------

    def allow(self, now: float | None = None) -> bool:
        """Whether to make a call now. While half-open, an allowed call is a trial
        and must be reported with :meth:`record_success`, :meth:`record_failure`
        or :meth:`release`."""
        state = self.current(now)
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        if self._trials < self.half_open_max_calls:
            self._trials += 1
            return True
        return False

    def record_success(self, now: float | None = None, count: int = 1) -> None:
        """``count`` calls succeeded."""
        if count < 1:
            return
        state = self._state
        if state is CircuitState.CLOSED:
            self._failures = 0
        elif state is CircuitState.HALF_OPEN:
            self._trials = max(0, self._trials - count)
            self._successes += count
            if self._successes >= self.success_threshold:
                self._failures = 0
                self._successes = 0
                self._trials = 0
                self._move(CircuitState.CLOSED, self._now(now))
        # while open: a call allowed before the circuit opened; it changes nothing

    def record_failure(
        self, now: float | None = None, error: BaseException | str | None = None, count: int = 1
    ) -> None:
        """``count`` calls failed (``error``: the last one's error, for the record)."""
        if count < 1:
            return
        if error is not None:
            self._last_error = _error_text(error)
        state = self._state
        if state is CircuitState.CLOSED:
            self._failures += count
            if self._failures >= self.failure_threshold:
                self._open(self._now(now))
        elif state is CircuitState.HALF_OPEN:
            self._failures += count
            self._open(self._now(now))
        else:
            self._failures += count

    def release(self, count: int = 1) -> None:
        """``count`` trial calls ended without a verdict (cancelled): free their slots."""
        self._trials = max(0, self._trials - count)

    def trip(self, now: float | None = None, error: BaseException | str | None = None) -> None:
        """Open the circuit now, whatever its state (an operator's kill switch)."""
        if error is not None:
            self._last_error = _error_text(error)
        self._open(self._now(now))

    def reset(self, now: float | None = None) -> None:
        """Close the circuit now and forget the failures."""
        self._failures = 0
        self._successes = 0
        self._trials = 0
        self._open_until = None
        if self._state is not CircuitState.CLOSED:
            self._move(CircuitState.CLOSED, self._now(now))

    def rejection(self, now: float | None = None) -> CircuitOpenError:
        """The error for a call refused while open: says until when, and why."""
        t = self._now(now)
        until = self._open_until
        if until is None:
            when = "until a trial call succeeds"
        else:
            when = f"until {_clock_text(until)} (in {max(0.0, until - t):.3g} s)"
        why = f"after {self._failures} failure(s)"
        if self._last_error:
            why += f"; last: {self._last_error}"
        return CircuitOpenError(
            f"circuit {self.name!r} open {when}, {why}", circuit=self.name, open_until=until
        )

    def _open(self, t: float) -> None:
        self._successes = 0
        self._trials = 0
        self._open_until = snap(t + self.reset_timeout)  # compared at the microsecond
        self._move(CircuitState.OPEN, t)

    # -- watching -------------------------------------------------------------------

    def on_transition(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(transition)`` on every change of state; returns the undo."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _move(self, new: CircuitState, t: float) -> None:
        old = self._state
        self._state = new
        if new is not CircuitState.OPEN:
            self._open_until = None
        if old is new and new is not CircuitState.OPEN:
            return
        change = CircuitTransition(
            self.name, old, new, t, self._failures, self._open_until, self._last_error
        )
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("circuit %r: a transition listener raised", self.name)

    def describe(self) -> dict[str, Any]:
        """A plain dict for status pages and logs."""
        return {
            "name": self.name,
            "state": str(self._state),
            "failures": self._failures,
            "open_until": self._open_until,
            "last_error": self._last_error,
            "failure_threshold": self.failure_threshold,
            "reset_timeout": self.reset_timeout,
            "success_threshold": self.success_threshold,
            "half_open_max_calls": self.half_open_max_calls,
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state}, failures={self._failures})"


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

        class Handler(BatchHandler):
            def __init__(
                self, observer: abc.ObserverBase[Batch], sched: abc.SchedulerBase | None
            ) -> None:
                self.observer = observer
                self.sched = sched
                self.clock = None if sched is None else scheduler_clock(sched)
                self.timer = SerialDisposable()
                self.unlisten = the_breaker.on_transition(self._on_transition)

            def now(self, batch: Batch | None = None) -> float:
                if the_breaker.clock is not None:
                    return the_breaker.clock()
                if self.clock is not None:
                    return self.clock()
                if batch is not None:
                    return batch.ctx.now()
                return time.monotonic()

            def on_batch(self, batch: Batch, emit: Emit) -> None:
                metrics = batch.ctx.stage(stage)
                metrics.events_in += len(batch.values)
                now = self.now(batch)
                if fn is not None:
                    self._calls(batch, emit, now, fn)
                else:
                    self._gate(batch, emit, now)

            def _reject(self, batch: Batch, rows: range, now: float) -> None:
                ctx = batch.ctx
                metrics = ctx.stage(stage)
                extra = metrics.extra
                extra["rejected"] = extra.get("rejected", 0) + len(rows)
                error = the_breaker.rejection(now)
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
                the_breaker.record_failure(now, error)
                extra = batch.ctx.stage(stage).extra
                extra["failures"] = extra.get("failures", 0) + 1
                batch.ctx.dead_letter(batch.event(i, take=True), stage, error)

            def _calls(
                self, batch: Batch, emit: Emit, now: float, fn: Callable[[Any], Any]
            ) -> None:
                """Call ``fn`` once per row, in order, as long as the circuit allows."""
                values = batch.values
                n = len(values)
                results: list[Any] = []
                keep: list[int] | None = None  # None while every row so far succeeded
                i = 0
                while i < n:
                    current = the_breaker.current(now)
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
                                the_breaker.record_success(now, j - i)
                            self._failed(batch, j, error, now)
                            i = j + 1
                            continue
                        if keep is not None:
                            keep.extend(range(i, n))
                        the_breaker.record_success(now, n - i)
                        break
                    if current is CircuitState.OPEN:
                        if keep is None:
                            keep = list(range(i))
                        self._reject(batch, range(i, n), now)
                        break
                    if keep is None:
                        keep = list(range(i))
                    if not the_breaker.allow(now):
                        self._reject(batch, range(i, i + 1), now)
                    else:
                        try:
                            result = fn(values[i])
                        except Exception as error:
                            self._failed(batch, i, error, now)
                        else:
                            the_breaker.record_success(now)
                            results.append(result)
                            keep.append(i)
                    i += 1
                if not results:
                    return
                out = batch if keep is None else batch.take(keep)
                batch.ctx.stage(stage).events_out += len(results)
                emit(out.with_values(results))

            def _gate(self, batch: Batch, emit: Emit, now: float) -> None:
                """Let rows into the inner stage as long as the circuit allows."""
                n = len(batch.values)
                i = 0
                while i < n:
                    current = the_breaker.current(now)
                    if current is CircuitState.CLOSED:
                        self._into(batch if i == 0 else batch.take(range(i, n)), emit, now)
                        return
                    if current is CircuitState.OPEN:
                        self._reject(batch, range(i, n), now)
                        return
                    if the_breaker.allow(now):
                        self._into(batch.take([i]), emit, now)
                    else:
                        self._reject(batch, range(i, i + 1), now)
                    i += 1

            def _into(self, part: Batch, emit: Emit, now: float) -> None:
                assert inner_stage is not None
                inner_metrics = part.ctx.stage(inner_stage)
                before = inner_metrics.dead_lettered
                n = len(part.values)
                part.ctx.stage(stage).events_out += n
                emit(part)
                failed = min(n, inner_metrics.dead_lettered - before)
                # the order of successes and failures within a batch is not known:
                # count the failures last, so a failing batch can open the circuit
                if n > failed:
                    the_breaker.record_success(now, n - failed)
                if failed:
                    extra = part.ctx.stage(stage).extra
                    extra["failures"] = extra.get("failures", 0) + failed
                    the_breaker.record_failure(now, inner_metrics.last_error, failed)

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
                    the_breaker.current(max(self.now(), until or 0.0))
                except Exception as error:  # never raise into the loop
                    self.observer.on_error(error)

            def dispose(self) -> None:
                self.unlisten()
                self.timer.dispose()

        def make(
            observer: abc.ObserverBase[Batch], at_subscribe: abc.SchedulerBase | None
        ) -> Handler:
            return Handler(observer, scheduler if scheduler is not None else at_subscribe)

        gated = batch_stage(source, make)
        if inner is None:
            return gated
        guarded = inner.named(inner_stage or stage)(gated)

        def subscribe(
            observer: abc.ObserverBase[Batch], at_subscribe: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            sched = scheduler if scheduler is not None else at_subscribe
            clock = None if sched is None else scheduler_clock(sched)

            def on_error(error: Exception) -> None:
                # the inner stage's stream failed: a failure of what the circuit guards
                if the_breaker.clock is not None or clock is None:
                    the_breaker.record_failure(None, error)
                else:
                    the_breaker.record_failure(clock(), error)
                observer.on_error(error)

            return guarded.subscribe(
                observer.on_next, on_error, observer.on_completed, scheduler=at_subscribe
            )

        return rx.create(subscribe)

    return CircuitOperator(build, name, the_breaker, state)
