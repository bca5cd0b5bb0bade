"""Operators over event batches; each returns an :class:`Operator` for ``pipe``."""

from .aggregate import (
    Aggregation,
    collect,
    count,
    first,
    last,
    max_,
    mean,
    min_,
    reduce,
    sum_,
)
from .base import BatchHandler, Operator, batch_stage
from .decode import decode
from .timewindows import WindowOperator, session_window, sliding_window, tumbling_window
from .transform import event_time, filter, flat_map, key_by, map, tap
from .windows import Window, count_window

__all__ = [
    "Aggregation",
    "BatchHandler",
    "Operator",
    "Window",
    "WindowOperator",
    "batch_stage",
    "collect",
    "count",
    "count_window",
    "decode",
    "event_time",
    "filter",
    "first",
    "flat_map",
    "key_by",
    "last",
    "map",
    "max_",
    "mean",
    "min_",
    "reduce",
    "session_window",
    "sliding_window",
    "sum_",
    "tap",
    "tumbling_window",
]
