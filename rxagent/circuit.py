"""The circuit breaker's state machine: stop calling what keeps failing, try again after a while.

:class:`CircuitBreaker` is pure (closed, open, half-open, with failure counting
and a reset timeout on a clock). It never sleeps and knows nothing of Rx, so
operators (:func:`rxagent.operators.circuit_breaker`), sources (the WebSocket
source's reconnects) and sinks (the tool sink's ``breaker``) hold one alike and
ask ``allow()`` before each call, then report ``record_success()`` or
``record_failure()``. It lives below all three so none of them imports another.

The states::

    closed ──(failure_threshold failures in a row)──► open
    open ──(reset_timeout passed)──► half-open
    half-open ──(success_threshold successes)──► closed
    half-open ──(a failure)──► open (for another reset_timeout)

Every transition is a :class:`CircuitTransition`, given to the breaker's
listeners. Times are the clock of whoever drives the breaker: pipeline pieces
pass ``now`` from the pipeline's clock (docs/architecture.md Decision 8).
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

from .clock import snap
from .exceptions import ConfigurationError, RxAgentError

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CircuitTransition",
    "Listener",
    "error_text",
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


def error_text(error: BaseException | str | None) -> str | None:
    """An error as the one line breakers and transitions keep (``KeyError: 'x'``); a string or None
    as it is."""
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

    Args:
        name: names the breaker in status, logs and rejections.
        failure_threshold: failures in a row that open a closed circuit (default 5).
        reset_timeout: seconds an open circuit stays open before it lets trial calls
            through (half-open; default 30).
        success_threshold: successes in a row, while half-open, that close it
            (default 1).
        half_open_max_calls: trial calls allowed at once while half-open (default 1).
        clock: seconds, for methods called without ``now`` (default
            :func:`time.time`, the wall clock a pipeline reads on the asyncio
            scheduler). Everyone sharing a breaker must use one clock: rxagent's
            operator, sources and sinks pass ``now`` from the pipeline's clock
            (virtual under a ``TestScheduler``) unless ``clock`` is set.
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
        #: The clock used when a method gets no ``now``; ``None`` means wall time.
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

    def now(self) -> float:
        """The breaker's clock: ``clock()``, or wall time when it has none."""
        return self._now(None)

    def _now(self, now: float | None) -> float:
        if now is not None:
            return now
        # outside a pipeline (no ``now``, no clock): the wall clock, which is what
        # a pipeline on the asyncio scheduler reads too (Decision 8)
        return (self.clock or time.time)()

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
            self._last_error = error_text(error)
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
            self._last_error = error_text(error)
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
