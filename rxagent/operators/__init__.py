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
from .backpressure import buffer
from .base import BatchHandler, Operator, batch_stage
from .circuit import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitOperator,
    CircuitState,
    CircuitTransition,
    circuit_breaker,
)
from .decode import decode
from .dedup import dedup
from .reorder import Gap, ReorderOperator, reorder
from .retry import RetryOperator, RetryStatus, retry
from .throttle import debounce, rate_limit, sample, throttle_first, throttle_last, throttle_latest
from .transform import event_time, filter, flat_map, key_by, map, tap
from .windows import (
    Window,
    WindowOperator,
    count_window,
    session_window,
    sliding_window,
    tumbling_window,
)

__all__ = [
    "Aggregation",
    "BatchHandler",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitOperator",
    "CircuitState",
    "CircuitTransition",
    "Gap",
    "Operator",
    "ReorderOperator",
    "RetryOperator",
    "RetryStatus",
    "Window",
    "WindowOperator",
    "batch_stage",
    "buffer",
    "circuit_breaker",
    "collect",
    "count",
    "count_window",
    "debounce",
    "decode",
    "dedup",
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
    "rate_limit",
    "reduce",
    "reorder",
    "retry",
    "sample",
    "session_window",
    "sliding_window",
    "sum_",
    "tap",
    "throttle_first",
    "throttle_last",
    "throttle_latest",
    "tumbling_window",
]
