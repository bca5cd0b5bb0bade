"""buffer: decouple a fast upstream from a slow downstream, losslessly or not.

**What "downstream is busy" means.** A row the buffer passes on is *in flight*
until downstream ends it (a sink stored it, a tool call finished, a filter
dropped it) or folds it into an aggregate (a window took it in). The buffer
lets at most ``in_flight`` rows be in flight at once; rows arriving while that
many are out *wait* in the buffer, in order, and go out as rows in flight end.

**How it knows.** The buffer re-tickets what it passes on: each batch it emits
carries a :class:`~rxagent.flow.Ticket` of its own, a *lease*, in place of the
rows' holds. Downstream ends and folds rows exactly as it would any others,
and the lease turns that into:

- a slot back to the buffer, and the row's credit back to its source, as soon
  as the row ends or is folded (so a count window larger than ``in_flight``
  after the buffer cannot deadlock it);
- the rows' own completion (their source tickets, their commit watermark) once
  *every* row of the lease has ended: a little later than without the buffer,
  never earlier.

Fan-out to several sinks (``retain``) makes each row end once per sink; the
lease counts a row busy until it could have been ended by all of them.

**Policies** for the rows that wait:

- ``block``: never drops. Waiting rows keep their credit, so once the source's
  credit is all held (downstream's ``in_flight`` plus the waiting rows) the
  source pauses: memory is bounded by the source credit, not by ``capacity``.
- ``drop_newest``: at most ``capacity`` rows wait; arrivals that find it full
  are dropped.
- ``drop_oldest``: at most ``capacity`` rows wait; an arrival that finds it
  full pushes the oldest waiting row out.
- ``latest``: at most one waiting row per key (a newer row replaces it, and
  keeps its key's place in line) and at most ``capacity`` keys waiting (beyond
  that the oldest waiting row is dropped). Decided row by row, so the rows
  kept do not depend on how the source cut its batches.

With the lossy policies the source is not slowed by downstream: rows that wait
or are dropped are *folded* as they come in (as a window folds what it takes
in): their credit returns to the source at once, while their completion waits
until they are passed on and ended, or dropped. Their memory is bounded by
``capacity``, the credit held by the buffer by ``in_flight``. Every dropped row
is ended and counted in
the stage's ``dropped`` and, per reason, in ``extra``: ``dropped_newest``,
``dropped_oldest``, ``dropped_replaced``. ``extra`` also shows ``waiting``,
``in_flight`` and their peaks.

**When rows go out.** Rows waiting are sent before new arrivals, at most
``in_flight - busy`` per emitted batch. When downstream ends rows from within
the buffer's own emission (a synchronous sink), the buffer loops instead of
recursing; when they end later (a tool call finishing), it sends the next rows
on its scheduler (``scheduler.schedule``), never from inside the sink's call.

**Completion** waits until no row waits (rows in flight are downstream's
business). **Errors and disposal** forget the waiting rows without ending them
(they were never processed: the watermark must not pass them).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from reactivex import Observable

from ..events import Batch, Event, Hold, end_hold
from ..exceptions import ConfigurationError, FlowError
from ..flow import Ticket
from .base import Emit, HoldingHandler, Observer, Operator, Scheduler, holding_stage
from .toolkit import KeyArg, batches_of, end_rows, key_groups, optional_key_function, positive_int

if TYPE_CHECKING:
    from ..context import PipelineContext, StageMetrics

__all__ = ["buffer"]

Policy = Literal["block", "latest", "drop_oldest", "drop_newest"]
_POLICIES = ("block", "latest", "drop_oldest", "drop_newest")


# -- columns -------------------------------------------------------------------------


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of ``batch`` (list slices, in C); they keep their holds."""
    if start == 0 and stop == len(batch.values):
        return batch

    def cut(column: Sequence[Any] | None) -> Any:
        return None if column is None else column[start:stop]

    return Batch(
        batch.values[start:stop],
        ctx=batch.ctx,
        source=batch.source,
        time=batch.time,
        ticket=batch.ticket,
        holds=cut(batch.holds),
        keys=cut(batch.keys),
        times=cut(batch.times),
        positions=cut(batch.positions),
        headers=cut(batch.headers),
        partition=batch.partition,
    )


def _end_slice(batch: Batch, start: int, stop: int) -> None:
    if batch.holds is None:
        if batch.ticket is not None and stop > start:
            batch.ticket.end(stop - start)
    else:
        for hold in batch.holds[start:stop]:
            end_hold(hold)


def _fold_credit(batch: Batch) -> None:
    """Return the rows' credit to their source now; their completion still waits."""
    if batch.holds is None:
        if batch.ticket is not None:
            batch.ticket.fold(len(batch.values))
    else:
        for hold in batch.holds:
            if isinstance(hold, Ticket):  # aggregates' credit returned when they folded
                hold.fold(1)


def _concat(parts: list[Batch]) -> Batch:
    """One batch of the rows of ``parts`` (all from one source partition)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    chain = itertools.chain.from_iterable

    def column(name: str) -> Any:
        columns = [getattr(p, name) for p in parts]
        if all(c is None for c in columns):
            return None
        pairs = zip(parts, columns, strict=True)
        return list(chain([None] * len(p.values) if c is None else c for p, c in pairs))

    shared = all(p.holds is None and p.ticket is first.ticket for p in parts)
    return Batch(
        list(chain(p.values for p in parts)),
        ctx=first.ctx,
        source=first.source,
        time=first.time,
        ticket=first.ticket if shared else None,
        holds=None if shared else list(chain(p.hold_list() for p in parts)),
        keys=column("keys"),
        times=column("times"),
        positions=column("positions"),
        headers=column("headers"),
        partition=first.partition,
    )


# -- the lease -----------------------------------------------------------------------------


class _Lease(Ticket):
    """The rows of one batch the buffer passed on.

    Counts them busy until each ends or folds (``busy``), returning a slot to
    the buffer and the row's credit to its source as it does; ends the rows'
    own holds once every row has ended. ``Ticket.__init__`` is not called: a
    lease belongs to no flow of its own, what it holds are its rows' holds.
    """

    __slots__ = ("busy", "credited", "folded", "holds", "origin", "owner", "rows")

    def __init__(self, owner: _Buffer, batch: Batch, *, credited: bool) -> None:
        n = len(batch.values)
        self.owner = owner
        self.credited = credited  # the rows' credit already returned (folded on waiting)
        self.rows = self.busy = self.pending = n
        self.folded = 0
        self.done = False
        self.released = False  # some rows were given up (release): so are the rows' holds
        # the rows' holds: one shared ticket (the common case), or one per row
        self.origin: Ticket | None = batch.ticket if batch.holds is None else None
        self.holds: list[Hold] | None = batch.holds

    def underlying(self) -> list[Hold]:
        """The holds this lease stands for: its rows' (one shared ticket, or one each)."""
        if self.holds is not None:
            return list(self.holds)
        return [] if self.origin is None else [self.origin]

    def end(self, n: int = 1) -> None:
        pending = self.pending - n
        if pending < 0:
            raise FlowError(
                f"rows buffer {self.owner.stage!r} passed on were ended more often than "
                "they were emitted: an operator ended an event it had passed on"
            )
        self.pending = pending
        self._settle()
        if pending == 0:
            self.done = True
            if self.released:  # a window gave rows up on a stop: the source replays them
                if self.holds is None:
                    if self.origin is not None:
                        self.origin.release(self.rows)
                else:
                    for hold in self.holds:
                        _release_hold(hold)
            elif self.holds is None:
                if self.origin is not None:
                    self.origin.end(self.rows)
            else:
                for hold in self.holds:
                    end_hold(hold)

    def fold(self, n: int = 1) -> None:
        self.folded = min(self.rows, self.folded + n)
        self._settle()

    def retain(self, n: int) -> None:
        if self.done:
            raise FlowError("cannot retain rows of a buffer lease that already completed")
        self.pending += n

    def _settle(self) -> None:
        # a row is busy until ended or folded; every unended row counts at least
        # one pending end, so this never undercounts what downstream holds
        busy = min(self.busy, self.rows - self.folded, self.pending)
        freed = self.busy - busy
        if not freed:
            return
        settled = self.rows - self.busy
        self.busy = busy
        if not self.credited:  # their credit returns now, their completion with the lease
            if self.holds is None:
                if self.origin is not None:
                    self.origin.fold(freed)
            else:
                for hold in self.holds[settled : settled + freed]:
                    if isinstance(hold, Ticket):
                        hold.fold(1)
        self.owner.freed(freed)

    def __repr__(self) -> str:
        return f"_Lease({self.owner.stage!r}, rows={self.rows}, busy={self.busy})"


def _release_hold(hold: Hold) -> None:
    """Give up what a row holds (:meth:`Ticket.release`): it ends uncommitted."""
    if isinstance(hold, Ticket):
        hold.release(1)
    elif hold is not None:
        for ticket, count in hold:
            ticket.release(count)


# -- the buffer ----------------------------------------------------------------------------


class _Buffer(HoldingHandler):
    def __init__(
        self,
        stage: str,
        policy: Policy,
        capacity: int,
        limit: int,
        key_fn: Callable[[Any], Hashable] | None,
        observer: Observer,
        scheduler: Scheduler | None,
    ) -> None:
        self.stage = stage
        self.policy = policy
        self.capacity = capacity
        self.limit = limit
        self.key_fn = key_fn
        self.observer = observer
        self.scheduler = scheduler
        self.ctx: PipelineContext | None = None
        self.metrics: StageMetrics | None = None
        self.busy = 0  # rows passed on, not yet ended or folded
        self.queue: deque[Batch] = deque()  # FIFO policies: waiting rows, in segments
        self.head = 0  # rows of queue[0] already gone
        self.latest: dict[Hashable, Event] = {}  # policy "latest": the waiting row per key
        self.waiting = 0
        self.active = False  # inside on_batch or a pump: freed slots are seen by its loop
        self.scheduled = False
        self.complete: Callable[[], None] | None = None
        self.closed = False

    # -- in ----------------------------------------------------------------------------

    def on_batch(self, batch: Batch, emit: Emit) -> None:
        if self.metrics is None:
            self.ctx = batch.ctx
            self.metrics = batch.ctx.stage(self.stage)
            for name in ("waiting", "peak_waiting", "in_flight", "peak_in_flight"):
                self.metrics.extra.setdefault(name, 0)
            if self.scheduler is None:
                self.scheduler = batch.ctx.scheduler
                if self.scheduler is None:
                    raise ConfigurationError(
                        f"buffer {self.stage!r} needs a scheduler: pass scheduler=, or run it "
                        "in a Pipeline or with a scheduler at subscribe time"
                    )
        n = len(batch.values)  # counted in by the stage
        self.active = True
        try:
            self.pump()  # rows waiting go first
            start = 0
            while start < n and not self.waiting and self.busy < self.limit:
                stop = min(n, start + self.limit - self.busy)
                self.send(_slice(batch, start, stop), credited=False)  # may free slots now
                start = stop
            if start < n:
                self.enqueue(_slice(batch, start, n))
                self.pump()
        finally:
            self.active = False

    def enqueue(self, batch: Batch) -> None:
        """Rows that must wait, under the policy."""
        n = len(batch.values)
        policy = self.policy
        if policy == "block":  # rows wait with their credit: the source pauses
            self.queue.append(batch)
            self.waiting += n
            self.note_waiting()
            return
        _fold_credit(batch)
        if policy == "drop_newest":
            room = max(0, self.capacity - self.waiting)
            if room:
                self.queue.append(_slice(batch, 0, min(room, n)))
                self.waiting += min(room, n)
            if n > room:
                _end_slice(batch, room, n)
                self.count_drops("dropped_newest", n - room)
        elif policy == "drop_oldest":
            self.queue.append(batch)
            self.waiting += n
            if self.waiting > self.capacity:
                self.drop_oldest(self.waiting - self.capacity)
        else:
            self.coalesce(batch)
        self.note_waiting()

    def coalesce(self, batch: Batch) -> None:
        """Policy ``latest``: each key keeps its newest row, in its place in line;
        decided row by row, so how the source cut its batches does not matter."""
        batch, groups = key_groups(batch, self.key_fn, self.stage)
        latest = self.latest
        new_keys = sum(1 for key in groups if key not in latest)
        if self.waiting + new_keys > self.capacity:
            self.coalesce_rows(batch, groups)
            return
        # no key is pushed out: per key, its last row replaces what waits
        replaced = 0
        older: list[int] = []
        for key, rows in groups.items():
            older.extend(rows[:-1])
            event = batch.event(rows[-1], take=True)
            old = latest.get(key)
            latest[key] = event
            if old is None:
                self.waiting += 1
            else:
                old.end()
                replaced += 1
        end_rows(batch, older)
        self.count_drops("dropped_replaced", replaced + len(older))

    def coalesce_rows(self, batch: Batch, groups: Mapping[Hashable, Sequence[int]]) -> None:
        """:meth:`coalesce` when waiting keys overflow ``capacity``: row by row, the
        oldest in line pushed out as each new key arrives."""
        keys: list[Hashable] = [None] * len(batch.values)
        for key, rows in groups.items():
            for i in rows:
                keys[i] = key
        line: dict[Hashable, Event | None] = dict(self.latest)  # None: a row of this batch
        rows_of: dict[Hashable, int] = {}
        gone: list[int] = []
        replaced = oldest = 0
        for i, key in enumerate(keys):
            if key in line:
                old = line[key]
                if old is None:
                    gone.append(rows_of[key])
                else:
                    old.end()
                line[key] = None
                replaced += 1
            else:
                line[key] = None
                self.waiting += 1
                if self.waiting > self.capacity:
                    first = next(iter(line))
                    pushed = line.pop(first)
                    if pushed is None:
                        gone.append(rows_of.pop(first))
                    else:
                        pushed.end()
                    self.waiting -= 1
                    oldest += 1
            rows_of[key] = i
        self.latest = {
            key: batch.event(rows_of[key], take=True) if event is None else event
            for key, event in line.items()
        }
        end_rows(batch, gone)
        self.count_drops("dropped_replaced", replaced)
        self.count_drops("dropped_oldest", oldest)

    def drop_oldest(self, count: int) -> None:
        queue = self.queue
        dropped = count
        while count:
            first = queue[0]
            size = len(first.values) - self.head
            if size <= count:
                _end_slice(first, self.head, len(first.values))
                queue.popleft()
                self.head = 0
                count -= size
            else:
                _end_slice(first, self.head, self.head + count)
                self.head += count
                count = 0
        self.waiting -= dropped
        self.count_drops("dropped_oldest", dropped)

    def count_drops(self, reason: str, count: int) -> None:
        if count:
            assert self.metrics is not None
            self.metrics.dropped += count
            extra = self.metrics.extra
            extra[reason] = extra.get(reason, 0) + count

    # -- out ---------------------------------------------------------------------------

    def pump(self) -> None:
        """Send waiting rows while downstream has room (ends during a send are
        seen by this loop: no recursion)."""
        while self.waiting and self.busy < self.limit and not self.closed:
            room = min(self.limit - self.busy, self.waiting)
            if self.policy == "latest":
                latest = self.latest
                events = [latest.pop(key) for key in list(itertools.islice(latest, room))]
                self.waiting -= room
                self.note_waiting()
                assert self.ctx is not None
                for batch in batches_of(events, self.ctx, self.stage, self.ctx.now()):
                    self.send(batch, credited=True)
            else:
                for batch in self.take(room):
                    self.send(batch, credited=self.policy != "block")
        self.maybe_complete()

    def take(self, count: int) -> list[Batch]:
        """The next ``count`` waiting rows, as one batch per source partition."""
        queue = self.queue
        parts: list[Batch] = []
        self.waiting -= count
        while count:
            first = queue[0]
            size = len(first.values) - self.head
            if size <= count:
                parts.append(_slice(first, self.head, len(first.values)))
                queue.popleft()
                self.head = 0
                count -= size
            else:
                parts.append(_slice(first, self.head, self.head + count))
                self.head += count
                count = 0
        self.note_waiting()
        return [
            _concat(list(run))
            for _, run in itertools.groupby(parts, key=lambda b: (b.source, b.partition))
        ]

    def send(self, batch: Batch, *, credited: bool) -> None:
        """Pass rows on under a lease (``credited``: their credit already returned)."""
        n = len(batch.values)
        lease = _Lease(self, batch, credited=credited)
        out = Batch(
            batch.values,
            ctx=batch.ctx,
            source=batch.source,
            time=batch.time,
            ticket=lease,
            keys=batch.keys,
            times=batch.times,
            positions=batch.positions,
            headers=batch.headers,
            partition=batch.partition,
        )
        self.busy += n
        metrics = self.metrics
        assert metrics is not None
        metrics.events_out += n
        extra = metrics.extra
        extra["in_flight"] = self.busy
        if self.busy > extra["peak_in_flight"]:
            extra["peak_in_flight"] = self.busy
        self.observer.on_next(out)

    def freed(self, n: int) -> None:
        """Downstream ended or folded ``n`` rows in flight."""
        self.busy -= n
        if self.metrics is not None:
            self.metrics.extra["in_flight"] = self.busy
        if self.closed or not self.waiting or self.active or self.scheduled:
            return
        # not from inside our own send: go on later, never inside the caller
        assert self.scheduler is not None
        self.scheduled = True
        self.scheduler.schedule(self.on_schedule)

    def on_schedule(self, _scheduler: Scheduler, _state: Any = None) -> None:
        self.scheduled = False
        if self.closed:
            return
        self.active = True
        try:
            self.pump()
        except Exception as error:  # never raise into the loop
            self.closed = True
            self.observer.on_error(error)
        finally:
            self.active = False

    def note_waiting(self) -> None:
        assert self.metrics is not None
        extra = self.metrics.extra
        extra["waiting"] = self.waiting
        if self.waiting > extra["peak_waiting"]:
            extra["peak_waiting"] = self.waiting

    # -- lifecycle -------------------------------------------------------------------------

    def source_completed(self, complete: Callable[[], None]) -> None:
        self.complete = complete
        self.maybe_complete()

    def maybe_complete(self) -> None:
        if self.complete is not None and not self.waiting:
            complete, self.complete = self.complete, None
            complete()

    def dispose(self) -> None:
        # waiting rows are forgotten, not ended: see the module docstring
        self.closed = True
        self.queue.clear()
        self.latest.clear()


def buffer(
    capacity: int,
    policy: Policy = "block",
    *,
    in_flight: int | None = None,
    key: KeyArg = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
) -> Operator:
    """Let downstream hold at most ``in_flight`` rows (default ``capacity``) at
    once; rows arriving meanwhile wait here, under ``policy`` (see the module
    docstring): ``block`` (no drop; the source pauses once its credit is held),
    ``drop_newest`` / ``drop_oldest`` (at most ``capacity`` wait) or ``latest``
    (the newest row per ``key``, at most ``capacity`` keys).

    ``key`` (``latest`` only) is a field name or function of the value,
    computed for the rows that wait; without it the event's key is used.
    ``scheduler`` is where rows go out after downstream ended some later
    (default: the one the stage is subscribed with).

    ::

        -abcde----|   buffer(2, "drop_newest", in_flight=1), downstream busy 3 frames a row
        -a--b--c--|   d and e found a and b... waiting full: dropped

    Args:
        capacity: most rows waiting here (for ``latest``: most keys waiting);
            at least 1.
        policy: what happens to rows arriving while downstream holds
            ``in_flight``: ``"block"`` (default; they wait, and the source
            pauses once its credit is all held: no loss), ``"drop_newest"`` /
            ``"drop_oldest"`` (a full buffer drops the arriving / the oldest
            waiting row) or ``"latest"`` (each key keeps only its newest row).
        in_flight: most rows downstream holds at once (default: ``capacity``).
        key: ``latest`` only: what groups rows, a field name or a function of
            the value (default: the event's key).
        scheduler: where waiting rows are sent on once downstream ends some
            (default: the one the stage is subscribed with).
        name: the stage's name in status, metrics and dead letters (default:
            ``buffer``, numbered when a pipeline has several: ``buffer#2``).
    """
    op = "buffer"
    positive_int(op, "capacity", capacity)
    limit = capacity if in_flight is None else positive_int(op, "in_flight", in_flight)
    if policy not in _POLICIES:
        raise ConfigurationError(
            f"{op}: policy must be one of {', '.join(map(repr, _POLICIES))}, got {policy!r}"
        )
    if key is not None and policy != "latest":
        raise ConfigurationError(f"{op}: key only applies to policy 'latest', not {policy!r}")
    key_fn = optional_key_function(op, "key", key)

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        return holding_stage(
            source,
            lambda o, s: _Buffer(stage, policy, capacity, limit, key_fn, o, scheduler or s),
            stage,
        )

    return Operator(op, build, name)
