"""Per-resource conflation: at most one notification per resource per interval.

A state store fed at 10k events/s changes 10k times a second; an MCP client
only needs to know *that* a resource changed, so it can read it again. The
:class:`Conflater` turns a stream of "resource X changed" touches into
notifications spaced at least ``interval`` seconds apart per resource:

- the first change after a quiet period is delivered at once (leading edge);
- changes during the interval are merged into one notification at its end
  (trailing edge), so the last change is always delivered.

Everything runs on the event loop with ``call_later`` timers; :meth:`touch`
never blocks and costs a dictionary lookup when a notification is already due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import ConfigurationError

__all__ = ["Conflater"]


@dataclass(slots=True)
class _Slot:
    last: float  # loop time of the last emission (-inf: never)
    timer: asyncio.TimerHandle | None = None


class Conflater:
    """Calls ``emit(key)`` for touched keys, at most once per ``interval`` seconds per key.

    ``touch(key)`` marks a key changed. If the key was not emitted within the
    last ``interval`` seconds it is emitted now; otherwise one emission is
    scheduled for the end of the interval, carrying every touch until then.
    Create it on the event loop that calls :meth:`touch`.
    """

    def __init__(
        self,
        interval: float,
        emit: Callable[[str], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not interval >= 0:
            raise ConfigurationError(f"conflation interval must be >= 0 seconds, got {interval!r}")
        self.interval = float(interval)
        self._emit = emit
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._slots: dict[str, _Slot] = {}
        #: touches received and notifications emitted, for status and tests
        self.touched = 0
        self.emitted = 0

    def touch(self, key: str) -> None:
        """``key`` changed: emit now, or once at the end of the current interval."""
        self.touched += 1
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(float("-inf"))
        elif slot.timer is not None:
            return  # the scheduled emission will carry this change
        now = self._loop.time()
        due = slot.last + self.interval
        if now >= due:
            slot.last = now
            self._fire(key)
        else:
            slot.timer = self._loop.call_later(due - now, self._trailing, key)

    def _trailing(self, key: str) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.timer = None
        slot.last = self._loop.time()
        self._fire(key)

    def _fire(self, key: str) -> None:
        self.emitted += 1
        self._emit(key)

    def pending(self, key: str) -> bool:
        """Whether an emission of ``key`` is scheduled."""
        slot = self._slots.get(key)
        return slot is not None and slot.timer is not None

    def forget(self, key: str) -> None:
        """Drop ``key``'s state and any scheduled emission (nobody wants it any more)."""
        slot = self._slots.pop(key, None)
        if slot is not None and slot.timer is not None:
            slot.timer.cancel()

    def close(self) -> None:
        """Cancel every scheduled emission."""
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        self._slots.clear()
