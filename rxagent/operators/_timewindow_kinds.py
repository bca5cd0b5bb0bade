"""The windows themselves: panes (tumbling and sliding) and sessions.

Both keep their open windows per key and put every window on the engine's heap
(:mod:`._timewindow_core`) with the order in which it closes.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Hashable, Mapping, Sequence
from fractions import Fraction
from heapq import heappush, merge
from itertools import accumulate, chain, compress, count, islice, repeat
from operator import add, ge, itemgetter, sub, truediv
from typing import Any, cast

from reactivex import abc

from ..events import Batch, fold_holds
from ..flow import Flow, Ticket, release_tickets
from ._timewindow_core import Late, Out, WindowHandler, WindowSpec, pick
from .windows import group_rows

__all__ = ["PaneHandler", "Panes", "SessionHandler"]


#: A time within this fraction of a pane below a pane boundary counts as on it:
#: ``0.009 / 0.003`` is ``2.9999999999999996`` in floats, and an event at 9 ms
#: belongs to the window that starts there. Far below a nanosecond for panes
#: under a second, and absorbed by rounding for epoch-sized quotients.
_SNAP = 1e-9


class Panes:
    """Where tumbling and sliding windows lie, counted in panes (pure arithmetic).

    Pane ``p`` covers ``[offset + p * pane, offset + (p + 1) * pane)`` with
    ``pane = gcd(size, slide)``; window ``j`` covers panes ``[j * S, j * S + W)``.
    The pane index of a time is the one comparison that assignment, lateness and
    closing all use, so they agree even where float bounds are an ulp off.
    """

    __slots__ = ("S", "W", "_dues", "offset", "pane")

    def __init__(self, size: float, slide: float, offset: float = 0.0) -> None:
        a = Fraction(size).limit_denominator(1_000_000_000)
        b = Fraction(slide).limit_denominator(1_000_000_000)
        if not a or not b:
            raise ValueError(f"size {size!r} and slide {slide!r} must be at least a nanosecond")
        g = Fraction(math.gcd(a.numerator * b.denominator, b.numerator * a.denominator))
        g /= a.denominator * b.denominator
        self.pane = float(g)
        self.W = int(a / g)  # panes per window
        self.S = int(b / g)  # panes per slide
        self.offset = offset
        self._dues: dict[int, float] = {}

    def index(self, t: float) -> int:
        return math.floor((t - self.offset) / self.pane + _SNAP)

    def indices(self, times: Sequence[float]) -> list[int]:
        if self.offset:
            times = list(map(sub, times, repeat(self.offset)))
        quotients = map(add, map(truediv, times, repeat(self.pane)), repeat(_SNAP))
        return list(map(math.floor, quotients))

    def first_open(self, c: int) -> int:
        """The first window still open when the closing index is ``c``
        (for ``c = p``: the first window holding pane ``p``)."""
        return (c - self.W) // self.S + 1

    def last_window(self, p: int) -> int:
        """The last window holding pane ``p``."""
        return p // self.S

    def closes(self, j: int) -> int:
        """Window ``j`` is closed once the closing index reaches this."""
        return j * self.S + self.W

    def start(self, j: int) -> float:
        return self.offset + j * self.S * self.pane

    def end(self, j: int) -> float:
        return self.offset + (j * self.S + self.W) * self.pane

    def due(self, c: int) -> float:
        """The earliest time whose pane index is at least ``c``."""
        t = self._dues.get(c)
        if t is None:
            if len(self._dues) > 64:
                self._dues.clear()
            t = self._dues[c] = self._due(c)
        return t

    def _due(self, c: int) -> float:
        guess = self.offset + (c - _SNAP) * self.pane
        # bracket the boundary within a few ulps of the guess, then bisect
        lo = hi = guess
        step = math.ulp(guess)
        while self.index(lo) >= c:
            lo -= step
            step *= 2
        step = math.ulp(guess)
        while self.index(hi) < c:
            hi += step
            step *= 2
        while True:
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                return hi
            if self.index(mid) >= c:
                hi = mid
            else:
                lo = mid


class _Pane:
    __slots__ = ("last", "position", "tickets", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.tickets: dict[Ticket, int] = {}
        self.last = -math.inf
        self.position: int | None = None


class _PaneKey:
    __slots__ = ("panes", "pending")

    def __init__(self) -> None:
        self.panes: dict[int, _Pane] = {}
        self.pending: set[int] = set()  # windows on the heap


class PaneHandler(WindowHandler):
    """Tumbling and sliding windows. Heap entries: ``(closing index, seq, key, window)``.

    An event is stored once, in its pane, and folded into the windows that are
    still open when it arrives: retained once per window beyond the first, so
    it ends when the last of them has ended.
    """

    def __init__(
        self,
        spec: WindowSpec,
        stage: str,
        observer: abc.ObserverBase[Batch],
        scheduler: abc.SchedulerBase | None,
        geo: Panes,
    ) -> None:
        super().__init__(spec, stage, observer, scheduler)
        self.geo = geo
        self.tumbling = geo.W == 1 and geo.S == 1
        self.keys: dict[Hashable, _PaneKey] = {}

    def limit(self, t: float) -> float:
        return self.geo.index(t)

    def due(self, order: Any) -> float:
        return self.geo.due(int(order))

    def latest_due(self) -> float | None:
        return self.geo.due(max(entry[0] for entry in self.heap)) if self.heap else None

    def late_reason(self, t: float, behind: float) -> str:
        return f"late event: its windows closed when the watermark passed {behind:g}"

    def _closing(self, max_time: float) -> int:
        return self.geo.index(self.watermark(max_time))

    def add_processing(self, batch: Batch, keys: Sequence[Hashable] | None, now: float) -> None:
        p = self.geo.index(now)
        n = len(batch.values)
        groups = {None: range(n)} if keys is None else group_rows(keys)
        folded = 0
        for k, rows in groups.items():
            folded += self._add(batch, k, p, rows, p, now)
        if folded:
            cast(Ticket, batch.ticket).fold(folded)

    def add_event(
        self,
        batch: Batch,
        keys: Sequence[Hashable] | None,
        times: list[float],
        ordered: bool,
        out: list[Out],
        late: Late,
    ) -> None:
        # Cut the batch where the closing index moves (windows close in between, as
        # if rows came one by one) and, when sorted, where the pane changes.
        geo = self.geo
        n = len(times)
        prev = self.max_time
        lateness = self.spec.lateness
        c = self._closing(times[0] if prev is None else prev)
        ps = None if ordered else geo.indices(times)
        shift: Callable[[float], float] | None = None if not lateness else (lambda t: t - lateness)
        folded = 0
        a = 0
        while a < n:
            threshold = geo.due(c + 1)  # the row whose time reaches it moves c
            if ordered:
                b = min(bisect_left(times, threshold, a, n, key=shift) + 1, n)
                p = geo.index(times[a])
                b = min(b, bisect_left(times, geo.due(p + 1), a, n))
                self.sweep(c, out)
                folded += self._add_pane(batch, keys, times, range(a, b), p, c, late)
                top = times[b - 1]
            else:
                assert ps is not None
                rest = islice(times, a, n)
                shifted = map(sub, rest, repeat(lateness)) if lateness else rest
                b = min(next(compress(count(a), map(ge, shifted, repeat(threshold))), n) + 1, n)
                self.sweep(c, out)
                folded += self._add_mixed(batch, keys, times, ps, a, b, c, late)
                top = max(islice(times, a, b))
            a = b
            if prev is None or top > prev:
                prev = top
            c = self._closing(prev)
        if folded:
            cast(Ticket, batch.ticket).fold(folded)

    def _add_pane(
        self,
        batch: Batch,
        keys: Sequence[Hashable] | None,
        times: list[float],
        rows: range,
        p: int,
        c: int,
        late: Late,
    ) -> int:
        """Sorted rows of one pane ``p`` while the closing index is ``c``."""
        geo = self.geo
        if p < geo.first_open(c) * geo.S:  # every window of the pane has closed
            behind = geo.end(geo.last_window(p))
            late.extend(zip(rows, repeat(behind)))
            return 0
        if keys is None:
            return self._add(batch, None, p, rows, c, times[rows.stop - 1])
        folded = 0
        for k, group in group_rows(keys[rows.start : rows.stop], rows).items():
            folded += self._add(batch, k, p, group, c, times[group[-1]])
        return folded

    def _add_mixed(
        self,
        batch: Batch,
        keys: Sequence[Hashable] | None,
        times: list[float],
        ps: list[int],
        a: int,
        b: int,
        c: int,
        late: Late,
    ) -> int:
        """Unsorted rows ``a..b`` while the closing index is ``c``."""
        geo = self.geo
        first_late = geo.first_open(c) * geo.S  # panes before it have closed
        rows: Sequence[int] = range(a, b)
        seg_ps = ps[a:b]
        seg_keys = None if keys is None else keys[a:b]
        if min(seg_ps) < first_late:
            late.extend((i, geo.end(geo.last_window(ps[i]))) for i in rows if ps[i] < first_late)
            rows = [i for i in rows if ps[i] >= first_late]
            if not rows:
                return 0
            seg_ps = [ps[i] for i in rows]
            seg_keys = None if keys is None else [keys[i] for i in rows]
        # Per key, then per pane: a key's rows of one batch mostly share a pane even
        # out of order, and grouping by (key, pane) tuples costs more than two passes.
        by_key: Mapping[Hashable, Sequence[int]] = (
            {None: rows} if seg_keys is None else group_rows(seg_keys, rows)
        )
        folded = 0
        for k, group in by_key.items():
            group_ps = pick(ps, group)
            p = min(group_ps)
            if p == max(group_ps):
                folded += self._add(batch, k, p, group, c, max(pick(times, group)))
                continue
            for p, rows_of_pane in group_rows(group_ps, group).items():
                last = max(pick(times, rows_of_pane))
                folded += self._add(batch, k, cast(int, p), rows_of_pane, c, last)
        return folded

    def _add(
        self, batch: Batch, k: Hashable, p: int, rows: Sequence[int], c: int, last: float
    ) -> int:
        """Rows of key ``k`` into pane ``p`` while the closing index is ``c``."""
        state = self.keys.get(k)
        if state is None:
            state = self.keys[k] = _PaneKey()
        pane = state.panes.get(p)
        if self.tumbling:  # one pane per window: no pending set, no retain
            extra = 0
            if pane is None:
                pane = state.panes[p] = _Pane()
                self.open += 1
                self.seq += 1
                heappush(self.heap, (p + 1, self.seq, k, p))
        else:
            geo = self.geo
            first = geo.first_open(p if p > c else c)
            extra = p // geo.S - first
            if pane is None:
                pane = state.panes[p] = _Pane()
                pending = state.pending
                for j in range(first, first + extra + 1):
                    if j not in pending:
                        pending.add(j)
                        self.open += 1
                        self.push(geo.closes(j), k, j)
        pane.values += pick(batch.values, rows)
        if last > pane.last:
            pane.last = last
        if batch.positions is not None:
            pane.position = batch.positions[rows[-1]]
        if batch.holds is None and batch.ticket is not None and not extra:
            tickets = pane.tickets
            ticket = batch.ticket
            tickets[ticket] = tickets.get(ticket, 0) + len(rows)
            return len(rows)
        return self.fold(batch, rows, pane.tickets, extra)

    def release(self, flow: Flow, partitions: frozenset[Hashable]) -> None:
        geo = self.geo
        for state in self.keys.values():
            for p, pane in state.panes.items():
                if not pane.tickets:
                    continue
                # a sliding pane's events end once per open window holding it
                times = (
                    1
                    if self.tumbling
                    else sum(1 for j in state.pending if j * geo.S <= p < j * geo.S + geo.W)
                )
                if release_tickets(pane.tickets, flow, partitions, times):
                    pane.values = []  # its windows close empty: finish() drops them

    def pop(self, entry: tuple[Any, int, Hashable, Any], limit: float, out: list[Out]) -> None:
        order, seq, k, j = entry
        geo = self.geo
        state = self.keys[k]
        state.pending.discard(j)
        panes = state.panes
        if self.tumbling:
            pane = panes.pop(j)
            values, tickets, last, position = pane.values, pane.tickets, pane.last, pane.position
        else:
            lo = j * geo.S
            hi = lo + geo.W
            inside = sorted(p for p in panes if lo <= p < hi)
            chosen = [panes[p] for p in inside]
            values = list(chain.from_iterable(pane.values for pane in chosen))
            tickets = {}
            for pane in chosen:
                for ticket, n in pane.tickets.items():
                    tickets[ticket] = tickets.get(ticket, 0) + n
            last = max(pane.last for pane in chosen)
            position = chosen[-1].position
            for p in inside:
                if p < lo + geo.S:  # window j was the last one holding pane p
                    del panes[p]
        if not panes:
            del self.keys[k]
        self.finish(k, values, tickets, geo.start(j), geo.end(j), last, position, order, seq, out)


class _Session:
    __slots__ = ("close", "first", "last", "open", "position", "seq", "spans", "tickets", "values")

    def __init__(self, t: float, gap: float, seq: int) -> None:
        self.values: list[Any] = []
        #: when each value arrived: ``base + r`` for each ``(base, rows)``, r in rows, in the
        #: order of ``values`` (ascending); read only when two sessions merge
        self.spans: list[tuple[int, Sequence[int]]] = []
        self.tickets: dict[Ticket, int] = {}
        self.first = t
        self.last = t
        self.close = t + gap
        self.open = True
        self.position: int | None = None
        self.seq = seq


class SessionHandler(WindowHandler):
    """Session windows. Per key, the open sessions sorted by time, at least
    ``gap`` apart (one at most in processing time). Heap entries:
    ``(close time, seq, key, session)``, one per session, pushed when it opens;
    popped early (the session grew), an entry is pushed back."""

    def __init__(
        self,
        spec: WindowSpec,
        stage: str,
        observer: abc.ObserverBase[Batch],
        scheduler: abc.SchedulerBase | None,
        gap: float,
    ) -> None:
        super().__init__(spec, stage, observer, scheduler)
        # A hair under the gap, for the reason of _SNAP: 7 ms + 3 ms is 10.000000000000002
        # ms in floats, and an event 3 ms after the last one must start a new session.
        self.gap = gap * (1 - _SNAP)
        self.keys: dict[Hashable, list[_Session]] = {}
        self.arrived = 0  # rows seen before the current batch: arrival numbers

    def limit(self, t: float) -> float:
        return t

    def due(self, order: Any) -> float:
        return float(order)

    def latest_due(self) -> float | None:
        closes = [s.close for sessions in self.keys.values() for s in sessions]
        return max(closes) if closes else None

    def late_reason(self, t: float, behind: float) -> str:
        return (
            f"late event: event time {t:g} is behind the watermark {behind:g} and before "
            "every open session of its key"
        )

    def _new(self, k: Hashable, t: float) -> _Session:
        self.seq += 1
        session = _Session(t, self.gap, self.seq)
        self.open += 1
        heappush(self.heap, (session.close, self.seq, k, session))
        return session

    def release(self, flow: Flow, partitions: frozenset[Hashable]) -> None:
        for sessions in self.keys.values():
            for session in sessions:
                if release_tickets(session.tickets, flow, partitions):
                    session.values = []  # it closes empty: finish() drops it
                    session.spans = []

    def pop(self, entry: tuple[Any, int, Hashable, Any], limit: float, out: list[Out]) -> None:
        _, _, k, session = entry
        if not session.open:
            return
        if session.close > limit:  # it grew since this entry was pushed
            self.push(session.close, k, session)
            return
        sessions = self.keys[k]
        sessions.remove(session)
        if not sessions:
            del self.keys[k]
        self._close(k, session, out)

    def _close(self, k: Hashable, s: _Session, out: list[Out]) -> None:
        s.open = False
        first, last = float(s.first), float(s.last)
        self.finish(k, s.values, s.tickets, first, last, last, s.position, s.close, s.seq, out)

    def add_processing(self, batch: Batch, keys: Sequence[Hashable] | None, now: float) -> None:
        groups = {None: range(len(batch.values))} if keys is None else group_rows(keys)
        folded = 0
        for k, rows in groups.items():
            sessions = self.keys.get(k)
            if sessions:  # still open: the sweep at ``now`` would have closed it
                session = sessions[-1]
            else:
                session = self._new(k, now)
                self.keys[k] = [session]
            folded += self._extend(batch, session, rows, now)
        self.arrived += len(batch.values)
        if folded:
            cast(Ticket, batch.ticket).fold(folded)

    def _extend(self, batch: Batch, session: _Session, rows: Sequence[int], last: float) -> int:
        session.values += pick(batch.values, rows)
        session.spans.append((self.arrived, rows))
        session.last = last
        session.close = last + self.gap
        if batch.positions is not None:
            session.position = batch.positions[rows[-1]]
        return self.fold(batch, rows, session.tickets, 0)

    def add_event(
        self,
        batch: Batch,
        keys: Sequence[Hashable] | None,
        times: list[float],
        ordered: bool,
        out: list[Out],
        late: Late,
    ) -> None:
        prev = self.max_time
        n = len(times)
        groups: Mapping[Hashable, Sequence[int]] = (
            {None: range(n)} if keys is None else group_rows(keys)
        )
        wm0 = self.watermark(times[0] if prev is None else prev)
        maxes: list[float] | None = None
        folded = 0
        for k, rows in groups.items():
            sessions = self.keys.get(k)
            if sessions is None:
                sessions = self.keys[k] = []
            # Sorted and at or after the watermark: no row is late or reaches back,
            # so the key's rows only extend its last session or open new ones.
            if (
                ordered
                and times[0] >= wm0
                and (not sessions or times[rows[0]] >= sessions[-1].last)
            ):
                folded += self._add_run(batch, k, sessions, rows, times)
            else:
                if maxes is None:
                    maxes = list(accumulate(times, max, initial=times[0] if prev is None else prev))
                folded += self._add_rows(batch, k, sessions, rows, times, maxes, out, late)
            if not sessions:
                del self.keys[k]
        self.arrived += n
        if folded:
            cast(Ticket, batch.ticket).fold(folded)

    def _add_run(
        self,
        batch: Batch,
        k: Hashable,
        sessions: list[_Session],
        rows: Sequence[int],
        times: list[float],
    ) -> int:
        """Sorted rows of one key: cut where the gap opens, with the loop in C."""
        gap = self.gap
        ts = pick(times, rows)
        m = len(ts)
        cuts = list(compress(count(1), map(ge, islice(ts, 1, None), map(add, ts, repeat(gap)))))
        folded = 0
        start = 0
        for stop in chain(cuts, (m,)):
            chunk = rows[start:stop]
            if sessions and ts[start] < sessions[-1].close:
                session = sessions[-1]
            else:
                session = self._new(k, ts[start])
                sessions.append(session)
            folded += self._extend(batch, session, chunk, ts[stop - 1])
            start = stop
        return folded

    def _add_rows(
        self,
        batch: Batch,
        k: Hashable,
        sessions: list[_Session],
        rows: Sequence[int],
        times: list[float],
        maxes: list[float],
        out: list[Out],
        late: Late,
    ) -> int:
        """Rows of one key, one by one, against the watermark before each."""
        gap = self.gap
        values = batch.values
        positions = batch.positions
        holds = batch.holds
        ticket = batch.ticket if holds is None else None
        base = self.arrived
        folded = 0
        for i in rows:
            t = times[i]
            wm = self.watermark(maxes[i])
            while sessions and sessions[0].close <= wm:
                self._close(k, sessions.pop(0), out)
            if t < wm and (not sessions or t < sessions[0].first):
                late.append((i, wm))
                continue
            at = 0
            m = len(sessions)
            while at < m and sessions[at].close <= t:
                at += 1
            if at < m and t > sessions[at].first - gap:
                session = sessions[at]
                if at + 1 < m and t > sessions[at + 1].first - gap:
                    self._merge(session, sessions.pop(at + 1))
            else:
                session = self._new(k, t)
                sessions.insert(at, session)
            session.values.append(values[i])
            session.spans.append((base, (i,)))
            if t < session.first:
                session.first = t
            elif t > session.last:
                session.last = t
                session.close = t + gap
            if positions is not None:
                session.position = positions[i]
            if ticket is not None:
                session.tickets[ticket] = session.tickets.get(ticket, 0) + 1
                folded += 1
            elif holds is not None:
                fold_holds((holds[i],), session.tickets)
        return folded

    def _merge(self, into: _Session, other: _Session) -> None:
        """``other``, the next session, joins ``into``: an event closed the gap."""
        other.open = False
        self.open -= 1
        # values stay in arrival order (each session's are): interleave the two
        a, b = _arrivals(into), _arrivals(other)
        if not a or not b or a[-1] < b[0]:
            into.values += other.values
            into.spans += other.spans
        elif b[-1] < a[0]:
            into.values = other.values + into.values
            into.spans = other.spans + into.spans
        else:
            pairs = zip(a, into.values, strict=True), zip(b, other.values, strict=True)
            both = list(merge(*pairs, key=itemgetter(0)))
            into.values = list(map(itemgetter(1), both))
            into.spans = [(0, list(map(itemgetter(0), both)))]
        for ticket, n in other.tickets.items():
            into.tickets[ticket] = into.tickets.get(ticket, 0) + n
        into.last = other.last
        into.close = other.close
        if other.position is not None:
            into.position = other.position


def _arrivals(session: _Session) -> list[int]:
    """The arrival numbers of a session's values, in order."""
    return [base + r for base, rows in session.spans for r in rows]
