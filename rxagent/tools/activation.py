"""What a tool call knows about the activation that made it: its idempotency key.

A tool's arguments are what an LLM could send too, so the activation's
bookkeeping does not go into them. A :class:`~rxagent.sinks.ToolSink` sets an
:class:`ActivationContext` around each attempt of a call instead, and the tool
reads it with :func:`current_activation` (a :mod:`contextvars` variable: it
reaches an ``async`` tool and a synchronous one running in its worker thread
alike; it is ``None`` when an LLM or code calls the tool directly)::

    @tool
    async def notify(symbol: str, px: float) -> None:
        '''Send an alert.'''
        activation = current_activation()
        key = None if activation is None else activation.idempotency_key
        await client.post("/alerts", json={"symbol": symbol, "px": px},
                          headers={} if key is None else {"Idempotency-Key": key})

The ``idempotency_key`` is derived from the activation's *trigger* (the event's
source position, or a window's key and bounds) and is the same on every retry
and after a restart: a tool that passes it to a service that honours such keys
(or checks it itself) has its effect once even when the activation fires again
(docs/state.md, "Tool activations across restarts").
"""

from __future__ import annotations

from collections.abc import Hashable
from contextvars import ContextVar, Token
from dataclasses import dataclass

from ..events import Position

__all__ = ["ActivationContext", "current_activation"]


@dataclass(frozen=True, slots=True)
class ActivationContext:
    """One attempt of one activation, as the called tool sees it.

    - ``idempotency_key``: 32 hex characters, the same for every attempt of the
      activation and for the same trigger after a restart (``None`` when the
      trigger has no stable identity: an event without a source position that is
      not a window, unless the sink was given ``trigger_id=``);
    - ``tool``, ``sink``, ``pipeline``: who activated the tool;
    - ``key``: the key the sink's policy works per;
    - ``attempt``: 1 for the first call, 2 for the first retry, ...;
    - ``position``: the triggering event's source position (``None`` if it has none);
    - ``trigger``: the trigger as text (``"ticks[0]@41"``, or a window's key and bounds).
    """

    idempotency_key: str | None
    tool: str
    sink: str
    pipeline: str
    key: Hashable
    attempt: int
    position: Position | None
    trigger: str | None


_current: ContextVar[ActivationContext | None] = ContextVar("rxagent_activation", default=None)


def current_activation() -> ActivationContext | None:
    """The activation the running tool call belongs to (``None`` outside a tool sink's call)."""
    return _current.get()


def enter_activation(context: ActivationContext) -> Token[ActivationContext | None]:
    """Make ``context`` current (what a tool sink does around each attempt)."""
    return _current.set(context)


def exit_activation(token: Token[ActivationContext | None]) -> None:
    """Undo :func:`enter_activation`."""
    _current.reset(token)
