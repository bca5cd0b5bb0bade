"""What every sink is, and the two simplest ones.

A sink receives batches on the event loop and must *end* every row it gets,
now (a state update, a list append) or when its work for the row is over (a
tool call). ``on_batch`` must not raise for a bad row: route it with
``batch.ctx.dead_letter(...)``. Anything it does raise fails the pipeline
loudly rather than stopping it silently.

Lifecycle: ``bind(ctx)`` once at start; ``on_batch`` per batch; ``on_completed``
when the stream ends; ``drain()`` is awaited until the sink's own work is done;
``aclose()`` always comes last, after a normal completion, a drain, or a
failure, and releases files and connections (it cancels what is still running).

In ``fail_fast`` mode ``ctx.dead_letter`` raises :class:`~rxagent.StageError`.
From ``on_batch`` that fails the pipeline by itself; a sink that dead-letters
from a task of its own must catch it and call ``ctx.fail(error, self.name)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ..context import PipelineContext
from ..events import Batch, Event

__all__ = ["CallbackSink", "ListSink", "Sink"]


class Sink(abc.ABC):
    """Base of all sinks. Example::

    class PrintSink(Sink):
        kind = "print"

        def on_batch(self, batch: Batch) -> None:
            for value in batch.values:
                print(value)
            batch.end_all()

    Args:
        name: the sink's name in status and dead letters (default: the class's
            ``kind``).
    """

    kind = "sink"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind
        self.ctx: PipelineContext | None = None

    def bind(self, ctx: PipelineContext) -> None:
        """Called once when the pipeline starts, before the first batch."""
        self.ctx = ctx

    @abc.abstractmethod
    def on_batch(self, batch: Batch) -> None:
        """Take a batch; end each row now or when its work is over."""

    def on_completed(self) -> None:  # noqa: B027 - optional hook
        """The stream ended: no batch follows."""

    async def recover(self) -> None:  # noqa: B027 - optional hook
        """Called once when the pipeline starts, before its source is read: restore
        what a restart must find (a durable store's entries)."""

    async def checkpoint(self, meta: Mapping[str, Any] | None = None) -> None:  # noqa: B027
        """Make durable what this sink did with the events that ended so far. The
        source commits its offsets only after every sink's checkpoint returned.

        ``meta``: what the source adds to this checkpoint (``Source.checkpoint_meta``,
        read when the checkpoint began, as ``{"source:<name>": {...}}``); a durable
        sink stores it in the same transaction as its state and returns it from
        :meth:`stored_meta`. Optional hook; an override written as
        ``checkpoint(self)`` still works: the pipeline passes ``meta`` only to sinks
        whose ``checkpoint`` takes it."""

    def stored_meta(self) -> Mapping[str, Any] | None:
        """The checkpoint metadata this sink's durable state holds (after
        :meth:`recover`, as of its last checkpoint); ``None``: the sink keeps no
        durable state. The pipeline hands the source's part of it to the source on
        start (``ctx.resume_meta()``)."""
        return None

    async def partitions_assigned(self, partitions: list[Hashable]) -> None:  # noqa: B027
        """Source partitions were assigned to this worker: restore their state before
        their first event arrives (optional hook)."""

    async def partitions_revoked(self, partitions: list[Hashable]) -> None:  # noqa: B027
        """Source partitions moved to another worker (after the last checkpoint of
        their events): let go of their state (optional hook)."""

    async def drain(self) -> None:  # noqa: B027 - optional hook
        """Wait until the work this sink started has ended."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Cancel whatever work is left (called when a drain times out or on stop)."""

    def describe(self) -> dict[str, Any]:
        """What status and the dashboard show of this sink: its kind and name, and its own counters
        and settings in subclasses (secrets redacted)."""
        return {"kind": self.kind, "name": self.name}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class ListSink(Sink):
    """Collects the events it receives (for tests and notebooks).

    Args:
        name: the sink's name in status (default: ``list``).
    """

    kind = "list"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.events: list[Event] = []
        self.completed = False

    def on_batch(self, batch: Batch) -> None:
        self.events.extend(batch.events())
        batch.end_all()

    def on_completed(self) -> None:
        self.completed = True

    @property
    def values(self) -> list[Any]:
        """The values of the events received, in order."""
        return [ev.value for ev in self.events]


class CallbackSink(Sink):
    """Calls ``fn(value)`` for every event; a raising call dead-letters that event.

    Args:
        fn: called with each event's value; its result is ignored, and each event
            ends when the call returns.
        name: the sink's name in status and dead letters (default: ``callback``).
    """

    kind = "callback"

    def __init__(self, fn: Callable[[Any], Any], name: str | None = None) -> None:
        super().__init__(name)
        self.fn = fn

    def on_batch(self, batch: Batch) -> None:
        fn = self.fn
        for i, value in enumerate(batch.values):
            try:
                fn(value)
            except Exception as error:
                batch.ctx.dead_letter(batch.event(i, take=True), self.name, error)
            else:
                batch.end_row(i)
