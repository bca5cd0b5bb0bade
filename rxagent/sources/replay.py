"""The replay source: plays a recording back into a pipeline.

A recording (written by :class:`~rxagent.sinks.record.RecordSink`, format in
:mod:`rxagent.recording`) holds each event with the time the recorder received
it. :class:`ReplaySource` emits the same values, keys, event times, headers and
source positions, in three tempos:

* as fast as the pipeline takes them (``speed=None``, the default), still
  bounded by credit;
* in real time, the recorded gaps divided by ``speed`` (``speed=2`` is twice as
  fast), with ``asyncio.sleep``; the events whose time has come leave together
  in one batch, so a burst costs one sleep, not one per event;
* in virtual time (``virtual=True``): each emission is scheduled on the
  pipeline's scheduler at its recorded offset, so under a ``TestScheduler`` an
  hour of recording replays in milliseconds while every timer of the pipeline
  (windows, throttles) fires at the right virtual moment.

Replays are idempotent in a :class:`~rxagent.state.StateStore`: an event
keeps the position it was recorded with (its source offset, or its line number
when it had none), and by default the replay takes the recorded source's name,
so a store that has seen the live feed, or an earlier replay, ignores it.

File reading and decoding run in a worker thread, one chunk of lines per hop,
so a slow disk never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from reactivex.abc import DisposableBase, SchedulerBase
from reactivex.scheduler import VirtualTimeScheduler

from ..events import Event, Position
from ..exceptions import ConfigurationError
from ..recording import Header, Record, RecordingError, RecordingReader, decode_line
from .base import Emitter, Source

__all__ = ["ReplaySource", "replay"]

log = logging.getLogger("rxagent")

OnError = Literal["raise", "dead_letter"]
_ON_ERROR = ("raise", "dead_letter")
_T = TypeVar("_T")


class ReplaySource(Source):
    """Emits the events of the recording at ``path`` (see the module docstring).

    ``speed``: ``None`` replays as fast as credit allows; a number paces the
    replay by the recorded gaps divided by it. ``virtual=True`` schedules the
    emissions on the pipeline's scheduler instead (``speed`` defaults to 1 there);
    with a virtual-time scheduler and ``drive=True`` the replay also advances that
    scheduler's clock itself, to each emission in turn, so
    ``await pipeline.start(scheduler=TestScheduler())`` then ``await
    pipeline.wait()`` runs the whole recording in virtual time. It drives the
    clock only up to its last emission: a timer due later (a ``delay`` after the
    last event) waits for the test to advance the clock. With ``drive=False`` the
    test advances the clock (``scheduler.advance_to``) and the replay only
    schedules, as far ahead as its credit allows.

    ``name`` defaults to the source named in the recording's header, so replayed
    positions are those of the live run. ``source`` picks whose events to replay
    when a file holds several sources (default: the header's; ``"*"``: all of
    them, whose positions may then collide). Gaps between sessions appended to one
    file are not replayed, and a recorder clock that stepped back counts as no gap.

    ``on_error``: a line that cannot be read stops the replay with a
    :class:`~rxagent.recording.RecordingError` naming the file and line
    (``"raise"``), or goes to dead letters with the reason while the replay goes
    on (``"dead_letter"``).

    Args:
        path: the recording (a JSON-lines file written by
            :class:`~rxagent.sinks.RecordSink`).
        speed: None (default): as fast as credit allows; a number: the recorded
            gaps divided by it (``1`` is real time, ``10`` ten times faster).
        virtual: schedule the emissions on the pipeline's scheduler, at their
            recorded times (``speed`` defaults to 1 then).
        drive: with ``virtual`` and a virtual-time scheduler, advance that
            scheduler's clock to each emission (default True); False leaves the
            clock to the test.
        name: the source's name (default: the one in the recording's header, so
            positions are those of the live run).
        source: whose events to replay when the file holds several sources
            (default: the header's; ``"*"``: all of them).
        on_error: a line that cannot be read: ``"raise"`` (default) stops the replay
            with a ``RecordingError`` naming file and line; ``"dead_letter"`` sends it
            to dead letters and goes on.
        credit: most events in flight from this source at once (read but not yet
            ended by every sink); the source waits for credit beyond it.
        batch_size: most events in one emission (a batch).
    """

    kind = "replay"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        speed: float | None = None,
        virtual: bool = False,
        drive: bool = True,
        name: str | None = None,
        source: str | None = None,
        on_error: OnError = "raise",
        credit: int = 4096,
        batch_size: int = 512,
    ) -> None:
        self.path = Path(path)
        if name is None:
            name = _recorded_source(self.path)
        else:  # the file may come later (recorded by another pipeline), but not as a FIFO
            _check_regular(self.path, f"replay source {name!r}", missing_ok=True)
        super().__init__(name, credit=credit, batch_size=batch_size)
        if speed is not None and not (
            isinstance(speed, int | float) and math.isfinite(speed) and speed > 0
        ):
            raise ConfigurationError(
                f"replay source {self.name!r}: speed must be a positive number "
                f"(2 is twice as fast) or None for as fast as possible, got {speed!r}"
            )
        if on_error not in _ON_ERROR:
            raise ConfigurationError(
                f"replay source {self.name!r}: on_error must be one of {_ON_ERROR}, "
                f"got {on_error!r}"
            )
        self.speed = speed
        self.virtual = virtual
        self.drive = drive
        self.source_filter = source
        self.on_error: OnError = on_error
        # chunks a little larger than a batch, so a batch rarely spans two hops
        self.chunk_lines = max(2 * self.batch_size, 256)
        self.emitted = 0
        self.scheduled = 0
        self.skipped = 0
        self.bad_lines = 0

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "credit": self.credit,
            "path": str(self.path),
            "speed": self.speed,
            "virtual": self.virtual,
            "emitted": self.emitted,
            "skipped": self.skipped,
            "bad_lines": self.bad_lines,
        }

    # -- reading ------------------------------------------------------------------------

    async def run(self, out: Emitter) -> None:
        try:
            await asyncio.to_thread(_check_regular, self.path, f"replay source {self.name!r}")
            file = await asyncio.to_thread(self.path.open, "rb")
        except OSError as error:
            raise ConfigurationError(
                f"replay source {self.name!r} cannot open its recording: {error}"
            ) from error
        reading = _Reading(self, file, out)
        try:
            if self.virtual:
                await self._run_virtual(out, reading)
            elif self.speed is not None:
                await self._run_paced(out, reading, self.speed)
            else:
                await self._run_fast(out, reading)
        finally:
            file.close()

    # -- the three tempos -------------------------------------------------------------------

    async def _run_fast(self, out: Emitter, reading: _Reading) -> None:
        while (chunk := await reading.next_chunk()) is not None:
            rows = chunk.records
            i, n = 0, len(rows)
            while i < n:
                end = _partition_run_end(rows, i, min(n, i + self.batch_size))
                granted = await out.credit(end - i)
                self._emit(out, rows[i : i + granted])
                i += granted
                # let timers, tool calls and other pipelines run between batches
                await asyncio.sleep(0)
            chunk.raise_error()

    async def _run_paced(self, out: Emitter, reading: _Reading, speed: float) -> None:
        loop = asyncio.get_running_loop()
        # real seconds by design: a paced replay reproduces the recording's timing on
        # the wall clock (``virtual=True`` replays run on the pipeline's clock instead)
        start: float | None = None
        while (chunk := await reading.next_chunk()) is not None:
            rows, elapsed = chunk.records, chunk.elapsed
            if start is None and rows:
                start = loop.time()
            i, n = 0, len(rows)
            while i < n:
                assert start is not None
                now = loop.time()
                due = start + elapsed[i] / speed
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                # everything already due leaves in one batch (one partition at a time)
                limit = min(n, i + self.batch_size)
                end = i + 1
                partition = rows[i].partition
                while (
                    end < limit
                    and start + elapsed[end] / speed <= now
                    and rows[end].partition == partition
                ):
                    end += 1
                granted = await out.credit(end - i)
                self._emit(out, rows[i : i + granted])
                i += granted
                await asyncio.sleep(0)
            chunk.raise_error()

    async def _run_virtual(self, out: Emitter, reading: _Reading) -> None:
        scheduler = out.ctx.scheduler
        if scheduler is None:
            raise ConfigurationError(
                f"replay source {self.name!r} with virtual=True needs the pipeline's scheduler: "
                "start the pipeline with start(scheduler=...)"
            )
        speed = 1.0 if self.speed is None else self.speed
        driven = self.drive and isinstance(scheduler, VirtualTimeScheduler)
        timeline = _Schedule(self, out, scheduler)
        try:
            while (chunk := await reading.next_chunk()) is not None:
                rows, elapsed = chunk.records, chunk.elapsed
                i, n = 0, len(rows)
                while i < n:
                    # one emission per recorded instant and partition
                    limit = min(n, i + self.batch_size)
                    end = _instant_end(elapsed, i, _partition_run_end(rows, i, limit))
                    granted = await (out.virtual_credit if driven else out.credit)(end - i)
                    due = timeline.base + timedelta(seconds=elapsed[i] / speed)
                    timeline.add(rows[i : i + granted], due, driven)
                    i += granted
                    await asyncio.sleep(0)
                if chunk.error is not None:
                    await timeline.wait()  # what came before the bad line goes out first
                    chunk.raise_error()
            await timeline.wait()
        finally:
            timeline.cancel()

    # -- emitting -------------------------------------------------------------------------------

    def _emit(self, out: Emitter, rows: list[Record]) -> None:
        """Emit ``rows`` (one partition, credit held for all of them) as one batch."""
        out.emit(
            [r.value for r in rows],
            keys=_column([r.key for r in rows]),
            times=_column([r.time for r in rows]),
            positions=[r.line if r.offset is None else r.offset for r in rows],
            headers=_column([r.headers for r in rows]),
            partition=rows[0].partition,
        )
        self.emitted += len(rows)


def _column(column: list[_T]) -> list[_T] | None:
    """``None`` for a column with nothing in it, as :class:`~rxagent.events.Batch` expects."""
    for item in column:
        if item is not None:
            return column
    return None


def _instant_end(elapsed: list[float], i: int, limit: int) -> int:
    """The end of the run of rows from ``i`` recorded at the same instant (at most ``limit``)."""
    at = elapsed[i]
    end = i + 1
    while end < limit and elapsed[end] == at:
        end += 1
    return end


def _partition_run_end(rows: list[Record], i: int, limit: int) -> int:
    """The end of the run of rows from ``i`` that share its partition (at most ``limit``)."""
    partition = rows[i].partition
    end = i + 1
    while end < limit and rows[end].partition == partition:
        end += 1
    return end


class _Chunk:
    """Records ready to emit with their replay offsets (seconds since the first
    event), and the error that ended the chunk when bad lines stop the replay."""

    __slots__ = ("elapsed", "error", "records")

    def __init__(
        self, records: list[Record], elapsed: list[float], error: RecordingError | None
    ) -> None:
        self.records = records
        self.elapsed = elapsed
        self.error = error

    def raise_error(self) -> None:
        """Raise the bad line that ended the replay, once the events before it are out."""
        if self.error is not None:
            raise self.error


class _Reading:
    """Reads a recording a chunk of lines at a time in a worker thread, and turns
    headers, bad lines and other sources' events into what the replay needs."""

    def __init__(self, owner: ReplaySource, file: IO[bytes], out: Emitter) -> None:
        self.owner = owner
        self.file = file
        self.out = out
        self.reader = RecordingReader(owner.path)
        self.timeline = _Timeline()
        self.source_filter = owner.source_filter
        self.done = False
        self._warned = False

    def _read(self) -> tuple[list[Header | Record | RecordingError], bool]:
        lines = list(itertools.islice(self.file, self.owner.chunk_lines))
        return self.reader.feed(lines), len(lines) < self.owner.chunk_lines

    async def next_chunk(self) -> _Chunk | None:
        """The next records to emit, ``None`` at the end of the file."""
        while not self.done:
            items, self.done = await asyncio.to_thread(self._read)
            records: list[Record] = []
            elapsed: list[float] = []
            for item in items:
                if isinstance(item, Record):
                    if self._wanted(item):
                        records.append(item)
                        elapsed.append(self.timeline.elapsed(item.t))
                elif isinstance(item, Header):
                    self.timeline.new_session()
                    if self.source_filter is None:
                        self.source_filter = item.source or "*"
                elif self.owner.on_error == "raise":
                    self.done = True
                    return _Chunk(records, elapsed, item)
                else:
                    self._dead_letter(item)
            if records:
                return _Chunk(records, elapsed, None)
        return None

    def _wanted(self, record: Record) -> bool:
        wanted = self.source_filter
        if wanted is None or wanted == "*" or record.source is None or record.source == wanted:
            return True
        self.owner.skipped += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "replay source %r skips the events of source %r in %s (it replays %r); "
                "replay them with ReplaySource(path, source=%r) or source='*'",
                self.owner.name,
                record.source,
                self.owner.path,
                wanted,
                record.source,
            )
        return False

    def _dead_letter(self, error: RecordingError) -> None:
        self.owner.bad_lines += 1
        raw = error.raw
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        event = Event(text.rstrip("\r\n"), position=Position(self.owner.name, None, error.line))
        self.out.ctx.dead_letter(event, self.owner.name, error)


class _Timeline:
    """Replay offsets: seconds since the first event, never decreasing, with the
    pause between two appended sessions left out."""

    __slots__ = ("base", "last", "session_start")

    def __init__(self) -> None:
        self.base = 0.0
        self.last = 0.0
        self.session_start: float | None = None

    def new_session(self) -> None:
        self.session_start = None
        self.base = self.last

    def elapsed(self, t: float) -> float:
        if self.session_start is None:
            self.session_start = t
        offset = self.base + (t - self.session_start)
        if offset < self.last:  # the recorder's clock stepped back
            offset = self.last
        self.last = offset
        return offset


class _Schedule:
    """Emissions scheduled on the pipeline's scheduler and not yet run; their
    credit is held, and given back if the replay is cancelled first."""

    def __init__(self, owner: ReplaySource, out: Emitter, scheduler: SchedulerBase) -> None:
        self.owner = owner
        self.out = out
        self.scheduler = scheduler
        self.base: datetime = scheduler.now
        self.pending: dict[int, tuple[DisposableBase, int]] = {}
        self._tokens = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, rows: list[Record], due: datetime, driven: bool) -> None:
        scheduler = self.scheduler
        self.owner.scheduled += len(rows)
        if driven and due <= scheduler.now:
            # the clock is already there (we drove it): nothing of ours is pending
            self.owner._emit(self.out, rows)
            return
        token = next(self._tokens)

        def fire(_scheduler: SchedulerBase, _state: Any = None) -> None:
            if self.pending.pop(token, None) is None:
                return
            if not self.pending:
                self._idle.set()
            self.owner._emit(self.out, rows)

        self._idle.clear()
        self.pending[token] = (scheduler.schedule_absolute(due, fire), len(rows))
        if driven:
            assert isinstance(scheduler, VirtualTimeScheduler)
            # runs every action due until then, the pipeline's timers and ours
            scheduler.advance_to(due)

    async def wait(self) -> None:
        """Until every scheduled emission has run."""
        await self._idle.wait()

    def cancel(self) -> None:
        for disposable, n in self.pending.values():
            disposable.dispose()
            self.out.give_back(n)
        self.pending.clear()
        self._idle.set()


#: The most of a recording's first line read to find its header (a header is small).
MAX_HEADER_BYTES = 64 * 1024


def _check_regular(path: Path, where: str, *, missing_ok: bool = False) -> None:
    """Refuse what is not a regular file (a FIFO would block, a device never end)."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if missing_ok and isinstance(error, FileNotFoundError):
            return
        raise ConfigurationError(f"{where}: cannot open recording: {error}") from error
    if not stat.S_ISREG(mode):
        what = (
            "a directory"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"
        )
        raise ConfigurationError(
            f"{where}: recording {str(path)!r} is {what}; a recording must be a regular file"
        )


def _recorded_source(path: Path) -> str:
    """The source named in the recording's first line; ``"replay"`` if it names none.
    Reads at most :data:`MAX_HEADER_BYTES` of a regular file."""
    _check_regular(path, "replay source")
    try:
        with path.open("rb") as file:
            first = file.readline(MAX_HEADER_BYTES + 1)
    except OSError as error:
        raise ConfigurationError(f"replay source: cannot open recording: {error}") from error
    if len(first) > MAX_HEADER_BYTES:
        return ReplaySource.kind  # no header fits: run() reports the line where on_error says
    try:
        item = decode_line(first, path=str(path), line=1)
    except RecordingError:
        return ReplaySource.kind  # run() reports the bad line where on_error says
    if isinstance(item, Header) and item.source:
        return item.source
    return ReplaySource.kind


def replay(
    path: str | os.PathLike[str],
    *,
    speed: float | None = None,
    virtual: bool = False,
    drive: bool = True,
    name: str | None = None,
    source: str | None = None,
    on_error: OnError = "raise",
    credit: int = 4096,
    batch_size: int = 512,
) -> ReplaySource:
    """A source replaying the recording at ``path`` (see :class:`ReplaySource`)."""
    return ReplaySource(
        path,
        speed=speed,
        virtual=virtual,
        drive=drive,
        name=name,
        source=source,
        on_error=on_error,
        credit=credit,
        batch_size=batch_size,
    )
