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
from itertools import chain, repeat
from operator import itemgetter
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
    """One key's open window, one object (issue 16): its rows as ``value, slot``
    pairs in one list (``[v0, s0, v1, s1, ...]``), and its first and last event's
    time and its last position. A row's slot is what it holds of its events'
    tickets, a tuple of ``(ticket, events)`` pairs: a row taken alone has its
    batch's one shared ``((ticket, 1),)``; a chunk of rows taken at once has the
    chunk's pairs on its first row and ``()`` on the others. A ticket may come
    more than once.

    Built for many keys: one list per open key is one object for the garbage
    collector to walk (a window object, a value list and a ticket dict were three,
    then a list and its ticket pairs two), and a row is added with two
    ``w.append`` calls (the interpreter's own path for ``list.append``: ~25 ns a
    row less than ``w += (value, slot)``, which builds a tuple)."""

    __slots__ = ("end", "position", "start")

    # no __init__ (list's own, in C): made by _open_window, or inline where that counts
    start: float | None
    end: float | None
    position: int | None

    @property
    def tickets(self) -> dict[Ticket, int]:
        """Ticket -> events held, oldest first (a new dict)."""
        tickets: dict[Ticket, int] = {}
        for ticket, n in chain.from_iterable(self[1::2]):
            tickets[ticket] = tickets.get(ticket, 0) + n
        return tickets

    @tickets.setter
    def tickets(self, tickets: dict[Ticket, int]) -> None:
        # all on the first row's slot (a window that holds tickets has rows)
        slots: list[tuple[tuple[Ticket, int], ...]] = [()] * (len(self) >> 1)
        if slots and tickets:
            slots[0] = tuple(tickets.items())
        self[1::2] = slots

    def hold(self) -> Hold:
        # a ticket may come more than once (two batches of one ticket): whoever ends,
        # retains or releases a hold goes pair by pair, so that is the same
        # (the empty slots skipped before chain makes an iterator of each)
        return tuple(chain.from_iterable(filter(None, self[1::2]))) or None


def _open_window() -> _KeyWindow:
    w = _KeyWindow()
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
        #: the aggregate is the list of the values (``collect``): the new list a window's
        #: values are taken into is it, not copied again
        self.collects = self.agg_fn is list
        self.emit_partial = emit_partial
        self.windows: dict[Hashable, _KeyWindow] = {}
        #: the last batch's keys were (mostly) distinct: many keys, a row or two each
        self.distinct = False
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
        # the last batch's keys were mostly distinct (many keys): the path for that
        distinct = self.distinct and batch.holds is None and batch.ticket is not None
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
            self._distinct(batch, values, keys, emit, metrics)
            return
        if groups is None:
            groups = {None: range(n)}
        # fewer than two rows a key on average: the next batch takes the per-row path
        self.distinct = 2 * len(groups) > n > 1
        ticket = batch.ticket if batch.holds is None else None
        holds = batch.holds
        times = batch.times
        positions = batch.positions
        now = batch.time
        windows = self.windows
        out: list[tuple[Window, Hold, int | None]] = []
        closed_at: list[int] = []  # row that closed each window, to keep arrival order
        full = 2 * size  # a window's list at ``size`` rows (a value and a slot each)
        # the pair of one row of this batch, shared by the windows that take one row
        one = cast("tuple[Ticket, int]", (ticket, 1))
        alone = (one,) if ticket is not None else ()  # the slot of one row of it
        for k, rows_of_key in groups.items():
            w = windows.get(k)
            if w is None:
                w = windows[k] = _open_window()
            m = len(rows_of_key)
            if m == 1 and ticket is not None:
                # one row of this key (many keys): the short way
                i = rows_of_key[0]
                w.append(values[i])
                w.append(alone)
                t = now if times is None else times[i]
                if w.start is None:
                    w.start = t
                w.end = t
                if positions is not None:
                    w.position = positions[i]
                if len(w) >= full:
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
                room = size - (len(w) >> 1)
                chunk = (
                    rows_of_key if taken == 0 and m <= room else rows_of_key[taken : taken + room]
                )
                taken += len(chunk)
                # the chunk's pairs on its first row's slot
                slot: tuple[tuple[Ticket, int], ...] = ()
                if ticket is not None:
                    slot = alone if len(chunk) == 1 else ((ticket, len(chunk)),)
                elif holds is not None:
                    counts: dict[Ticket, int] = {}
                    fold_holds([holds[i] for i in chunk], counts)
                    slot = tuple(counts.items())
                if len(chunk) == 1:
                    w.append(values[chunk[0]])
                    w.append(slot)
                else:
                    pairs: list[Any] = [()] * (2 * len(chunk))
                    if isinstance(chunk, range):
                        pairs[0::2] = values[chunk.start : chunk.stop]
                    else:
                        pairs[0::2] = itemgetter(*chunk)(values)
                    pairs[1] = slot
                    w += pairs
                if w.start is None:
                    w.start = now if times is None else times[chunk[0]]
                last = chunk[-1]
                w.end = now if times is None else times[last]
                if positions is not None:
                    w.position = positions[last]
                if len(w) >= full:
                    out.append(self._close(k, w))
                    closed_at.append(last)
                    del w[:]
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
        """A batch of many keys, a row or two of each (the last batch's were mostly
        distinct): a Python step per row that touches its window once (each row of
        one ticket: its slot is the batch's shared ``((ticket, 1),)``). Passes in C
        over the batch, tried before, touched each of its windows once per pass, and
        at 100k keys each pass missed the cache again (issue 16). Any keys give the
        right windows here; many keys give them fastest."""
        ticket = batch.ticket
        assert ticket is not None
        times = batch.times
        positions = batch.positions
        windows = self.windows
        get = windows.get
        size = self.size
        full = 2 * size
        agg = self.agg_fn
        collects = self.collects
        alone = ((ticket, 1),)
        closed: list[Window] = []
        holds: list[Hold] = []
        ends: list[int | None] = []
        for k, v, t, p in zip(
            keys,
            values,
            repeat(batch.time) if times is None else times,
            repeat(None) if positions is None else positions,
            strict=False,  # (the repeats)
        ):
            w = get(k)
            if w is None:
                w = windows[k] = _KeyWindow()
                w.start = t
            w.append(v)
            w.append(alone)
            w.end = t
            w.position = p
            if len(w) >= full:
                # the window of a key in the table has fewer than size rows: size now
                taken = w[0::2]
                closed.append(
                    _window(k, taken if collects else agg(taken), size, w.start, t, False)
                )
                holds.append(w.hold())
                ends.append(p)
                del windows[k]  # closed with nothing left: forget the key
        n = len(keys)
        ticket.fold(n)
        metrics.extra["open_windows"] = len(windows)
        # distinct keys touch n windows, each still open or closed now: fewer, and
        # the keys repeat (few keys), so the next batch is grouped
        self.distinct = len(windows) + len(closed) >= n
        if closed:
            metrics.events_out += len(closed)
            emit(self._columns(batch, closed, holds, ends))

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
        # (a slice of batch values of another type than list is copied into one)
        value = taken if self.collects and type(taken) is list else self.agg_fn(taken)
        result = _window(k, value, len(taken), start, end, False)
        return (result, hold, None if positions is None else positions[last])

    def _close(
        self, k: Hashable, w: _KeyWindow, partial: bool = False
    ) -> tuple[Window, Hold, int | None]:
        """The row of ``w``'s aggregate (the caller forgets the key or empties ``w``)."""
        values = w[0::2]
        value = values if self.collects else self.agg_fn(values)
        result = _window(k, value, len(values), w.start, w.end, partial)
        return (result, w.hold(), w.position)

    def _batch(
        self,
        like: Batch,
        rows: list[tuple[Window, Hold, int | None]],
        partition: Hashable = None,
    ) -> Batch:
        return self._columns(
            like, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], partition
        )

    def _columns(
        self,
        like: Batch,
        closed: list[Window],
        holds: list[Hold],
        positions: list[int | None],
        partition: Hashable = None,
    ) -> Batch:
        """The batch of windows closed by (or flushed after) ``like``."""
        return Batch(
            closed,
            ctx=like.ctx,
            source=like.source,
            time=like.time,
            holds=holds,
            keys=[w.key for w in closed],
            times=[w.end for w in closed],
            positions=None if like.positions is None else positions,
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
