"""Windows: group events per key and emit one aggregate (a :class:`Window`) per window.

- :mod:`.count`: count windows (``count_window``);
- :mod:`.timed`: the time-window operators (``tumbling_window``, ``sliding_window``,
  ``session_window``, :class:`WindowOperator`), their options and validation;
- :mod:`.engine`: what time windows share: clock and timers, watermark, late
  events, output, partition release;
- :mod:`.panes`: tumbling and sliding windows (panes); :mod:`.sessions`: sessions.

Every window *folds* the events it takes in (see :mod:`rxagent.flow`): their
credit returns to the source at once, their completion waits for the window's
row, so the commit watermark never passes an event whose window has not been
processed.
"""

from ...values import Window
from ..toolkit import group_rows  # kept here for old imports (it was in windows.py)
from .count import count_window
from .timed import (
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
    "Window",
    "WindowOperator",
    "count_window",
    "group_rows",
    "session_window",
    "sliding_window",
    "tumbling_window",
]
