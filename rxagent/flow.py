"""Credit and completion: one mechanism for backpressure and for commits.

A source owns one :class:`Flow`. Before it emits a batch of events it awaits
credit for them (:meth:`Flow.acquire`); the batch gets a :class:`Ticket` that
counts the events of the batch whose processing has not *ended*. An event ends
when a filter drops it, a state store folds it in, its tool activation finishes,
or it is dead-lettered. When the last event of a ticket ends, the ticket's
credit returns to the source and the ticket counts as *complete*.

Completion drives the commit watermark: per partition, the watermark is the
position after the last event of the longest run of complete tickets, in the
order they were emitted. Nothing at or after the first incomplete ticket is ever
reported as done, so a consumer that commits the watermark is at-least-once.

Credit is counted in events and, for sources that know their messages' sizes
(WebSocket frames, Kafka messages), in bytes too: a ticket carries its batch's
bytes, returned with its credit, and :meth:`Flow.acquire` waits while the bytes in
flight reach ``capacity_bytes`` (and takes fewer events when the recent ones are
large), so a stalled sink holds at most about ``capacity_bytes`` plus one event
of payload, whatever the event credit.

Operators that aggregate (windows) *fold* events: the events stop costing
memory, so their credit returns at once (:meth:`Ticket.fold`), but they stay
pending until the aggregate built from them ends, so the watermark waits.
Without folding, a count window larger than the credit would deadlock.

When a source's partition moves to another worker, what aggregates hold of it is
*released* (:meth:`Flow.revoke`): the holders give the events up
(:meth:`Ticket.release`), which ends them without counting them as done, so the
watermark stops before the first of them and the new owner reads them again.

This module is pure bookkeeping plus one awaitable; it never blocks and never
sleeps, and it is driven from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterable

from .exceptions import ConfigurationError, FlowError

__all__ = ["DEFAULT_CREDIT_BYTES", "Flow", "FlowStats", "Ticket", "release_tickets"]

Partition = Hashable
WatermarkListener = Callable[[Partition, int], None]
RevokeListener = Callable[["Flow", frozenset[Partition]], None]


class Ticket:
    """The events of one emitted batch whose processing has not ended yet.

    ``first`` and ``last`` are the batch's source positions (inclusive), ``None``
    for sources without positions.
    """

    __slots__ = (
        "_bytes",
        "_credit",
        "done",
        "first",
        "flow",
        "last",
        "partition",
        "pending",
        "released",
    )

    def __init__(
        self,
        flow: Flow,
        partition: Partition,
        first: int | None,
        last: int | None,
        n: int,
        nbytes: int = 0,
    ) -> None:
        self.flow = flow
        self.partition = partition
        self.first = first
        self.last = last
        self.pending = n
        self._credit = n
        self._bytes = nbytes  # payload bytes charged to the flow, returned with the credit
        self.done = False
        #: Some events were given up (their partition was revoked): the ticket never
        #: counts as done, so the watermark of its partition stays before it.
        self.released = False

    def end(self, n: int = 1) -> None:
        """``n`` events of this ticket finished processing."""
        pending = self.pending - n
        self.pending = pending
        self.flow.pending -= n
        if pending <= 0:
            if pending < 0:
                self.pending = 0
                raise FlowError(
                    f"events of a ticket from source {self.flow.source!r} ended more often "
                    "than they were emitted: an operator ended an event it had passed on"
                )
            self._complete()
        elif pending < self._credit:
            # Ended events are out of flight: their credit returns now, not when the
            # last event of the ticket ends. (A filter's dropped rows held theirs while
            # a window held the rest: a source with little credit then read a few
            # events at a time, issue 16.) Credit kept: at most the pending ends, which
            # count every event not yet ended, folded or not.
            self._give(self._credit - pending)

    def fold(self, n: int = 1) -> None:
        """``n`` events were folded into an aggregate: their credit returns now,
        their completion waits for the aggregate."""
        credit = min(n, self._credit)
        if credit:
            self._give(credit)

    def _give(self, credit: int) -> None:
        """Return ``credit`` of this ticket's credit and its share of the bytes."""
        share = 0
        if self._bytes:
            share = self._bytes * credit // self._credit
            self._bytes -= share
        self._credit -= credit
        self.flow._return(credit, share)

    def release(self, n: int) -> None:
        """``n`` events were given up, not processed (an aggregate dropped them when
        their partition was revoked): they end, but the ticket stops the watermark
        at its first position, so the offsets of those events are never committed."""
        self.released = True
        self.end(n)

    def retain(self, n: int) -> None:
        """``n`` more ends are expected (an event was fanned out to more sinks)."""
        if self.done:
            raise FlowError("cannot retain events of a ticket that already completed")
        self.pending += n
        self.flow.pending += n

    def _complete(self) -> None:
        flow = self.flow
        credit, nbytes = self._credit, self._bytes
        if credit or nbytes:
            self._credit = self._bytes = 0
            flow._return(credit, nbytes)
        if self.released:
            flow._check_idle()
            return
        self.done = True
        flow._ticket_done(self)

    def __repr__(self) -> str:
        return (
            f"Ticket({self.flow.source!r}, partition={self.partition!r}, "
            f"first={self.first}, last={self.last}, pending={self.pending})"
        )


class FlowStats:
    """A snapshot of a flow's counters (plain attributes, cheap to copy)."""

    __slots__ = (
        "bytes_in_flight",
        "capacity",
        "capacity_bytes",
        "emitted",
        "in_flight",
        "peak_bytes_in_flight",
        "peak_in_flight",
        "pending",
        "waits",
    )

    def __init__(self, flow: Flow) -> None:
        self.capacity = flow.capacity
        self.in_flight = flow.capacity - flow.free
        self.peak_in_flight = flow.peak_in_flight
        self.capacity_bytes = flow.capacity_bytes or 0  # 0: no byte limit
        self.bytes_in_flight = flow.bytes_in_flight
        self.peak_bytes_in_flight = flow.peak_bytes_in_flight
        self.pending = flow.pending
        self.emitted = flow.emitted
        self.waits = flow.waits

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict, for status and metrics."""
        return {name: getattr(self, name) for name in self.__slots__}


#: The default byte limit of in-flight credit (``Source(credit_bytes=...)``).
DEFAULT_CREDIT_BYTES = 64 << 20
#: A source waiting for credit is woken at once when as much as it asked for is free
#: again (up to a quarter of its credit); with less, this many seconds after the first
#: credit back, with all that came back meanwhile (a sink ending events one by one
#: would otherwise have it read a few events at a time, issue 16). Never later, so
#: events held until more input comes (a reorder buffer waiting for a gap) cannot
#: stall the source.
WAKE_DELAY = 0.005


class Flow:
    """Credit (at most ``capacity`` events in flight, and about ``capacity_bytes``
    of payload for sources that charge bytes) and completion watermarks for one
    source.

    ``in flight`` counts events emitted whose credit has not returned; it never
    exceeds ``capacity``, whatever the operators and sinks downstream do.
    ``bytes_in_flight`` counts the payload bytes of those events as charged by the
    source (:meth:`ticket` ``nbytes``); :meth:`acquire` waits while it has reached
    ``capacity_bytes`` (``None``: no byte limit), so it stays below
    ``capacity_bytes`` plus the last batch's overshoot, which acquire keeps to
    about one event by taking fewer events when recent ones were large (before
    any batch, it expects ``event_bytes`` per event, the source's largest message).
    A source that reads one batch ahead (Kafka) may hold a second batch beyond.
    """

    def __init__(
        self,
        source: str,
        capacity: int = 1024,
        capacity_bytes: int | None = DEFAULT_CREDIT_BYTES,
        event_bytes: int = 0,
    ) -> None:
        if capacity < 1:
            raise ConfigurationError(f"credit for source {source!r} must be >= 1, got {capacity}")
        if capacity_bytes is not None and capacity_bytes < 1:
            raise ConfigurationError(
                f"credit_bytes for source {source!r} must be >= 1 or None, got {capacity_bytes}"
            )
        self.source = source
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.bytes_in_flight = 0
        self.peak_bytes_in_flight = 0
        #: bytes per event of the last batch that charged bytes (what acquire expects);
        #: before the first, the source's guess (``event_bytes``: its largest message)
        self._event_bytes = max(event_bytes, 0)
        self.free = capacity
        self.pending = 0
        self.emitted = 0
        self.peak_in_flight = 0
        self.waits = 0
        self._waiter: asyncio.Future[None] | None = None
        #: free credit that wakes a waiting source at once (less: after WAKE_DELAY)
        self._wake_cap = max(1, capacity >> 2)
        self._wake_at = self._wake_cap
        self._wake_timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Future[None] | None = None
        self._open: dict[Partition, deque[Ticket]] = {}
        self._watermarks: dict[Partition, int] = {}
        self._listeners: list[WatermarkListener] = []
        self._revoke_listeners: list[RevokeListener] = []

    # -- credit -------------------------------------------------------------

    async def acquire(self, want: int) -> int:
        """Wait for credit and take up to ``want`` of it; returns how much was taken (>= 1)."""
        if want < 1:
            raise ConfigurationError(f"acquire() wants at least 1 credit, got {want}")
        while self.free <= 0 or (
            self.capacity_bytes is not None and self.bytes_in_flight >= self.capacity_bytes
        ):
            self.waits += 1
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            # woken at once with as much as it wants, up to a quarter of the credit
            self._wake_at = min(want, self._wake_cap)
            try:
                await waiter
            finally:
                self._waiter = None
                if self._wake_timer is not None:
                    self._wake_timer.cancel()
                    self._wake_timer = None
        took = min(want, self.free, self._byte_room())
        self.free -= took
        in_flight = self.capacity - self.free
        if in_flight > self.peak_in_flight:
            self.peak_in_flight = in_flight
        return took

    def try_acquire(self, want: int) -> int:
        """Take up to ``want`` credit without waiting; returns how much was taken (maybe 0)."""
        took = min(want, self.free, self._byte_room())
        if took > 0:
            self.free -= took
            in_flight = self.capacity - self.free
            if in_flight > self.peak_in_flight:
                self.peak_in_flight = in_flight
        return max(took, 0)

    def _byte_room(self) -> int:
        """How many events of the recent size fit in the bytes left (at least 1 while
        any are left; 0 once they are used up)."""
        limit = self.capacity_bytes
        if limit is None or not self._event_bytes:
            return self.capacity if limit is None or self.bytes_in_flight < limit else 0
        left = limit - self.bytes_in_flight
        return 0 if left <= 0 else max(1, left // self._event_bytes)

    def _return(self, n: int, nbytes: int) -> None:
        """``n`` events' credit and ``nbytes`` of their payload return (a ticket's,
        or a fold's share): a waiting source is woken once, if credit came back or
        the bytes in flight fell under the byte limit."""
        if nbytes:
            self.bytes_in_flight -= nbytes
        if n:
            free = self.free + n
            if free > self.capacity:
                self.free = self.capacity
                raise FlowError(f"credit of source {self.source!r} returned more often than taken")
            self.free = free
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            limit = self.capacity_bytes
            if n or (limit is not None and self.bytes_in_flight < limit):
                if self.free < self._wake_at:
                    # a little credit back: wake the source soon, with what follows
                    if self._wake_timer is None:
                        self._wake_timer = waiter.get_loop().call_later(WAKE_DELAY, self._wake)
                    return
                waiter.set_result(None)

    def _wake(self) -> None:
        self._wake_timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def give_back(self, n: int) -> None:
        """Return credit that was acquired but not used for events."""
        if n > 0:
            self._return(n, 0)

    @property
    def in_flight(self) -> int:
        """Events holding credit now: emitted, not yet ended."""
        return self.capacity - self.free

    # -- tickets and completion ----------------------------------------------

    def ticket(
        self,
        n: int,
        partition: Partition = None,
        first: int | None = None,
        last: int | None = None,
        nbytes: int = 0,
    ) -> Ticket:
        """Open a ticket for ``n`` freshly emitted events (credit already acquired);
        ``nbytes``: their payload's size, held against ``capacity_bytes`` until the
        credit returns (0: the source does not know it)."""
        if nbytes > 0:
            in_flight = self.bytes_in_flight + nbytes
            self.bytes_in_flight = in_flight
            if in_flight > self.peak_bytes_in_flight:
                self.peak_bytes_in_flight = in_flight
            if n:
                self._event_bytes = nbytes // n or 1
        else:
            nbytes = 0
        ticket = Ticket(self, partition, first, last, n, nbytes)
        self.pending += n
        self.emitted += n
        queue = self._open.get(partition)
        if queue is None:
            queue = self._open[partition] = deque()
        queue.append(ticket)
        if n == 0:
            ticket._complete()
        return ticket

    def _ticket_done(self, ticket: Ticket) -> None:
        queue = self._open.get(ticket.partition)
        advanced: int | None = None
        while queue and queue[0].done:
            head = queue.popleft()
            if head.last is not None:
                advanced = head.last + 1
        if advanced is not None:
            self._watermarks[ticket.partition] = advanced
            for listener in self._listeners:
                listener(ticket.partition, advanced)
        self._check_idle()

    def _check_idle(self) -> None:
        if self.pending == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def watermark(self, partition: Partition = None) -> int | None:
        """The position up to which (exclusive) every event of ``partition`` has ended.

        This is what a Kafka consumer commits. ``None`` until a positioned ticket completes.
        """
        return self._watermarks.get(partition)

    def watermarks(self) -> dict[Partition, int]:
        """Each partition's completion watermark: the offset after the longest run of events whose
        processing ended (what a source may commit)."""
        return dict(self._watermarks)

    def busy(self, partition: Partition) -> bool:
        """True while an event of ``partition`` is still being processed (events
        held by an aggregate count; released ones do not)."""
        return any(ticket.pending > 0 for ticket in self._open.get(partition, ()))

    def on_revoke(self, listener: RevokeListener) -> Callable[[], None]:
        """Call ``listener(flow, partitions)`` when partitions are revoked: stages
        that hold events (windows) release those of the partitions at once."""
        self._revoke_listeners.append(listener)
        return lambda: self._revoke_listeners.remove(listener)

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """The partitions moved to another worker: every stage holding their events
        releases them (:meth:`Ticket.release`), so nothing waits for windows to close."""
        gone = frozenset(partitions)
        for listener in list(self._revoke_listeners):
            listener(self, gone)

    def forget(self, partition: Partition, *, void: bool = False) -> None:
        """Drop the bookkeeping of a partition (revoked or lost). ``void``: its open
        tickets count as released (never done), so a stage keeping their events'
        output for a later transaction (an exactly-once Kafka sink) drops it."""
        queue = self._open.pop(partition, None)
        if void and queue:
            for ticket in queue:
                ticket.released = True
        self._watermarks.pop(partition, None)

    def on_watermark(self, listener: WatermarkListener) -> Callable[[], None]:
        """Call ``listener(partition, position)`` whenever a watermark advances."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def idle(self) -> None:
        """Wait until no emitted event is still pending."""
        while self.pending > 0:
            loop = asyncio.get_running_loop()
            if self._idle is None or self._idle.done():
                self._idle = loop.create_future()
            await self._idle

    def stats(self) -> FlowStats:
        """A snapshot of the flow's counters (credit, in flight, emitted, ended)."""
        return FlowStats(self)

    def __repr__(self) -> str:
        return (
            f"Flow({self.source!r}, in_flight={self.in_flight}/{self.capacity}, "
            f"bytes_in_flight={self.bytes_in_flight}, "
            f"pending={self.pending})"
        )


def release_tickets(
    tickets: dict[Ticket, int], flow: Flow, partitions: frozenset[Partition], times: int = 1
) -> bool:
    """Release what an aggregate holds of ``partitions`` (tickets of ``flow``) and
    drop it from ``tickets``; ``times``: how often each event is still to end (a
    sliding pane, once per open window holding it). True when the aggregate held
    something of them and nothing else is left: its values came from revoked
    partitions only, and the caller drops them (the new owner reads them again)."""
    if not tickets:
        return False
    gone = [
        t
        for t in tickets
        if getattr(t, "flow", None) is flow and getattr(t, "partition", None) in partitions
    ]
    for ticket in gone:
        ticket.release(tickets.pop(ticket) * times)
    return bool(gone) and not tickets
