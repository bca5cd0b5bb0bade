"""Values stages hand each other: what a window emits, and keys named by field.

:class:`Window` is the value of every window's output; :func:`to_key_function`
turns a field name (or index) into a key function. Operators, sinks (the state
and tool sinks read windows and keys) and the pipeline-file loader all use them,
so they live here, below all of those (re-exported by :mod:`rxagent.operators`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

__all__ = ["Window", "to_key_function"]


def to_key_function(key: str | int | Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A field name (or index) becomes a C-level ``itemgetter``; a callable stays."""
    if isinstance(key, str | int):
        return itemgetter(key)
    if not callable(key):
        raise TypeError(f"a key must be a field name or a callable, got {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class Window:
    """What a window emits: its key, the aggregate ``value``, how many events it
    held, and the (event or processing) time of its first and last event.

    ``partial`` is True for a window a *stop* flushed before it closed (its source
    cannot replay it: docs/operators.md, "Windows and stops"); a window that closed,
    or that the end of a finite input flushed, has ``partial=False``. The field is
    on every window, in Python and in its plain form (state, JSON, file tests).
    """

    key: Hashable
    value: Any
    count: int
    start: float | None
    end: float | None
    partial: bool = False

    def __getitem__(self, field: str) -> Any:
        """``window["value"]``: so field-name keys work on windows as on dicts."""
        if field not in self.__slots__:
            raise KeyError(field)
        return getattr(self, field)
