"""Reorder: put events back in sequence order per key, waiting a bounded time for gaps.

Feeds that fan in over several connections or partitions deliver a key's
events slightly out of order. ``reorder(seq=..., max_delay=...)`` emits each
key's events in sequence order: an event ahead of the next expected sequence
number is *held* (it keeps its credit, so a long gap slows the source instead of
growing memory) until the missing ones arrive, or until it has waited
``max_delay`` seconds. Then the stage gives up on the missing numbers: it
publishes a :class:`Gap` notice and moves on to the lowest number it holds.

How gaps are reported: always on the operator's ``gaps`` stream (an Rx
observable of :class:`Gap`), and, with ``emit_gaps=True``, also as a ``Gap`` row
in the main stream, just before the event that follows the gap, so a downstream
stage (or an LLM reading the state) sees where data is missing. A gap row holds
no credit. By default the main stream carries only the events.

An event whose sequence number was already emitted or skipped, or that repeats
one being held, is dropped: ended and counted in the stage's ``dropped``.

Keys that come and go: a key with nothing held is forgotten once it has been idle
for ``key_idle`` seconds (between one and two times that, swept once per
``key_idle``), and past ``max_keys`` keys the ones idle longest (untouched since the
last sweep, then the oldest) go first; keys holding events are never forgotten.
Each eviction is counted in the stage's ``keys_evicted`` (``keys`` is the count
held). A forgotten key that comes back starts its sequence afresh, as a new key
does. Cost: one set insertion per key and batch, and one pass over the keys per
sweep.

Cost: a batch whose keys are all in order (the common case) is checked with
list comparisons in C and passed on as it is. A batch with disorder takes the
general path: its rows become tuples (in C), and a per-row loop handles them;
without keys, the runs between two disorders are found with comparisons in C
and skipped whole, so the loop only sees the rows around each disorder.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, count, islice
from operator import itemgetter, ne
from typing import TYPE_CHECKING, Any, TypeAlias

from reactivex import Observable, abc
from reactivex.disposable import SerialDisposable
from reactivex.subject import Subject

from ..clock import scheduler_clock
from ..events import Batch, Hold, end_hold
from ..exceptions import ConfigurationError
from .base import BatchHandler, Emit, Operator, batch_stage
from .toolkit import (
    KeyArg,
    KeyFunction,
    apply,
    bump,
    group_rows,
    key_function,
    ok_rows,
    optional_key_function,
    optional_positive_int,
    optional_seconds,
    publish,
    require_scheduler,
    seconds,
)

if TYPE_CHECKING:
    from ..context import PipelineContext, StageMetrics

__all__ = ["Gap", "ReorderOperator", "reorder"]

_FIELD_OR_FUNCTION = "a field name or a function"

# Clocks that pass through datetime round to microseconds: a deadline is met
# when the clock is within this of it.
_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers ``expected`` up to ``got - 1`` of ``key`` never arrived
    within the delay; the stream went on at ``got``."""

    key: Hashable
    expected: int
    got: int

    @property
    def missing(self) -> int:
        """How many sequence numbers were skipped."""
        return self.got - self.expected


class ReorderOperator(Operator):
    """The :func:`reorder` operator; :attr:`gaps` streams its gap notices."""

    __slots__ = ("gaps",)

    def __init__(
        self,
        build: Callable[[str, Observable[Batch]], Observable[Batch]],
        name: str | None,
        gaps: Subject[Gap],
    ) -> None:
        super().__init__("reorder", build, name)
        #: Every gap of every subscription of this operator; never completes.
        self.gaps: Subject[Gap] = gaps

    def named(self, name: str) -> ReorderOperator:
        return ReorderOperator(self._build, name, self.gaps)


#: A row kept out of its batch: value, key, time, position, headers, hold, source,
#: partition (a tuple costs a fraction of an Event). A gap row has source None.
_Row: TypeAlias = tuple[
    Any,
    Hashable,
    "float | None",
    "int | None",
    "Mapping[str, Any] | None",
    Hold,
    "str | None",
    Hashable,
]


def _transpose(batch: Batch) -> list[_Row]:
    """The batch's rows as tuples (the loop in C)."""
    none = itertools.repeat(None)
    return list(
        zip(
            batch.values,
            none if batch.keys is None else batch.keys,
            none if batch.times is None else batch.times,
            none if batch.positions is None else batch.positions,
            none if batch.headers is None else batch.headers,
            itertools.repeat(batch.ticket) if batch.holds is None else batch.holds,
            itertools.repeat(batch.source),
            itertools.repeat(batch.partition),
        )
    )


def _rows_batch(ctx: PipelineContext, rows: list[_Row], source: str, partition: Hashable) -> Batch:
    """One batch from rows, the columns transposed in C."""
    n = len(rows)
    values, keys, times, positions, headers, holds, _, _ = map(list, zip(*rows, strict=True))
    return Batch(
        values,
        ctx=ctx,
        source=source,
        time=ctx.now(),
        holds=holds,
        keys=keys if keys.count(None) < n else None,
        times=times if times.count(None) < n else None,
        positions=positions if positions.count(None) < n else None,
        headers=headers if headers.count(None) < n else None,
        partition=partition,
    )


class _KeyOrder:
    """One key's place in its sequence and the events held ahead of it."""

    __slots__ = ("arrivals", "expected", "held", "seqs")

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self.held: dict[int, _Row] = {}
        self.seqs: list[int] = []  # heap of the held numbers
        self.arrivals: deque[tuple[float, int]] = deque()  # (arrival, seq), arrival order


@dataclass(frozen=True, slots=True)
class _Options:
    """A reorder operator's checked arguments (see :func:`reorder`)."""

    seq_fn: KeyFunction
    key_fn: KeyFunction | None
    start: int | None
    max_delay: float
    emit_gaps: bool
    key_idle: float | None
    max_keys: int | None
    gaps: Subject[Gap]


class _Reorder(BatchHandler):
    """One subscription of a reorder stage: per key, its place in the sequence and
    the events held ahead of it (``keys``), their deadlines on one timer."""

    def __init__(
        self,
        stage: str,
        options: _Options,
        observer: abc.ObserverBase[Batch],
        sched: abc.SchedulerBase,
    ) -> None:
        self.stage = stage
        self.options = options
        self.observer = observer
        self.sched = sched
        self.now = scheduler_clock(sched)
        self.keys: dict[Hashable, _KeyOrder] = {}
        # (deadline, tie-breaker, key): when a held event of a key is due;
        # entries whose event has gone since are skipped when they come up
        self.deadlines: list[tuple[float, int, Hashable]] = []
        self.counter = itertools.count()
        self.timer = SerialDisposable()
        self.timer_at: float | None = None
        self.like: Batch | None = None  # for ctx, source and time of timer batches
        self.held = 0
        # keys touched since the last sweep; the others with nothing held go
        self.recent: set[Hashable] = set()
        self.sweep_at: float | None = None

    # -- batches ----------------------------------------------------------

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        metrics = batch.ctx.stage(self.stage)
        batch, seqs, keys = self._numbered(batch)
        self.like = batch.shell()  # not the batch: its values die with it
        if not seqs:
            return
        options = self.options
        if options.key_idle is not None or (
            options.max_keys is not None and len(self.keys) > options.max_keys
        ):
            self._maybe_sweep(metrics)
        if self._in_order(seqs, keys):
            metrics.events_out += len(seqs)
            emit(batch)
            return
        now = self.now()
        out: list[_Row] = []
        direct: list[int] = []
        self._rows(batch, seqs, keys, now, out, direct, metrics)
        self._expire(now, out, metrics)
        if len(direct) == len(out):  # nothing released from earlier batches, no gaps
            if direct:
                metrics.events_out += len(direct)
                emit(batch.take(direct))
        else:
            self._emit(out, emit, batch)
        self._arm(now)

    def _numbered(self, batch: Batch) -> tuple[Batch, list[Any], Sequence[Hashable] | None]:
        """Each row's sequence number and key; rows whose functions raised were
        dead-lettered (which ended them) and leave the batch."""
        stage = self.stage
        seqs, ok = apply(batch, self.options.seq_fn, stage)
        if ok:
            keep = ok_rows(ok)
            batch = batch.take(keep)
            seqs = [seqs[i] for i in keep]
        key_fn = self.options.key_fn
        if key_fn is None:
            return batch, seqs, batch.keys
        keys, ok = apply(batch, key_fn, stage)
        if ok:
            keep = ok_rows(ok)
            batch = batch.take(keep)
            seqs = [seqs[i] for i in keep]
            keys = [keys[i] for i in keep]
        return batch, seqs, keys

    def _in_order(self, seqs: list[Any], keys: Sequence[Hashable] | None) -> bool:
        """Whether every key's numbers continue its sequence, with nothing held:
        then the batch passes as it is (checked with comparisons in C)."""
        groups: Mapping[Hashable, Sequence[int]] = (
            {None: range(len(seqs))} if keys is None else group_rows(keys)
        )
        found = self.keys
        start = self.options.start
        self.recent.update(groups)
        checked: list[tuple[_KeyOrder | None, Hashable, int]] = []
        for k, rows in groups.items():
            state = found.get(k)
            if state is not None and state.held:
                return False
            first = seqs[rows[0]]
            expected = None if state is None else state.expected
            if expected is None:
                expected = start if start is not None else first
            if first != expected or type(first) is not int:
                return False
            m = len(rows)
            if m > 1:
                mine = seqs if keys is None else list(itemgetter(*rows)(seqs))
                if mine != list(range(expected, expected + m)):
                    return False
            checked.append((state, k, expected + m))
        for state, k, nxt in checked:
            if state is None:
                found[k] = _KeyOrder(nxt)
            else:
                state.expected = nxt
        return True

    def _rows(
        self,
        batch: Batch,
        seqs: list[Any],
        keys: Sequence[Hashable] | None,
        now: float,
        out: list[_Row],
        direct: list[int],
        metrics: StageMetrics,
    ) -> None:
        """The general path, in arrival order: rows passed on at once go to
        ``out`` and their indices to ``direct``; early rows are held.

        Without keys, runs of rows that continue the sequence (everything
        between two disorders) are found with comparisons in C and passed
        on whole; the Python loop only sees the rows around a disorder."""
        found = self.keys
        ctx = batch.ctx
        stage = self.stage
        start = self.options.start
        deadline = now + self.options.max_delay
        rows = _transpose(batch)
        timed: set[Hashable] = set()  # keys given a deadline for this batch
        n = len(seqs)
        i = 0
        while i < n:
            s = seqs[i]
            if type(s) is not int:
                ctx.dead_letter(
                    batch.event(i, take=True),
                    stage,
                    TypeError(f"reorder {stage!r}: seq must be an int, got {s!r}"),
                )
                i += 1
                continue
            k = None if keys is None else keys[i]
            state = found.get(k)
            if state is None:
                state = found[k] = _KeyOrder(start)
                self.recent.add(k)
            expected = state.expected
            if expected is None:
                expected = state.expected = s
            if s < expected or s in state.held:
                metrics.dropped += 1
                batch.end_row(i)
            elif s == expected:
                out.append(rows[i])
                direct.append(i)
                state.expected = s + 1
                if state.held:
                    self._release_run(state, out)
            else:
                self._hold(k, state, s, rows[i], now)
                if k not in timed:  # one deadline per key and batch: same arrival
                    timed.add(k)
                    heapq.heappush(self.deadlines, (deadline, next(self.counter), k))
            i += 1
            if keys is None and i < n and not state.held:
                # the next rows continuing the sequence, up to the first that does not
                e = state.expected
                assert e is not None
                j = next(compress(count(i), map(ne, islice(seqs, i, None), count(e))), n)
                if j > i:
                    out.extend(rows[i:j])
                    direct.extend(range(i, j))
                    state.expected = e + (j - i)
                    i = j
        metrics.extra["held"] = self.held

    def _hold(self, k: Hashable, state: _KeyOrder, s: int, row: _Row, now: float) -> None:
        """Hold ``row``, ahead of its key's sequence, until the numbers before it come."""
        state.held[s] = row
        heapq.heappush(state.seqs, s)
        state.arrivals.append((now, s))
        self.held += 1

    def _maybe_sweep(self, metrics: StageMetrics) -> None:
        """Forget keys idle for a whole sweep period (nothing held), and past
        ``max_keys`` the longest idle, down to 90 % of it (so a full table is
        not swept on every batch)."""
        max_keys = self.options.max_keys
        over = max_keys is not None and len(self.keys) > max_keys
        if self.options.key_idle is not None:
            self._sweep_idle(self.options.key_idle, metrics)
        if over and max_keys is not None and len(self.keys) > max_keys:
            self._trim(max_keys, metrics)
        metrics.extra["keys"] = len(self.keys)

    def _sweep_idle(self, key_idle: float, metrics: StageMetrics) -> None:
        """Once per ``key_idle``: forget the keys not touched since the last sweep."""
        now = self.now()
        if self.sweep_at is None:
            self.sweep_at = now + key_idle
        elif now + _SLACK >= self.sweep_at:
            keys, recent = self.keys, self.recent
            gone = [k for k, st in keys.items() if not st.held and k not in recent]
            for k in gone:
                del keys[k]
            self._evicted(len(gone), metrics)
            recent.clear()
            self.sweep_at = now + key_idle

    def _trim(self, max_keys: int, metrics: StageMetrics) -> None:
        """Past ``max_keys``: forget the longest idle keys, down to 90 % of it."""
        keys, recent = self.keys, self.recent
        excess = len(keys) - max_keys * 9 // 10
        idle = [k for k, st in keys.items() if not st.held and k not in recent]
        if len(idle) < excess:  # then the oldest of the active ones
            idle += [k for k, st in keys.items() if not st.held and k in recent]
        for k in idle[:excess]:
            del keys[k]
            recent.discard(k)
        self._evicted(min(excess, len(idle)), metrics)

    @staticmethod
    def _evicted(n: int, metrics: StageMetrics) -> None:
        if n:
            bump(metrics, "keys_evicted", n)

    def _release_run(self, state: _KeyOrder, out: list[_Row]) -> None:
        """Emit the held events that now continue the sequence."""
        held = state.held
        expected = state.expected
        assert expected is not None
        while expected in held:
            out.append(held.pop(expected))
            heapq.heappop(state.seqs)  # the lowest held is always the expected one
            self.held -= 1
            expected += 1
        state.expected = expected

    def _skip(self, k: Hashable, state: _KeyOrder, out: list[_Row], metrics: StageMetrics) -> None:
        """Give up on the missing numbers: go on at the lowest held one."""
        got = state.seqs[0]
        expected = state.expected
        assert expected is not None
        gap = Gap(k, expected, got)
        publish(self.options.gaps, gap, self.stage)
        bump(metrics, "gaps")
        bump(metrics, "missing", gap.missing)
        if self.options.emit_gaps:
            out.append((gap, k, None, None, None, None, None, None))
        state.expected = got
        self._release_run(state, out)

    def _expire(self, now: float, out: list[_Row], metrics: StageMetrics) -> None:
        """Skip the gaps of every key holding an event that has waited enough."""
        limit = now - self.options.max_delay + _SLACK
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now + _SLACK:
            k = heapq.heappop(deadlines)[2]
            state = self.keys.get(k)
            if state is None:
                continue
            arrivals = state.arrivals
            while arrivals:
                arrived, s = arrivals[0]
                if s not in state.held:
                    arrivals.popleft()  # released already
                elif arrived <= limit:
                    self._skip(k, state, out, metrics)
                else:
                    break
        metrics.extra["held"] = self.held

    # -- emitting and timers ------------------------------------------------

    def _emit(self, out: list[_Row], emit: Emit, batch: Batch | None) -> None:
        """Emit rows as batches, one per run of the same source and partition
        (positions are only meaningful within one)."""
        like = batch if batch is not None else self.like
        if not out or like is None:
            return
        ctx = like.ctx
        sources = [r[6] for r in out]
        gap_rows = sources.count(None)
        ctx.stage(self.stage).events_out += len(out) - gap_rows
        origins = set(zip(sources, (r[7] for r in out), strict=True))
        origins.discard((None, None))
        if len(origins) <= 1:
            src, part = origins.pop() if origins else (like.source, like.partition)
            assert src is not None
            emit(_rows_batch(ctx, out, src, part))
            return
        origin = (like.source, like.partition)
        run: list[_Row] = []
        for row in out:
            where = origin if row[6] is None else (row[6], row[7])
            if where != origin and run:
                emit(_rows_batch(ctx, run, origin[0], origin[1]))
                run = []
            origin = (where[0] or like.source, where[1])
            run.append(row)
        emit(_rows_batch(ctx, run, origin[0], origin[1]))

    def _arm(self, now: float) -> None:
        """Keep a timer for the earliest deadline."""
        deadlines = self.deadlines
        if not deadlines:
            return
        due = deadlines[0][0]
        if self.timer_at is not None and self.timer_at <= due:
            return
        self.timer_at = due
        self.timer.disposable = self.sched.schedule_relative(
            max(0.0, due - now), self._on_timer, due
        )

    def _on_timer(self, _s: abc.SchedulerBase, due: float | None = None) -> None:
        try:
            self.timer_at = None
            like = self.like
            if like is None:
                return
            # the timer is for ``due``: a clock rounded a hair short still counts
            now = max(self.now(), due if due is not None else 0.0)
            out: list[_Row] = []
            self._expire(now, out, like.ctx.stage(self.stage))
            self._emit(out, self.observer.on_next, None)
            self._arm(now)
        except Exception as error:  # never raise into the loop
            self.observer.on_error(error)

    # -- the end ------------------------------------------------------------

    def on_completed(self, emit: Emit) -> None:
        self.timer.dispose()
        like = self.like
        if like is None:
            return
        metrics = like.ctx.stage(self.stage)
        out: list[_Row] = []
        for k, state in self.keys.items():
            while state.held:
                self._skip(k, state, out, metrics)
        self.deadlines.clear()
        metrics.extra["held"] = self.held
        self._emit(out, emit, None)

    def dispose(self) -> None:
        self.timer.dispose()
        # unsubscribed: these events will not be processed, so their processing is over
        for state in self.keys.values():
            for row in state.held.values():
                end_hold(row[5])
            state.held.clear()
            state.seqs.clear()
            state.arrivals.clear()
        self.deadlines.clear()
        self.held = 0


def reorder(
    seq: str | int | Callable[[Any], int],
    *,
    max_delay: float,
    key: KeyArg = None,
    start: int | None = None,
    emit_gaps: bool = False,
    key_idle: float | None = 600.0,
    max_keys: int | None = 100_000,
    scheduler: abc.SchedulerBase | None = None,
    name: str | None = None,
) -> ReorderOperator:
    """Emit each key's events in ``seq`` order, holding early ones up to ``max_delay``.

    When a number is still missing after ``max_delay``, a :class:`Gap` is
    published and the stream moves on. Evictions of idle keys are counted in
    ``keys_evicted`` (see the module docstring). On completion, held events are
    emitted in order (with their gaps). On disposal they are ended. A ``seq``
    function that raises or returns a non-int sends that event to dead letters.

    ::

        -a-c-b-e---------|   reorder("n", max_delay=0.005, emit_gaps=True)
        -a---(bc)---(ge)-|   a, b, c, e have n = 1, 2, 3, 5; g = Gap(None, 4, 5)

    Args:
        seq: a field name or a function of the value giving the event's sequence
            number (an int).
        max_delay: seconds an event may wait for the numbers before it; then a
            :class:`Gap` is published and the stream moves on (``0``: never wait).
        key: sequences are per key: a field name or a function of the value
            (default: the event's key, ``key_by``; events without a key share one
            sequence).
        start: the first number of every key's sequence; None (default): a
            key's first event starts it (an earlier number arriving later is
            dropped).
        emit_gaps: also put each :class:`Gap` in the main stream (default: only
            on the returned operator's ``gaps`` stream).
        key_idle: seconds after which a key with nothing held is forgotten
            (default 600; None: never).
        max_keys: most keys remembered, the longest idle forgotten first
            (default 100,000; None: no bound).
        scheduler: the clock ``max_delay`` and ``key_idle`` run on (default: the
            pipeline's; a test's virtual time).
        name: the stage's name in status, metrics and dead letters (default:
            ``reorder``, numbered when a pipeline has several: ``reorder#2``).
    """
    op = "reorder"
    seq_fn = key_function(op, "seq", seq, takes=_FIELD_OR_FUNCTION)
    key_fn = optional_key_function(op, "key", key, takes=_FIELD_OR_FUNCTION)
    seconds(op, "max_delay", max_delay, zero_ok=True)
    optional_seconds(op, "key_idle", key_idle)
    optional_positive_int(op, "max_keys", max_keys)
    if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
        raise ConfigurationError(f"reorder: start must be an int or None, got {start!r}")
    gaps: Subject[Gap] = Subject()
    options = _Options(seq_fn, key_fn, start, max_delay, emit_gaps, key_idle, max_keys, gaps)

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        def make(
            observer: abc.ObserverBase[Batch], at_subscribe: abc.SchedulerBase | None
        ) -> _Reorder:
            sched = require_scheduler(op, stage, scheduler, at_subscribe)
            return _Reorder(stage, options, observer, sched)

        return batch_stage(source, make, stage)

    return ReorderOperator(build, name, gaps)
