"""The event envelope: :class:`Event`, where it came from (:class:`Position`) and
what it holds (:data:`Hold`: the flow-control credit of :mod:`rxagent.flow`).

The data at the bottom of the package: dead letters keep events, the pipeline
context dead-letters them, and a :class:`~rxagent.events.Batch` carries events
with their context; this module imports only :mod:`rxagent.flow`. The names'
public home is :mod:`rxagent.events`, which re-exports them; ``Event`` and
``Position`` say so in their ``__module__``, so that what is pickled of them
(positions in state entries, durable stores and changelogs) names
``rxagent.events.Position`` as before and reads back with any version.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .flow import Ticket

__all__ = ["Event", "Hold", "Position", "end_hold", "fold_holds", "retain_hold"]

#: What one row of a batch holds: one event of a ticket, or for an aggregate the
#: tickets and counts of the events folded into it.
Hold: TypeAlias = Ticket | tuple[tuple[Ticket, int], ...] | None


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event came from: source name, partition and offset (or sequence)."""

    source: str
    partition: Hashable = None
    offset: int | None = None

    def __str__(self) -> str:
        part = "" if self.partition is None else f"[{self.partition}]"
        off = "" if self.offset is None else f"@{self.offset}"
        return f"{self.source}{part}{off}"


@dataclass(slots=True)
class Event:
    """One event: ``value`` plus its ``key``, event ``time`` (epoch seconds),
    source ``position`` and ``headers``.

    An event taken out of a batch still holds its credit; whoever takes it over
    calls :meth:`end` once its processing is over.
    """

    value: Any
    key: Hashable = None
    time: float | None = None
    position: Position | None = None
    headers: Mapping[str, Any] | None = None
    hold: Hold = field(default=None, repr=False, compare=False)

    def end(self) -> None:
        """Processing of this event is over: release what it holds (idempotent)."""
        hold = self.hold
        if hold is not None:
            self.hold = None
            end_hold(hold)

    def replace(self, **changes: Any) -> Event:
        """A copy with fields changed; the copy takes over the hold."""
        data = {
            "value": self.value,
            "key": self.key,
            "time": self.time,
            "position": self.position,
            "headers": self.headers,
            "hold": self.hold,
        }
        data.update(changes)
        self.hold = None
        return Event(**data)


def end_hold(hold: Hold) -> None:
    """End whatever a row holds."""
    if hold is None:
        return
    if isinstance(hold, Ticket):
        hold.end(1)
    else:
        for ticket, count in hold:
            ticket.end(count)


def retain_hold(hold: Hold, extra: int) -> None:
    """The row will be ended ``extra`` more times (it was fanned out)."""
    if hold is None or extra <= 0:
        return
    if isinstance(hold, Ticket):
        hold.retain(extra)
    else:
        for ticket, count in hold:
            ticket.retain(count * extra)


def fold_holds(holds: Iterable[Hold], into: dict[Ticket, int]) -> None:
    """Fold rows into an aggregate: their credit returns now, their completion
    is counted in ``into`` (ticket -> events) until the aggregate ends."""
    for hold in holds:
        if hold is None:
            continue
        if isinstance(hold, Ticket):
            hold.fold(1)
            into[hold] = into.get(hold, 0) + 1
        else:
            for ticket, count in hold:
                into[ticket] = into.get(ticket, 0) + count


# their public home (see the module's docstring)
Event.__module__ = Position.__module__ = "rxagent.events"
