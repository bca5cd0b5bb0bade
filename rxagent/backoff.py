"""Backoff: when to try again after a failure, and when to give up.

A :class:`Backoff` is a pure policy: it computes delays and retry decisions
from the attempt number, the time already spent and the error, and never
sleeps. Whoever retries (the tool activation sink, the retry operator, a
reconnecting source) does the awaiting with ``asyncio.sleep`` on its own
loop. Keeping the decision pure is what lets the tests check the schedule's
promises (delays within bounds, never more attempts than allowed) with
hypothesis instead of with clocks.

Randomness comes from an injectable :class:`random.Random`, so a seeded
generator gives a reproducible schedule. The jitter modes follow the AWS
architecture blog's "Exponential Backoff and Jitter":

- ``"none"``: exactly ``min(max_delay, initial * factor ** (attempt - 1))``;
- ``"full"``: uniform in ``[0, base]`` (spreads retries of many clients best);
- ``"equal"``: uniform in ``[base / 2, base]`` (never retries almost at once).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from .clock import snap
from .exceptions import ConfigurationError

__all__ = ["Backoff", "Jitter"]

Jitter: TypeAlias = Literal["none", "full", "equal"]

_JITTERS: frozenset[str] = frozenset({"none", "full", "equal"})

# One module-level generator for callers that do not care about reproducibility.
_default_rng = random.Random()


@dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential backoff schedule with jitter and limits.

    ``attempt`` counts calls: attempt 1 is the first call, so :meth:`delay` of
    ``n`` is the wait after the ``n``-th call failed, before call ``n + 1``.

    - ``initial``: base delay after the first failure, in seconds.
    - ``factor``: growth of the base delay per failure (``>= 1``).
    - ``max_delay``: cap of any single delay.
    - ``jitter``: ``"none"``, ``"full"`` or ``"equal"`` (see the module docstring).
    - ``max_attempts``: most calls in total, the first included; ``None`` for no limit.
    - ``max_elapsed``: give up rather than wait past this many seconds since the
      first call started; ``None`` for no limit.
    - ``retry_on``: exception types worth retrying; anything else fails at once.

    With neither ``max_attempts`` nor ``max_elapsed`` the schedule never gives up
    on a retryable error: right for a source that must reconnect forever, wrong
    for a tool call that holds an event's credit, so say so explicitly.

    Example::

        policy = Backoff(initial=0.1, factor=2, max_delay=5, max_attempts=4,
                         retry_on=(ConnectionError, TimeoutError))
        list(policy.delays(rng=random.Random(7)))   # three delays, each <= 5 s
    """

    initial: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: Jitter = "full"
    max_attempts: int | None = 3
    max_elapsed: float | None = None
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and self.initial >= 0):
            raise ConfigurationError(
                f"Backoff initial must be a finite delay >= 0, got {self.initial!r}"
            )
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ConfigurationError(
                f"Backoff factor must be >= 1 (delays must not shrink), got {self.factor!r}"
            )
        if not self.max_delay >= self.initial:  # also false for NaN
            raise ConfigurationError(
                f"Backoff max_delay ({self.max_delay!r}) must be >= initial ({self.initial!r})"
            )
        if self.jitter not in _JITTERS:
            raise ConfigurationError(
                f"Backoff jitter must be one of {sorted(_JITTERS)}, got {self.jitter!r}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError(
                "Backoff max_attempts must be >= 1 (the first call counts), "
                f"got {self.max_attempts!r}"
            )
        if self.max_elapsed is not None and not self.max_elapsed >= 0:
            raise ConfigurationError(
                f"Backoff max_elapsed must be >= 0 seconds, got {self.max_elapsed!r}"
            )
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            # accept ``retry_on=ConnectionError`` as a one-element tuple
            retry_on = (retry_on,)
            object.__setattr__(self, "retry_on", retry_on)
        for kind in retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationError(
                    f"Backoff retry_on must hold exception types, got {kind!r}"
                )

    # -- the schedule ------------------------------------------------------------

    def base_delay(self, attempt: int) -> float:
        """The delay after call ``attempt`` failed, before jitter."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        if self.factor == 1 or self.initial == 0:
            return min(self.initial, self.max_delay)
        try:
            grown = self.initial * float(self.factor) ** (attempt - 1)
        except OverflowError:  # far past the cap already
            return self.max_delay
        return min(grown, self.max_delay)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The (jittered) delay after call ``attempt`` failed; pure given ``rng``."""
        base = self.base_delay(attempt)
        if self.jitter == "none":
            return base
        r = (rng if rng is not None else _default_rng).random()  # in [0, 1)
        if self.jitter == "full":
            return base * r
        half = base / 2
        return half + half * r

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delays between calls: ``max_attempts - 1`` of them, or endless.

        ``max_elapsed`` is not applied here (it depends on how long the calls
        take); :meth:`next_delay` applies both limits.
        """
        attempt = 1
        while self.max_attempts is None or attempt < self.max_attempts:
            yield self.delay(attempt, rng)
            attempt += 1

    # -- decisions -----------------------------------------------------------------

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is of a type worth another call."""
        return isinstance(error, self.retry_on)

    def next_delay(
        self,
        attempt: int,
        elapsed: float,
        error: BaseException | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Call ``attempt`` failed ``elapsed`` seconds after the first call started:
        how long to wait before the next call, or ``None`` to give up.

        Gives up when ``error`` is not retryable, when ``max_attempts`` calls were
        made, or when waiting would end past ``max_elapsed``.
        """
        if error is not None and not self.retryable(error):
            return None
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt, rng)
        # to the microsecond: a wait ending exactly at max_elapsed is not past it
        if self.max_elapsed is not None and snap(elapsed + wait) > snap(self.max_elapsed):
            return None
        return wait

    def describe(self) -> dict[str, object]:
        """A plain dict for status pages and logs."""
        return {
            "initial": self.initial,
            "factor": self.factor,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "max_attempts": self.max_attempts,
            "max_elapsed": self.max_elapsed,
            "retry_on": [kind.__name__ for kind in self.retry_on],
        }
