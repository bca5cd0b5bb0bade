"""Tumbling and sliding windows: panes and the windows built from them.

:class:`Panes` says where the windows lie (pure arithmetic over pane indices);
:class:`PaneHandler` keeps each key's open panes and puts every window on the
engine's heap (:mod:`.engine`) with the pane index at which it closes.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Hashable, Mapping, Sequence
from fractions import Fraction
from heapq import heappush
from itertools import chain, compress, count, islice, repeat
from operator import add, ge, sub, truediv
from typing import Any, cast

from reactivex import abc

from ...events import Batch
from ...flow import Flow, Ticket, release_tickets
from ..toolkit import group_rows
from .engine import SNAP, Late, Out, WindowHandler, WindowSpec, pick

__all__ = ["PaneHandler", "Panes"]


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
        """The pane holding time ``t`` (times on a bound belong to the later pane, to the
        microsecond)."""
        return math.floor((t - self.offset) / self.pane + SNAP)

    def indices(self, times: Sequence[float]) -> list[int]:
        """The pane of each of ``times``, computed in C over the whole list."""
        if self.offset:
            times = list(map(sub, times, repeat(self.offset)))
        quotients = map(add, map(truediv, times, repeat(self.pane)), repeat(SNAP))
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
        """When window ``j`` starts."""
        return self.offset + j * self.S * self.pane

    def end(self, j: int) -> float:
        """When window ``j`` ends (exclusive)."""
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
        guess = self.offset + (c - SNAP) * self.pane
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
