"""The event envelope, and the micro-batch that carries events through Rx.

Users meet :class:`Event`: a value with its key, event time, source position and
headers. Inside a pipeline, events travel as a :class:`Batch`: one list per field
(columns), emitted through Rx once per batch rather than once per event.

Why columns: on the machines this project runs on, creating any Python object
per event costs 160-300 ns, more than a plain loop spends on the whole
filter-map-window-state job. A batch costs one Rx ``on_next`` and a few list
operations that run in C (``map``, ``itertools.compress``), so the per-event
price is the user's own function and little else. :class:`Event` objects are
made only where a user function or a sink needs the envelope (dead letters, tool
arguments, state reducers).

Each row of a batch *holds* flow-control credit (see :mod:`rxagent.flow`). The
rule for anything that consumes batches: every row you receive you either pass
on, or end (:meth:`Batch.select` ends what it drops, :meth:`Batch.end_all`,
:meth:`Event.end`), or fold into an aggregate that will hold it
(:func:`fold_holds`). Never both, never neither.

:class:`Event`, :class:`Position` and the hold helpers are defined in
:mod:`rxagent.envelope`, below dead letters and the pipeline context (which keep
and dead-letter events); this module is their public home and re-exports them.
A :class:`Batch` stands above the context it carries.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .envelope import Event, Hold, Position, end_hold, fold_holds, retain_hold
from .flow import Flow, Ticket

if TYPE_CHECKING:  # a batch carries its context; the context knows events, not batches
    from .context import PipelineContext

__all__ = [
    "Batch",
    "Event",
    "Hold",
    "KeptPositions",
    "Position",
    "RevokeWatch",
    "end_hold",
    "partition_runs",
    "fold_holds",
    "retain_hold",
    "row_numbers",
]


#: Row numbers 0, 1, 2, ... as int objects made once, shared by every batch pass
#: that numbers rows (:func:`row_numbers`): a ``range`` makes a new int per row past
#: 256, ~8 ns of a keyed stage's ~50 per row.
ROW_NUMBERS: list[int] = list(range(1 << 16))


def row_numbers(n: int) -> Sequence[int]:
    """Row numbers ``0 .. n-1`` or more (zip or ``map`` them with ``n`` rows):
    :data:`ROW_NUMBERS` when there are enough, else a range."""
    return ROW_NUMBERS if n <= len(ROW_NUMBERS) else range(n)


class KeptPositions(Sequence[int]):
    """The positions of the rows a :meth:`Batch.select` kept, when the batch's
    positions were a ``range`` (``memory()``, a Kafka run without gaps): the kept
    row numbers, and each position made as it is read. Windows and state sinks read
    a few positions of a batch (the last row of each window); listing every kept one
    made an int per row, ~16 ns of a filter's ~80 per row."""

    __slots__ = ("_base", "_rows")

    def __init__(self, base: range, rows: list[int]) -> None:
        self._base = base
        self._rows = rows  # indices into base, increasing

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return KeptPositions(self._base, self._rows[i])
        return self._base[self._rows[i]]

    def __iter__(self) -> Iterator[int]:
        return map(self._base.__getitem__, self._rows)

    def select(self, mask: Sequence[Any]) -> KeptPositions:
        """The positions of the rows ``mask`` keeps."""
        return KeptPositions(self._base, list(itertools.compress(self._rows, mask)))

    def take(self, indices: Sequence[int]) -> KeptPositions:
        """The positions of the rows at ``indices``."""
        rows = self._rows
        return KeptPositions(self._base, [rows[i] for i in indices])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (a mutable-looking sequence, like list)

    def __repr__(self) -> str:
        return f"KeptPositions({list(self)!r})"


def _select_positions(positions: Sequence[Any], mask: Sequence[Any]) -> Sequence[Any]:
    if type(positions) is range and len(positions) <= len(ROW_NUMBERS):
        return KeptPositions(positions, list(itertools.compress(ROW_NUMBERS, mask)))
    if type(positions) is KeptPositions:
        return positions.select(mask)
    return list(itertools.compress(positions, mask))


def _take_positions(positions: Sequence[Any], indices: Sequence[int]) -> Sequence[Any]:
    if type(positions) is range and len(positions) <= len(ROW_NUMBERS):
        return KeptPositions(positions, list(indices))
    if type(positions) is KeptPositions:
        return positions.take(indices)
    return [positions[i] for i in indices]


_new_batch = object.__new__


def make_batch(
    values: list[Any],
    ctx: PipelineContext,
    source: str,
    time: float,
    ticket: Ticket | None,
    holds: list[Hold] | None,
    keys: list[Hashable] | None,
    times: list[float | None] | None,
    positions: Sequence[int | None] | None,
    headers: list[Mapping[str, Any] | None] | None,
    partition: Hashable,
) -> Batch:
    """``Batch(values, ctx=ctx, ...)`` with every field given in order, made without
    ``__init__``'s keyword parsing (~230 against ~630 ns): sources and stages make a
    batch per batch, which at one message per batch is a share of its cost."""
    new: Batch = _new_batch(Batch)
    new.values = values
    new.ctx = ctx
    new.source = source
    new.time = time
    new.ticket = ticket
    new.holds = holds
    new.keys = keys
    new.times = times
    new.positions = positions
    new.headers = headers
    new.partition = partition
    return new


class Batch:
    """Rows of events in columns. ``keys``, ``times``, ``positions`` and ``headers``
    are ``None`` when no row has one. ``holds`` is ``None`` when every row holds one
    event of ``ticket`` (the common case straight out of a source).
    """

    __slots__ = (
        "ctx",
        "headers",
        "holds",
        "keys",
        "partition",
        "positions",
        "source",
        "ticket",
        "time",
        "times",
        "values",
    )

    def __init__(
        self,
        values: list[Any],
        *,
        ctx: PipelineContext,
        source: str,
        time: float,
        ticket: Ticket | None = None,
        holds: list[Hold] | None = None,
        keys: list[Hashable] | None = None,
        times: list[float | None] | None = None,
        positions: Sequence[int | None] | None = None,
        headers: list[Mapping[str, Any] | None] | None = None,
        partition: Hashable = None,
    ) -> None:
        self.values = values
        self.ctx = ctx
        self.source = source
        self.time = time
        self.ticket = ticket
        self.holds = holds
        self.keys = keys
        self.times = times
        self.positions = positions
        self.headers = headers
        self.partition = partition

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"Batch({self.source!r}, rows={len(self.values)}, partition={self.partition!r})"

    def shell(self) -> Batch:
        """A batch of no rows with this one's context, source, time and partition (and an
        empty position column if it has positions): what a stateful operator keeps to
        build its later batches like this one (at a timer, at the end) without keeping
        this one's values alive until the next batch comes."""
        positions = None if self.positions is None else ()
        ctx, source, time, partition = self.ctx, self.source, self.time, self.partition
        return make_batch([], ctx, source, time, None, None, None, None, positions, None, partition)

    # -- reading rows ---------------------------------------------------------

    def hold(self, i: int) -> Hold:
        """What row ``i`` holds of its source's credit (ended when the row's processing ends)."""
        holds = self.holds
        return self.ticket if holds is None else holds[i]

    def position(self, i: int) -> Position | None:
        """Row ``i``'s source position (source, partition, offset), or None when its source gives
        none."""
        positions = self.positions
        if positions is None:
            return None
        return Position(self.source, self.partition, positions[i])

    def event(self, i: int, *, take: bool = False) -> Event:
        """Row ``i`` as an :class:`Event`. With ``take=True`` the event carries the
        row's hold, and ending the event ends the row."""
        return Event(
            self.values[i],
            None if self.keys is None else self.keys[i],
            None if self.times is None else self.times[i],
            self.position(i),
            None if self.headers is None else self.headers[i],
            self.hold(i) if take else None,
        )

    def events(self, *, take: bool = False) -> list[Event]:
        """The rows as :class:`Event` objects; ``take=True`` moves each row's hold into its event
        (who takes it must end it)."""
        return [self.event(i, take=take) for i in range(len(self.values))]

    def hold_list(self) -> list[Hold]:
        """Every row's hold, in row order (the batch's ticket repeated when rows share it)."""
        holds = self.holds
        if holds is None:
            return [self.ticket] * len(self.values)
        return holds

    # -- deriving batches -----------------------------------------------------

    def with_values(self, values: list[Any]) -> Batch:
        """Same rows, new values (a map); the rows' holds move to the new batch."""
        return self._derive(values, self.keys, self.times, self.positions, self.headers, self.holds)

    def with_keys(self, keys: list[Hashable]) -> Batch:
        """The same rows with ``keys`` as their keys (one per row); values, times, positions and
        holds stay."""
        return self._derive(self.values, keys, self.times, self.positions, self.headers, self.holds)

    def with_times(self, times: list[float | None]) -> Batch:
        """The same rows with ``times`` as their event times (one per row, None for none); the rest
        stays."""
        return self._derive(self.values, self.keys, times, self.positions, self.headers, self.holds)

    def select(self, mask: Sequence[Any]) -> Batch:
        """Keep the rows whose mask entry is truthy and *end* the others."""
        if all(mask):  # nothing dropped (a check in C that stops at the first drop)
            return self
        n = len(self.values)
        compress = itertools.compress
        values = list(compress(self.values, mask))
        dropped = n - len(values)
        if self.holds is None:
            if self.ticket is not None:
                self.ticket.end(dropped)
            holds = None
        else:
            holds = []
            for hold, keep in zip(self.holds, mask, strict=True):
                if keep:
                    holds.append(hold)
                else:
                    end_hold(hold)

        def pick(column: Sequence[Any] | None) -> Any:
            return None if column is None else list(compress(column, mask))

        positions = self.positions
        return self._derive(
            values,
            pick(self.keys),
            pick(self.times),
            None if positions is None else _select_positions(positions, mask),
            pick(self.headers),
            holds,
        )

    def take(self, indices: Sequence[int]) -> Batch:
        """The rows at ``indices`` (no ending: the caller accounts for the rest)."""

        def pick(column: Sequence[Any] | None) -> Any:
            return None if column is None else [column[i] for i in indices]

        values = [self.values[i] for i in indices]
        holds = None if self.holds is None else [self.holds[i] for i in indices]
        positions = self.positions
        return self._derive(
            values,
            pick(self.keys),
            pick(self.times),
            None if positions is None else _take_positions(positions, indices),
            pick(self.headers),
            holds,
        )

    def _derive(
        self,
        values: list[Any],
        keys: list[Hashable] | None,
        times: list[float | None] | None,
        positions: Sequence[int | None] | None,
        headers: list[Mapping[str, Any] | None] | None,
        holds: list[Hold] | None,
    ) -> Batch:
        return make_batch(
            values,
            self.ctx,
            self.source,
            self.time,
            self.ticket,
            holds,
            keys,
            times,
            positions,
            headers,
            self.partition,
        )

    @classmethod
    def of_events(
        cls,
        events: Sequence[Event],
        *,
        ctx: PipelineContext,
        source: str,
        time: float,
        partition: Hashable = None,
    ) -> Batch:
        """Build a batch from events; each row takes over its event's hold."""
        holds: list[Hold] = []
        for ev in events:
            holds.append(ev.hold)
            ev.hold = None
        keys = [ev.key for ev in events]
        times = [ev.time for ev in events]
        positions = [None if ev.position is None else ev.position.offset for ev in events]
        headers = [ev.headers for ev in events]
        return cls(
            [ev.value for ev in events],
            ctx=ctx,
            source=source,
            time=time,
            holds=holds,
            keys=keys if any(k is not None for k in keys) else None,
            times=times if any(t is not None for t in times) else None,
            positions=positions if any(p is not None for p in positions) else None,
            headers=headers if any(h is not None for h in headers) else None,
            partition=partition,
        )

    # -- ending ----------------------------------------------------------------

    def end_all(self) -> None:
        """Every row's processing is over."""
        if self.holds is None:
            if self.ticket is not None and self.values:
                self.ticket.end(len(self.values))
        else:
            # Rows after a window or a reorder hold their own tickets; count equal
            # holds first (in C) and end each distinct one once.
            for hold, times in Counter(self.holds).items():
                if hold is None:
                    continue
                if isinstance(hold, Ticket):
                    hold.end(times)
                else:
                    for ticket, count in hold:
                        ticket.end(count * times)

    def end_row(self, i: int) -> None:
        """End row ``i``'s processing: its credit returns to the source once nothing
        else holds it."""
        end_hold(self.hold(i))

    def retain(self, extra: int) -> None:
        """Every row will be ended ``extra`` more times (fan-out to more sinks)."""
        if extra <= 0:
            return
        if self.holds is None:
            if self.ticket is not None:
                self.ticket.retain(len(self.values) * extra)
            return
        for hold in self.holds:
            retain_hold(hold, extra)


class RevokeWatch:
    """Subscribes a holding stage (a window) to the revokes of every flow whose
    events it holds, so partitions moving away release their events at once.

    ``release(flow, partitions)`` is the stage's own: it calls
    :func:`~rxagent.flow.release_tickets` on each aggregate it keeps open.
    """

    __slots__ = ("flows", "release", "removers")

    def __init__(self, release: Callable[[Flow, frozenset[Hashable]], None]) -> None:
        self.release = release
        self.flows: set[int] = set()
        self.removers: list[Callable[[], None]] = []

    def see(self, batch: Batch) -> None:
        """Note the flow of ``batch`` (once per batch: one identity check)."""
        ticket = batch.ticket
        if ticket is None and batch.holds:
            hold = batch.holds[0]
            if isinstance(hold, tuple) and hold:
                ticket = hold[0][0]
            elif isinstance(hold, Ticket):
                ticket = hold
        # (a buffer's lease stands for its rows' tickets and has no flow of its own:
        # what a window holds of it is waited for on revoke, not released)
        flow: Flow | None = getattr(ticket, "flow", None)
        if flow is not None and id(flow) not in self.flows:
            self.flows.add(id(flow))
            self.removers.append(flow.on_revoke(self.release))

    def close(self) -> None:
        """Stop watching: unregister from every flow watched, so revoked partitions no longer call
        back."""
        for remove in self.removers:
            remove()
        self.removers.clear()
        self.flows.clear()


def _hold_partition(hold: Hold, default: Hashable) -> Hashable:
    if isinstance(hold, tuple):
        hold = hold[0][0] if hold else None
    return getattr(hold, "partition", default) if hold is not None else default


def partition_runs(holds: Sequence[Hold], default: Hashable) -> list[tuple[Hashable, int, int]]:
    """The source partition of an aggregate's rows, from the events they hold, as
    runs ``(partition, start, stop)`` of consecutive rows: a window closed by a
    timer or at the end belongs to the partition of its events, not to the batch
    that happened to come last (``default``: rows holding nothing)."""
    runs: list[tuple[Hashable, int, int]] = []
    start = 0
    current: Hashable = None
    for i, hold in enumerate(holds):
        part = _hold_partition(hold, default)
        if i == 0:
            current = part
        elif part != current:
            runs.append((current, start, i))
            current, start = part, i
    runs.append((current, start, len(holds)))
    return runs
