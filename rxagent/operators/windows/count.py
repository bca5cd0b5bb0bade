"""Count windows: one aggregate per ``size`` events of a key.

A window *folds* the events it takes in (see :mod:`rxagent.flow`): their credit
returns to the source at once, so a window larger than the source's credit
cannot stall the pipeline, but their completion waits until the aggregate the
window emits has ended. The commit watermark therefore never passes an event
whose window has not been processed.

Time windows (tumbling, sliding, session) are in :mod:`.timed`; they share
:class:`Window` with the count windows here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import compress, repeat
from operator import attrgetter, itemgetter, not_
from typing import Any, Literal, cast

from reactivex import Observable

from ...events import Batch, Hold, RevokeWatch, end_hold, fold_holds, partition_runs, row_numbers
from ...exceptions import ConfigurationError
from ...flow import Flow, Ticket, release_tickets
from ...values import Window, to_key_function
from ..aggregate import Aggregation, collect, resolve_aggregation
from ..base import BatchHandler, Emit, Operator, batch_stage
from ..toolkit import apply, group_rows
from .engine import EmitPartial, at_end, check_emit_partial, give_up

__all__ = ["CountWindowHandler", "count_window"]


class _KeyWindow(list[Any]):
    """One key's open window: the list of its values, with what it holds of its
    events' tickets (``held``: ``(ticket, events)`` pairs, a ticket possibly more
    than once), its first and last event's time and its last position.

    Built for many keys (issue 16): one list per open key, where a window object,
    a value list and a ticket dict were three objects for the garbage collector
    to walk; and a window that takes one row of a batch appends the batch's one
    shared ``(ticket, 1)`` pair, so the hold of a closed window is one new tuple
    (its pairs were a new tuple each)."""

    __slots__ = ("end", "held", "position", "start")

    # no __init__ (list's own, in C): made by _open_window, or inline where that counts
    held: list[tuple[Ticket, int]]
    start: float | None
    end: float | None
    position: int | None

    @property
    def tickets(self) -> dict[Ticket, int]:
        """Ticket -> events held, oldest first (a new dict)."""
        tickets: dict[Ticket, int] = {}
        for ticket, n in self.held:
            tickets[ticket] = tickets.get(ticket, 0) + n
        return tickets

    @tickets.setter
    def tickets(self, tickets: dict[Ticket, int]) -> None:
        self.held = list(tickets.items())

    def hold(self) -> Hold:
        # a ticket may come more than once (two batches of one ticket): whoever ends,
        # retains or releases a hold goes pair by pair, so that is the same
        held = self.held
        return tuple(held) if held else None


_HELD = attrgetter("held")


def _open_window() -> _KeyWindow:
    w = _KeyWindow()
    w.held = []
    w.start = w.end = w.position = None
    return w


# A frozen dataclass's __init__ sets each field through object.__setattr__; its slots'
# own setters do the same in under half the time (a Window per closed window).
_SET_WINDOW = tuple(
    getattr(Window, f).__set__ for f in ("key", "value", "count", "start", "end", "partial")
)


def _window(
    key: Hashable, value: Any, count: int, start: float | None, end: float | None, partial: bool
) -> Window:
    """``Window(key, value, count, start, end, partial)``, built faster."""
    set_key, set_value, set_count, set_start, set_end, set_partial = _SET_WINDOW
    window: Window = object.__new__(Window)
    set_key(window, key)
    set_value(window, value)
    set_count(window, count)
    set_start(window, start)
    set_end(window, end)
    set_partial(window, partial)
    return window


class CountWindowHandler(BatchHandler):
    """One subscription of a ``count_window`` stage: the open window of each key.

    A key's window closes when it holds ``size`` events; windows closed by one
    batch leave in one batch, in the order of the rows that closed them. A key
    whose window closed with nothing left over is forgotten.
    """

    def __init__(
        self,
        stage: str,
        size: int,
        key_fn: Callable[[Any], Hashable] | None,
        aggregation: Aggregation,
        emit_partial: EmitPartial,
    ) -> None:
        self.stage = stage
        self.size = size
        self.key_fn = key_fn
        self.aggregation = aggregation
        #: the part of each value the aggregation reads, kept instead of the value
        #: (``mean("px")`` keeps floats: the values themselves die young)
        self.pick = aggregation.pick
        # called once per window: no __call__ in between
        self.agg_fn = aggregation.fn if aggregation.of_picked is None else aggregation.of_picked
        self.emit_partial = emit_partial
        self.windows: dict[Hashable, _KeyWindow] = {}
        self.distinct = False  # the last batch's keys were all distinct
        self.last_batch: Batch | None = None
        self.watch = RevokeWatch(self._release)

    def _release(self, flow: Flow, partitions: frozenset[Hashable]) -> None:
        # windows of revoked partitions are dropped, their events released:
        # the partition's new owner reads them again
        windows = self.windows
        gone = []
        for k, w in windows.items():
            held = w.tickets
            if release_tickets(held, flow, partitions):
                gone.append(k)
            w.tickets = held
        for k in gone:
            del windows[k]

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        self.watch.see(batch)
        stage = self.stage
        size = self.size
        key_fn = self.key_fn
        metrics = batch.ctx.stage(stage)
        metrics.events_in += len(batch.values)
        groups: Mapping[Hashable, Sequence[int]] | None = None
        # the last batch's keys were all distinct (many keys): try the path for that
        distinct = self.distinct and batch.holds is None
        keys: list[Hashable] | None = None
        if key_fn is not None:
            try:  # fast path: keys computed while grouping, no key list
                if distinct:
                    keys = list(map(key_fn, batch.values))
                else:
                    groups = group_rows(map(key_fn, batch.values), row_numbers(len(batch.values)))
            except Exception:  # some key function raised: route row by row
                keys, ok = apply(batch, key_fn, stage)
                rows = [i for i, good in enumerate(ok) if good]
                batch = batch.take(rows)
                keys = [keys[i] for i in rows]
                if not distinct:
                    groups = group_rows(keys)
        elif batch.keys is not None:
            if distinct:
                keys = batch.keys
            else:
                groups = group_rows(batch.keys)
        self.last_batch = batch.shell()  # not the batch: its values die with it
        n = len(batch.values)
        # what the windows keep of each row: the value, or the part the aggregation reads
        # (a failing pick raises here, as the aggregation would when the window closes)
        values = batch.values if self.pick is None else list(map(self.pick, batch.values))
        if keys is not None and groups is None:
            if len(set(keys)) == n and batch.holds is None and batch.ticket is not None:
                self._distinct(batch, values, keys, emit, metrics)
                return
            groups = group_rows(keys)
        if groups is None:
            groups = {None: range(n)}
        self.distinct = len(groups) == n > 1
        ticket = batch.ticket if batch.holds is None else None
        holds = batch.holds
        times = batch.times
        positions = batch.positions
        now = batch.time
        windows = self.windows
        out: list[tuple[Window, Hold, int | None]] = []
        closed_at: list[int] = []  # row that closed each window, to keep arrival order
        # the pair of one row of this batch, shared by the windows that take one row
        one = cast("tuple[Ticket, int]", (ticket, 1))
        for k, rows_of_key in groups.items():
            w = windows.get(k)
            if w is None:
                w = windows[k] = _open_window()
            m = len(rows_of_key)
            if m == 1 and ticket is not None:
                # one row of this key (many keys): the short way
                i = rows_of_key[0]
                w.append(values[i])
                w.held.append(one)
                t = now if times is None else times[i]
                if w.start is None:
                    w.start = t
                w.end = t
                if positions is not None:
                    w.position = positions[i]
                if len(w) >= size:
                    out.append(self._close(k, w))
                    closed_at.append(i)
                    del windows[k]  # closed with nothing left: forget the key
                continue
            taken = 0
            while taken < m:
                if not w and m - taken >= size:
                    # a whole window of this batch's rows: aggregated as they are gathered
                    chunk = rows_of_key[taken : taken + size]
                    taken += size
                    out.append(self._whole(k, chunk, batch, values, one))
                    closed_at.append(chunk[-1])
                    continue
                room = size - len(w)
                chunk = (
                    rows_of_key if taken == 0 and m <= room else rows_of_key[taken : taken + room]
                )
                taken += len(chunk)
                if len(chunk) == 1:
                    w.append(values[chunk[0]])
                elif isinstance(chunk, range):
                    w.extend(values[chunk.start : chunk.stop])
                else:
                    w.extend(itemgetter(*chunk)(values))
                if ticket is not None:
                    w.held.append(one if len(chunk) == 1 else (ticket, len(chunk)))
                elif holds is not None:
                    counts = w.tickets
                    fold_holds([holds[i] for i in chunk], counts)
                    w.tickets = counts
                if w.start is None:
                    w.start = now if times is None else times[chunk[0]]
                last = chunk[-1]
                w.end = now if times is None else times[last]
                if positions is not None:
                    w.position = positions[last]
                if len(w) >= size:
                    out.append(self._close(k, w))
                    closed_at.append(last)
                    del w[:]
                    w.held = []
                    w.start = None
            if not w:
                # closed with nothing left: forget the key (keys come and go)
                del windows[k]
        if ticket is not None:
            ticket.fold(n)
        metrics.extra["open_windows"] = len(windows)
        if len(out) > 1:
            out = [row for _, row in sorted(zip(closed_at, out, strict=True), key=itemgetter(0))]
        if out:
            metrics.events_out += len(out)
            emit(self._batch(batch, out))

    def _distinct(
        self, batch: Batch, values: list[Any], keys: list[Hashable], emit: Emit, metrics: Any
    ) -> None:
        """A batch of distinct keys, each row its own key's (many keys, few rows of
        each per batch): the rows go to their windows in passes in C, not a Python
        step per row (one row of one ticket: the batch's shared ``(ticket, 1)``)."""
        ticket = batch.ticket
        assert ticket is not None
        times = batch.times
        positions = batch.positions
        now = batch.time
        windows = self.windows
        n = len(keys)
        found: list[Any] = list(map(windows.get, keys))
        # keys without an open window (a window in the table is never empty: falsy = None)
        for i in compress(range(n), map(not_, found)):
            w = found[i] = windows[keys[i]] = _KeyWindow()
            w.held = []
            w.start = now if times is None else times[i]
            w.position = None  # end is set below, for every row
        one = (ticket, 1)
        any(map(list.append, found, values))
        any(map(list.append, map(_HELD, found), repeat(one, n)))
        any(map(setattr, found, repeat("end", n), repeat(now, n) if times is None else times))
        if positions is not None:
            any(map(setattr, found, repeat("position", n), positions))
        ticket.fold(n)
        full = list(compress(range(n), map(self.size.__le__, map(len, found))))
        metrics.extra["open_windows"] = len(windows) - len(full)
        if not full:
            return
        out = []
        for i in full:
            out.append(self._close(keys[i], found[i]))
            del windows[keys[i]]  # closed with nothing left: forget the key
        metrics.events_out += len(out)
        emit(self._batch(batch, out))

    def _whole(
        self,
        k: Hashable,
        chunk: Sequence[int],
        batch: Batch,
        values: list[Any],
        one: tuple[Ticket, int],
    ) -> tuple[Window, Hold, int | None]:
        """The row of a window of ``chunk``'s rows alone (``size`` of them, all of ``batch``;
        ``values``: what the windows keep of its rows)."""
        if isinstance(chunk, range):
            taken = values[chunk.start : chunk.stop]
        elif len(chunk) == 1:
            taken = [values[chunk[0]]]
        else:
            taken = list(itemgetter(*chunk)(values))
        first, last = chunk[0], chunk[-1]
        times = batch.times
        start: float | None = batch.time if times is None else times[first]
        end: float | None = batch.time if times is None else times[last]
        hold: Hold
        if batch.holds is None:
            ticket = batch.ticket
            hold = None if ticket is None else ((one if len(chunk) == 1 else (ticket, len(chunk))),)
        else:
            counts: dict[Ticket, int] = {}
            fold_holds([batch.holds[i] for i in chunk], counts)
            hold = tuple(counts.items()) or None
        positions = batch.positions
        result = _window(k, self.agg_fn(taken), len(taken), start, end, False)
        return (result, hold, None if positions is None else positions[last])

    def _close(
        self, k: Hashable, w: _KeyWindow, partial: bool = False
    ) -> tuple[Window, Hold, int | None]:
        """The row of ``w``'s aggregate (the caller forgets the key or empties ``w``)."""
        values = w[:]
        result = _window(k, self.agg_fn(values), len(values), w.start, w.end, partial)
        held = w.held
        return (result, tuple(held) if held else None, w.position)

    def _batch(
        self,
        like: Batch,
        rows: list[tuple[Window, Hold, int | None]],
        partition: Hashable = None,
    ) -> Batch:
        return Batch(
            [r[0] for r in rows],
            ctx=like.ctx,
            source=like.source,
            time=like.time,
            holds=[r[1] for r in rows],
            keys=[r[0].key for r in rows],
            times=[r[0].end for r in rows],
            positions=None if like.positions is None else [r[2] for r in rows],
            partition=like.partition if partition is None else partition,
        )

    def dispose(self) -> None:
        self.watch.close()

    def on_completed(self, emit: Emit) -> None:
        self.watch.close()
        like = self.last_batch
        if like is None:
            return
        ending = at_end(self.emit_partial, like.ctx)
        metrics = like.ctx.stage(self.stage)
        if ending == "release":
            # a stop, and the source replays what was not committed: the open
            # windows' events are given up, so a restart reads them again
            released = sum(give_up(w.tickets) for w in self.windows.values())
            self.windows.clear()
            metrics.extra["released_at_stop"] = metrics.extra.get("released_at_stop", 0) + released
            return
        partial = ending == "partial"
        rows = [self._close(k, w, partial) for k, w in self.windows.items() if w]
        self.windows.clear()
        if not rows:
            return
        if ending != "drop":
            metrics.events_out += len(rows)
            if partial:
                metrics.extra["partial"] = metrics.extra.get("partial", 0) + len(rows)
            # one batch per source partition the windows' events came from
            holds = [row[1] for row in rows]
            for partition, a, b in partition_runs(holds, like.partition):
                emit(self._batch(like, rows[a:b], partition))
        else:
            for _, hold, _ in rows:
                end_hold(hold)


def count_window(
    size: int,
    *,
    key: str | int | Callable[[Any], Hashable] | None = None,
    agg: Aggregation | Mapping[str, Aggregation] | None = None,
    emit_partial: bool | Literal["auto"] = "auto",
    name: str | None = None,
) -> Operator:
    """Count windows of ``size`` events per key; each emits a :class:`Window`
    whose ``value`` is ``agg`` over the window's values (default: the list).

    ``key`` is a field name or function of the value; without it the event's key
    is used (``key_by``), and events without keys share one window. At the end
    of a finite input the windows not yet full are emitted unless
    ``emit_partial=False``; on a stop, see ``emit_partial`` below.

    ::

        --a--b--c--d--e--|   count_window(2)
        -----x-----y-----(z|)   x=[a,b], y=[c,d], z=[e]

    Args:
        size: events per window (at least 1).
        key: windows per this key: a field name or a function of the value
            (default: the event's key, ``key_by``; events without keys share
            one window).
        agg: what a window's ``value`` is: an aggregation (``mean("px")``), a
            mapping of names to aggregations (the value is a dict), or a
            function of the list of values; None (default): the list itself.
        emit_partial: what the windows not yet full become when the stream
            completes. At the end of a finite input they are emitted (their final
            value) unless False. On a stop: ``"auto"`` (default) gives their events
            up uncommitted when the source replays them (Kafka: recomputed after a
            restart) and otherwise emits them with ``partial=True``; True always
            emits them (``partial=True``); False never does.
        name: the stage's name in status, metrics and dead letters (default:
            ``count_window``, numbered when a pipeline has several).
    """
    if size < 1:
        raise ConfigurationError(f"count_window size must be >= 1, got {size}")
    aggregation = resolve_aggregation(agg) if agg is not None else collect()
    key_fn = None if key is None else to_key_function(key)
    where = f"count_window({name!r})" if name else "count_window"
    emit_partial = check_emit_partial(emit_partial, where)

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        return batch_stage(
            source,
            lambda _o, _s: CountWindowHandler(stage, size, key_fn, aggregation, emit_partial),
        )

    return Operator("count_window", build, name)
