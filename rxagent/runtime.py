"""Pipelines and the app that runs them, all on one asyncio event loop.

A :class:`Pipeline` is a source, operators (``pipe``) and sinks (``to``)::

    store = StateStore("prices")
    pipeline = (
        Pipeline("ticks", sources.memory(ticks))
        .pipe(ops.filter(lambda v: v["px"] > 0), ops.key_by("sym"))
        .to(store.sink())
    )
    await pipeline.run()

Lifecycle: ``created -> starting -> running -> (draining) -> stopped``, or
``failed`` with the error. A pipeline whose source is exhausted completes on its
own once every event has ended. :meth:`Pipeline.drain` stops reading, lets the
work in flight end within a timeout, then cancels what is left.

A stop is not the end of the input: windows still open when a pipeline stops are
given up uncommitted when the source replays them (Kafka), else emitted marked
``partial`` (``ctx.stopping``; docs/operators.md, "Windows and stops").
:meth:`App.drain` stops the pipelines writing a store before those reading its
changes (a ``state`` source), so what the writers flush on the way out reaches
the readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reactivex import Observable
from reactivex.abc import DisposableBase, SchedulerBase
from reactivex.internal import DisposedException
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject

from . import _secrets, _slow
from .context import PipelineContext
from .events import Batch
from .exceptions import ConfigurationError, PipelineError
from .flow import Flow
from .histogram import Histogram
from .operators.base import Operator
from .sinks.base import Sink
from .sinks.deadletters import DeadLetterSink
from .sinks.state_sink import StateSink
from .sources.base import Emitter, Source
from .sources.store_changes import StateChangesSource

__all__ = ["App", "Pipeline", "PipelineState", "PipelineStatus"]

log = logging.getLogger("rxagent")

RxOperator = Callable[[Observable[Any]], Observable[Any]]


class PipelineState(enum.StrEnum):
    """Where a pipeline is in its life: created, starting, running, draining, then
    stopped (by a stop or the end of its input) or failed (an error it could not
    route)."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class PipelineStatus:
    """A pipeline's state and counters at one moment.

    ``suppressions`` says why stages held events back, per stage: ``totals`` per
    reason, ``evicted`` and the most recent ``entries`` (key, reason, count,
    first_at, last_at, eligible_at); see :class:`~rxagent.context.Suppressions`.
    """

    name: str
    state: PipelineState
    completed: bool = False
    last_error: str | None = None
    failed_stage: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    flow: dict[str, int] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: float | None = None
    stopped_at: float | None = None
    suppressions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # where every status is built: what it shows (Python API, MCP, CLI) is redacted
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if type(value) is str or type(value) is dict:
                object.__setattr__(self, name, _secrets.redact_data(value))

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-friendly data (what MCP status and the dashboard show)."""
        return {
            "name": self.name,
            "state": str(self.state),
            "completed": self.completed,
            "last_error": self.last_error,
            "failed_stage": self.failed_stage,
            "source": self.source,
            "flow": self.flow,
            "stages": self.stages,
            "sinks": self.sinks,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "suppressions": self.suppressions,
        }


class Pipeline:
    """One source, a chain of operators, one or more sinks.

    ``fail_fast=True`` turns the first error of a user function into a pipeline
    failure (for tests); by default the event goes to ``dead_letters`` and the
    stream goes on.

    ``checkpoint_interval``: every that many seconds (and on stop) the sinks make
    their work durable (a durable store writes its changed keys); a Kafka source
    also checkpoints right before each commit, so committed offsets never run
    ahead of durable state (docs/state.md).

    ``max_dead_letter_ratio``: a stage that dead-letters more than this share of
    what it received (after 100 dead letters) fails the pipeline with a
    :class:`~rxagent.exceptions.DeadLetterStormError`; without it, such a storm is
    logged once per stage and shown in status (``top_errors``).
    """

    def __init__(
        self,
        name: str,
        source: Source,
        *,
        dead_letters: DeadLetterSink | None = None,
        fail_fast: bool = False,
        checkpoint_interval: float = 1.0,
        max_dead_letter_ratio: float | None = None,
    ) -> None:
        if max_dead_letter_ratio is not None and not 0 <= max_dead_letter_ratio <= 1:
            raise ConfigurationError(
                f"pipeline {name!r}: max_dead_letter_ratio must be between 0 and 1, "
                f"got {max_dead_letter_ratio}"
            )
        if checkpoint_interval <= 0:
            raise ConfigurationError(
                f"pipeline {name!r}: checkpoint_interval must be > 0, got {checkpoint_interval}"
            )
        if not isinstance(source, Source):
            raise ConfigurationError(
                f"pipeline {name!r} needs a Source (rxagent.sources), got {source!r}"
            )
        self.name = name
        self.source = source
        self.fail_fast = fail_fast
        self.max_dead_letter_ratio = max_dead_letter_ratio
        self.dead_letters = dead_letters
        self.checkpoint_interval = checkpoint_interval
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._operators: list[RxOperator] = []
        self._stage_names: set[str] = set()
        self._sinks: list[Sink] = []
        self.state = PipelineState.CREATED
        self.flow: Flow | None = None
        self.ctx: PipelineContext | None = None
        self._error: BaseException | None = None
        self._failed_stage: str | None = None
        self._completed = False
        self._subscription: DisposableBase | None = None
        self._source_task: asyncio.Task[None] | None = None
        self._finish_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None
        self._stream_ended = False
        self._sinks_closed = False
        self._meta_sinks: set[int] = set()  # ids of sinks whose checkpoint() takes meta
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        #: Per sink: seconds from a batch's making (its ``time``, the pipeline clock)
        #: to the end of that sink's ``on_batch``, one observation per batch.
        self.latency: dict[str, Histogram] = {}

    # -- composition -------------------------------------------------------------

    def pipe(self, *operators: RxOperator) -> Pipeline:
        """Append operators. rxagent operators get unique step names here."""
        self._check_unstarted("pipe")
        for op in operators:
            if isinstance(op, Operator):
                op = op.named(self._unique(op.name or op.kind))
            elif not callable(op):
                raise ConfigurationError(f"pipeline {self.name!r}: {op!r} is not an operator")
            self._operators.append(op)
        return self

    def to(self, *sinks: Sink) -> Pipeline:
        """Add sinks; every event reaches each of them."""
        self._check_unstarted("to")
        for sink in sinks:
            if not isinstance(sink, Sink):
                raise ConfigurationError(
                    f"pipeline {self.name!r}: {sink!r} is not a Sink (rxagent.sinks)"
                )
            if sink.name in {s.name for s in self._sinks}:
                sink.name = self._unique(sink.name)
            self._sinks.append(sink)
        return self

    @property
    def sinks(self) -> list[Sink]:
        """The pipeline's sinks, in the order given to :meth:`to`."""
        return list(self._sinks)

    @property
    def operators(self) -> list[RxOperator]:
        """The operators in order (rxagent operators carry ``name`` and ``kind``)."""
        return list(self._operators)

    @property
    def stage_names(self) -> list[str]:
        """Every stage's name (operators, then sinks): the names status and dead
        letters use."""
        names = [op.name or op.kind for op in self._operators if isinstance(op, Operator)]
        return names + [s.name for s in self._sinks]

    def _unique(self, base: str) -> str:
        candidate, n = base, 1
        while candidate in self._stage_names:
            n += 1
            candidate = f"{base}#{n}"
        self._stage_names.add(candidate)
        return candidate

    def _check_unstarted(self, what: str) -> None:
        if self.state is not PipelineState.CREATED:
            raise ConfigurationError(
                f"pipeline {self.name!r} is {self.state}: {what}() only works before start()"
            )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, *, scheduler: SchedulerBase | None = None) -> None:
        """Subscribe the chain and start reading the source."""
        self._check_unstarted("start")
        if not self._sinks:
            raise ConfigurationError(
                f"pipeline {self.name!r} has no sink: add one with .to(...), "
                "for example a StateStore's .sink() or sinks.ListSink()"
            )
        self.state = PipelineState.STARTING
        self._started_at = time.time()
        loop = asyncio.get_running_loop()
        sched = scheduler if scheduler is not None else AsyncIOScheduler(loop)
        self._done = asyncio.Event()
        source = self.source
        self.flow = Flow(source.name, source.credit, source.credit_bytes, source.event_bytes_hint)
        self.ctx = ctx = PipelineContext(
            self.name,
            scheduler=sched,
            dead_letters=self.dead_letters,
            fail_fast=self.fail_fast,
            on_failure=self._fail,
            max_dead_letter_ratio=self.max_dead_letter_ratio,
        )
        self.dead_letters = ctx.dead_letters
        ctx.checkpoint = self._checkpoint
        ctx.partitions_assigned = self._partitions_assigned
        ctx.partitions_revoked = self._partitions_revoked
        ctx.changelog_for = self.source.changelog_for
        ctx.transactions = self.source.transactions
        ctx.resume_meta = self._resume_meta
        ctx.replays_uncommitted = bool(source.replays_uncommitted)
        self._meta_sinks = {id(sink) for sink in self._sinks if _takes_meta(sink)}
        self.latency = {sink.name: Histogram() for sink in self._sinks}
        for sink in self._sinks:
            sink.bind(ctx)
        # restore before the first event is read (a durable store's entries; what
        # the source stored with them, for ctx.resume_meta())
        await self._each_sink(lambda sink: sink.recover())
        subject: Subject[Batch] = _Head()
        stream: Observable[Batch] = subject.pipe(*self._operators) if self._operators else subject
        self._subscription = stream.subscribe(
            on_next=self._dispatch,
            on_error=self._on_stream_error,
            on_completed=self._on_stream_completed,
            scheduler=sched,
        )
        emitter = Emitter(self.source.name, self.flow, ctx, subject.on_next)
        self._source_task = asyncio.create_task(
            self._run_source(emitter, subject), name=f"rxagent-source-{self.name}"
        )
        self._checkpoint_task = asyncio.create_task(
            self._checkpoint_every(self.checkpoint_interval), name=f"rxagent-checkpoint-{self.name}"
        )
        self.state = PipelineState.RUNNING
        log.info(
            "pipeline %r started (source %s)",
            self.name,
            self.source.describe(),
            extra={"pipeline": self.name, "source": self.source.name},
        )

    async def _each_sink(self, hook: Callable[[Sink], Awaitable[None]]) -> None:
        """Await ``hook(sink)`` for every sink in turn; an error fails the pipeline
        (naming the sink) and reaches the caller."""
        for sink in self._sinks:
            try:
                await hook(sink)
            except Exception as error:
                self._fail(error, sink.name)
                raise

    async def _checkpoint(self) -> None:
        """Every sink makes its work so far durable (what a source awaits before it commits).

        The source's :meth:`~rxagent.sources.base.Source.checkpoint_meta` is read
        first, before any sink writes, and goes to every sink that takes ``meta``
        (a durable store writes it in the transaction of its state): what it says
        ended is in the state each sink then writes, so a stored resume position
        never runs ahead of the stored state."""
        meta = self._source_meta()
        if meta is None:
            await self._each_sink(lambda sink: sink.checkpoint())
            return
        takes = self._meta_sinks
        await self._each_sink(
            lambda sink: sink.checkpoint(meta=meta) if id(sink) in takes else sink.checkpoint()
        )

    def _source_meta(self) -> dict[str, Any] | None:
        """``{"source:<name>": source.checkpoint_meta()}``, or None when it has none."""
        try:
            meta = self.source.checkpoint_meta()
        except Exception as error:
            self._fail(error, self.source.name)
            raise
        return None if meta is None else {self._meta_key: dict(meta)}

    @property
    def _meta_key(self) -> str:
        return f"source:{self.source.name}"

    def _resume_meta(self) -> list[Mapping[str, Any] | None]:
        """What each durable sink stored of the source's checkpoint meta (``None`` for
        one that stored none); what ``ctx.resume_meta()`` returns."""
        found: list[Mapping[str, Any] | None] = []
        for sink in self._sinks:
            stored = sink.stored_meta()
            if stored is not None:
                mine = stored.get(self._meta_key)
                found.append(mine if isinstance(mine, Mapping) else None)
        return found

    async def _partitions_assigned(self, partitions: list[Hashable]) -> None:
        await self._each_sink(lambda sink: sink.partitions_assigned(partitions))

    async def _partitions_revoked(self, partitions: list[Hashable]) -> None:
        await self._each_sink(lambda sink: sink.partitions_revoked(partitions))

    async def _checkpoint_every(self, interval: float) -> None:
        with contextlib.suppress(Exception):  # a failed checkpoint failed the pipeline
            while True:
                await asyncio.sleep(interval)
                await self._checkpoint()

    async def _run_source(self, emitter: Emitter, subject: Subject[Batch]) -> None:
        try:
            await self.source.run(emitter)
        except asyncio.CancelledError:
            # drain: stop reading, then let the stream complete so windows flush
            if not self._stream_ended:
                subject.on_completed()
            return
        except Exception as error:
            self._fail(error, self.source.name)
            return
        if not self._stream_ended:
            subject.on_completed()

    def _dispatch(self, batch: Batch) -> None:
        sinks = self._sinks
        if len(sinks) > 1:
            batch.retain(len(sinks) - 1)
        n = len(batch.values)
        latency = self.latency
        clock = _slow.clock
        for sink in sinks:
            started = clock()
            try:
                sink.on_batch(batch)
            except Exception as error:
                self._fail(error, sink.name)
            else:
                if clock() - started >= _slow.SLOW_BATCH_SECONDS:  # the rare slow batch
                    _slow.note(batch.ctx, sink.name, started, n)
                latency[sink.name].observe(batch.ctx.now() - batch.time, n)

    def _on_stream_error(self, error: Exception) -> None:
        stage = getattr(error, "stage", None)
        self._fail(error, stage)

    def _on_stream_completed(self) -> None:
        self._stream_ended = True
        for sink in self._sinks:
            try:
                sink.on_completed()
            except Exception as error:
                self._fail(error, sink.name)
                return
        self._finish_task = asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        """After the stream ended: wait for the sinks' work and every event's end."""
        try:
            for sink in self._sinks:
                await sink.drain()
            assert self.flow is not None
            await self.flow.idle()
        except Exception as error:
            self._fail(error, None)
            return
        # every event ended: let sinks release files and connections
        await self._close_sinks()
        if self.state in (PipelineState.RUNNING, PipelineState.DRAINING):
            self._completed = self.state is PipelineState.RUNNING
            self._set_stopped(PipelineState.STOPPED)

    def _fail(self, error: BaseException, stage: str | None) -> None:
        if self.state in (PipelineState.FAILED, PipelineState.STOPPED):
            log.debug("pipeline %r: error after stop ignored: %r", self.name, error)
            return
        self._error = error
        self._failed_stage = stage
        if stage is not None and self.ctx is not None:
            self.ctx.stage(stage).record_error(error)
        log.error(
            "pipeline %r failed in %s: %s: %s",
            self.name,
            repr(stage) if stage else "the stream",
            type(error).__name__,
            error,
            extra={"pipeline": self.name, "stage": stage},
        )
        self._set_stopped(PipelineState.FAILED)
        if self._source_task is not None and not self._source_task.done():
            self._source_task.cancel()
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close_sinks())

    async def _close_sinks(self) -> None:
        if self._sinks_closed:
            return
        self._sinks_closed = True
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
        # the last checkpoint: whatever ended before the stop stays done after a restart
        with contextlib.suppress(Exception):  # logged and recorded by _checkpoint
            await self._checkpoint()
        for sink in self._sinks:
            try:
                await sink.aclose()
            except Exception:
                log.exception("closing sink %r of pipeline %r failed", sink.name, self.name)
        try:
            await self.source.aclose()
        except Exception:
            log.exception("closing source %r of pipeline %r failed", self.source.name, self.name)

    def _set_stopped(self, state: PipelineState) -> None:
        self.state = state
        self._stopped_at = time.time()
        # Once stopped or failed, no operator timer may fire into the sinks again.
        if self._subscription is not None:
            self._subscription.dispose()
        if self._done is not None:
            self._done.set()

    async def wait(self) -> PipelineStatus:
        """Wait until the pipeline stopped or failed; returns its status."""
        if self._done is None:
            raise ConfigurationError(f"pipeline {self.name!r} was not started")
        await self._done.wait()
        if self._close_task is not None:
            await asyncio.shield(self._close_task)
        return self.status()

    async def drain(self, timeout: float = 10.0) -> PipelineStatus:
        """Stop reading; let in-flight work end within ``timeout`` s; cancel the rest."""
        if self.state is not PipelineState.RUNNING:
            return self.status()
        self.state = PipelineState.DRAINING
        log.info(
            "pipeline %r draining (timeout %.1fs)",
            self.name,
            timeout,
            extra={"pipeline": self.name},
        )
        if self.ctx is not None:
            # a stop, not the end of the input: open windows are not final
            self.ctx.stopping = True
        task = self._source_task
        if timeout > 0 and task is not None and not task.done():
            # what the source already received goes out first (a state source's changes)
            try:
                await asyncio.wait_for(self.source.settle(), timeout)
            except TimeoutError:
                log.debug("pipeline %r: source did not settle within %.1fs", self.name, timeout)
            except Exception:
                log.exception("pipeline %r: settling source %r failed", self.name, self.source.name)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert self._done is not None
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            pending = self.flow.pending if self.flow is not None else 0
            log.log(
                logging.WARNING if pending else logging.DEBUG,
                "pipeline %r: drain timed out after %.1fs with %d events pending; cancelling",
                self.name,
                timeout,
                pending,
            )
            await self._close_sinks()
            if self._finish_task is not None:
                self._finish_task.cancel()
            if self.state is PipelineState.DRAINING:
                self._set_stopped(PipelineState.STOPPED)
        return self.status()

    async def stop(self) -> PipelineStatus:
        """Stop now: like :meth:`drain` with no time for in-flight work."""
        return await self.drain(timeout=0.0)

    async def run(
        self, *, timeout: float | None = None, drain_timeout: float = 10.0
    ) -> PipelineStatus:
        """Start, wait until the source is exhausted and every event ended, return status.

        With ``timeout``, drain after that many seconds. Raises
        :class:`PipelineError` if the pipeline failed.
        """
        if self.state is PipelineState.CREATED:
            await self.start()
        assert self._done is not None
        if timeout is None:
            await self.wait()
        else:
            try:
                await asyncio.wait_for(asyncio.shield(self.wait()), timeout)
            except TimeoutError:
                await self.drain(drain_timeout)
        status = self.status()
        if status.state is PipelineState.FAILED:
            raise PipelineError(
                f"pipeline {self.name!r} failed"
                + (f" in stage {self._failed_stage!r}" if self._failed_stage else "")
                + f": {status.last_error}",
                pipeline=self.name,
                stage=self._failed_stage,
            ) from self._error
        return status

    # -- status ------------------------------------------------------------------

    @property
    def error(self) -> BaseException | None:
        """What failed the pipeline, or None while it has not failed."""
        return self._error

    def status(self) -> PipelineStatus:
        """Its state and counters now (cheap: read from counters kept per batch)."""
        ctx = self.ctx
        stages: dict[str, dict[str, Any]] = {}
        if ctx is not None:
            stages = {name: m.as_dict() for name, m in ctx.metrics.items()}
        return PipelineStatus(
            name=self.name,
            state=self.state,
            completed=self._completed,
            last_error=None
            if self._error is None
            else f"{type(self._error).__name__}: {self._error}",
            failed_stage=self._failed_stage,
            source=self.source.describe(),
            flow=self.flow.stats().as_dict() if self.flow is not None else {},
            stages=stages,
            sinks={s.name: s.describe() for s in self._sinks},
            started_at=self._started_at,
            stopped_at=self._stopped_at,
            suppressions={} if ctx is None else ctx.suppressions.as_dict(),
        )

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r} {self.state}>"


class _Head(Subject[Batch]):
    """The pipeline's entry, where the source's batches go in: a reactivex
    ``Subject`` whose ``on_next`` takes no lock and copies no observer list per
    batch (batches enter on the event loop's thread only; the list is still copied
    when several observers listen, so one leaving during a batch is harmless)."""

    def on_next(self, value: Batch) -> None:
        if self.is_disposed:
            raise DisposedException()
        if self.is_stopped:
            return
        observers = self.observers
        if len(observers) == 1:
            observers[0].on_next(value)
        else:
            for observer in observers.copy():
                observer.on_next(value)


def _written_store(sink: Sink) -> object | None:
    """The state store a sink writes (a state sink's), or None."""
    return sink.store if isinstance(sink, StateSink) else None


def _read_store(source: Source) -> object | None:
    """The state store whose changes a source reads (a ``state`` source's), or None."""
    return source.store if isinstance(source, StateChangesSource) else None


def _takes_meta(sink: Sink) -> bool:
    """Whether ``sink.checkpoint`` takes ``meta`` (an override written before it
    existed may not: it is called without)."""
    try:
        parameters = inspect.signature(sink.checkpoint).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == "meta" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )


class App:
    """Several pipelines on one event loop, started, drained and watched together."""

    def __init__(self, pipelines: Iterable[Pipeline] = (), *, name: str = "rxagent") -> None:
        self.name = name
        self.pipelines: dict[str, Pipeline] = {}
        for p in pipelines:
            self.add(p)
        self._stop_requested: asyncio.Event | None = None

    def add(self, pipeline: Pipeline) -> Pipeline:
        """Add ``pipeline`` (names are unique within an app); returns it."""
        if pipeline.name in self.pipelines:
            raise ConfigurationError(f"app {self.name!r} has a pipeline {pipeline.name!r} already")
        self.pipelines[pipeline.name] = pipeline
        return pipeline

    def pipeline(self, name: str, source: Source, **options: Any) -> Pipeline:
        """Create a pipeline in this app (``app.pipeline("x", src).pipe(...).to(...)``)."""
        return self.add(Pipeline(name, source, **options))

    async def start(self) -> None:
        """Start every pipeline (each restores its state, then its source runs)."""
        for p in self.pipelines.values():
            await p.start()

    async def wait(self) -> dict[str, PipelineStatus]:
        """Wait until every pipeline stopped or failed; returns their statuses."""
        await asyncio.gather(*(p.wait() for p in self.pipelines.values()))
        return self.status()

    async def drain(self, timeout: float = 10.0) -> dict[str, PipelineStatus]:
        """Drain every pipeline within ``timeout`` s, writers first: a pipeline that
        reads a store's changes (a ``state`` source) is drained once every pipeline
        writing that store has stopped, so what they flush on the way out (windows a
        stop emits marked ``partial``) reaches it; the others drain together."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for wave in self.drain_order():
            left = max(0.0, deadline - loop.time()) if timeout > 0 else 0.0
            await asyncio.gather(*(p.drain(left) for p in wave))
        return self.status()

    def drain_order(self) -> list[list[Pipeline]]:
        """The pipelines in waves: each wave's pipelines read no store that a
        pipeline of a later wave writes (a cycle of readers and writers shares one
        wave)."""
        writers: dict[int, set[str]] = {}  # id(store) -> the pipelines writing it
        for p in self.pipelines.values():
            for sink in p.sinks:
                store = _written_store(sink)
                if store is not None:
                    writers.setdefault(id(store), set()).add(p.name)
        after: dict[str, set[str]] = {}
        for p in self.pipelines.values():
            store = _read_store(p.source)
            ups = set() if store is None else writers.get(id(store), set()) - {p.name}
            after[p.name] = ups
        waves: list[list[Pipeline]] = []
        done: set[str] = set()
        left = dict(self.pipelines)
        while left:
            ready = [n for n in left if after[n] <= done]
            if not ready:  # a cycle: the rest together
                ready = list(left)
            waves.append([left.pop(n) for n in ready])
            done.update(ready)
        return waves

    def request_stop(self) -> None:
        """Ask :meth:`run` to drain and return (what SIGINT and SIGTERM do)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(
        self,
        *,
        duration: float | None = None,
        drain_timeout: float = 10.0,
        handle_signals: bool = False,
    ) -> dict[str, PipelineStatus]:
        """Start all pipelines; return when all stopped, after ``duration`` seconds,
        or on a stop request (SIGINT/SIGTERM with ``handle_signals``), draining first."""
        self._stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.request_stop)
                    installed.append(sig)
        try:
            await self.start()
            all_done = asyncio.ensure_future(self.wait())
            stop = asyncio.ensure_future(self._stop_requested.wait())
            waiters: set[asyncio.Future[Any]] = {all_done, stop}
            await asyncio.wait(waiters, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not all_done.done():
                await self.drain(drain_timeout)
                all_done.cancel()
            return self.status()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def status(self) -> dict[str, PipelineStatus]:
        """Every pipeline's :class:`PipelineStatus`, by name."""
        return {name: p.status() for name, p in self.pipelines.items()}
