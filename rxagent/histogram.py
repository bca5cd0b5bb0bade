"""A fixed-bucket histogram of seconds, cheap to update once per batch or activation.

Exporters (Prometheus in :mod:`rxagent.observe`) read its buckets at scrape time;
nothing is computed per event. Not locked: it is written on the event loop, and a
reader on another thread may see one observation half counted, never a broken one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

from .exceptions import ConfigurationError

__all__ = ["LATENCY_BUCKETS", "Histogram"]

#: Upper bounds (seconds) of the default buckets: 1 ms to 60 s (the last one, +Inf, is implied).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    """Counts of observations per bucket (``le`` upper bounds, +Inf implied), their
    ``count`` and ``sum``: what a Prometheus histogram carries."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds or any(b >= c for b, c in pairwise(bounds)):
            raise ConfigurationError(
                f"histogram buckets must be a non-empty increasing sequence, got {bounds!r}"
            )
        self.bounds = bounds
        #: Observations per bucket (not cumulative); the last slot is the +Inf bucket.
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """Count ``n`` observations of ``value``."""
        self.buckets[bisect_left(self.bounds, value)] += n
        self.count += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, +Inf last (``float("inf")``)."""
        total = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip((*self.bounds, float("inf")), list(self.buckets), strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (``None``: nothing
        observed; the largest finite bound when it falls in +Inf)."""
        if not 0.0 <= q <= 1.0:
            raise ConfigurationError(f"a quantile is between 0 and 1, got {q!r}")
        if self.count == 0:
            return None
        rank = q * self.count
        for bound, seen in self.cumulative():
            if seen >= rank and seen > 0:
                return bound if bound != float("inf") else self.bounds[-1]
        return self.bounds[-1]

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum:.6g})"
