"""Session windows: a key's events less than ``gap`` apart share a window.

:class:`SessionHandler` keeps each key's open sessions, sorted by time, and puts
every session on the engine's heap (:mod:`.engine`) with the time it closes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from heapq import heappush, merge
from itertools import accumulate, chain, compress, count, islice, repeat
from operator import add, ge, itemgetter
from typing import Any, cast

from reactivex import abc

from ...events import Batch, fold_holds
from ...flow import Flow, Ticket, release_tickets
from ..toolkit import group_rows
from .engine import SNAP, Late, Out, WindowHandler, WindowSpec, pick

__all__ = ["SessionHandler"]


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
        # A hair under the gap, for the reason of SNAP: 7 ms + 3 ms is 10.000000000000002
        # ms in floats, and an event 3 ms after the last one must start a new session.
        self.gap = gap * (1 - SNAP)
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
