"""Kept for old imports: the time windows are in :mod:`rxagent.operators.windows`
(``tumbling_window``, ``sliding_window``, ``session_window``, ``WindowOperator``)."""

from .windows.timed import (
    LatePolicy,
    TimeDomain,
    WindowOperator,
    session_window,
    sliding_window,
    tumbling_window,
)

__all__ = [
    "LatePolicy",
    "TimeDomain",
    "WindowOperator",
    "session_window",
    "sliding_window",
    "tumbling_window",
]
