"""The tool activation sink: a tool fires because data arrived.

:class:`ToolSink` turns each event into a validated tool call and runs it on
the event loop, with a per-key policy (see :mod:`rxagent.tools.policy`), a
global concurrency limit, a timeout per call and retries with a
:class:`~rxagent.backoff.Backoff`.

Backpressure: an activation *holds its event* until the call is over (ok,
failed and dead-lettered, cancelled, or dropped). The event's credit returns to
the source only then, so a slow tool slows the source instead of piling events
up in memory: at most the source's credit is ever waiting here.

Every activation ends in exactly one :class:`ToolResult` on :attr:`ToolSink.results`
(an Rx observable), so a pipeline can react to what its tools did; failures
after the retries are also dead letters, with the reason.

Why didn't it fire? Every activation held back (``"cooldown"``, ``"busy"``
under ``drop_while_busy``, ``"replaced"`` under ``latest``, ``"circuit_open"``
when a ``breaker`` guards the tool) is recorded per key in the pipeline's
:class:`~rxagent.context.Suppressions`; :meth:`ToolSink.suppressions` lists the
sink's records with when each key is eligible again.

Dry run: ``dry_run=True`` records each activation the sink would make
(:attr:`ToolSink.recorded`) instead of calling the tool; policies, cooldown and
concurrency apply as usual, each call taking no time.

Tasks: each started call is one asyncio task, tracked until it is done. Calls
waiting for a slot or for their key are plain queue entries, not tasks, so a
backlog costs no tasks. :meth:`ToolSink.drain` waits for all of them;
:meth:`ToolSink.aclose` cancels them, awaits the cancelled tasks and ends every
event it still holds, leaving no task behind.

Idempotency keys: every activation has one, derived from its *trigger* and the
same after a restart (:func:`idempotency_key`, :func:`trigger_of`): the event's
source position (source, partition, offset), or for a window the window's key,
start and end; with the pipeline, sink and tool names. The tool reads it from
:func:`rxagent.tools.current_activation` (the same on every retry); results and
dry-run records carry it too.

Activations across restarts: with ``state_dir`` the sink keeps the keys of the
activations that ended (:class:`_ActivationRecord`), writes those new since the
last checkpoint at each :meth:`ToolSink.checkpoint` in one SQLite transaction
(in a thread of its own, never per event) and loads them at
:meth:`ToolSink.recover`. An event whose key is recorded is not activated again:
it ends at once (status ``skipped``, reason ``"already_done"``, counted as
``skipped_done``). So an activation that ended before the last checkpoint does not
fire again after a crash; one running at the crash, or ended after the last
checkpoint, fires again with the same key (docs/state.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import hashlib
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from reactivex import Observable
from reactivex.subject import Subject

from .. import clock
from ..backoff import Backoff
from ..circuit import CircuitBreaker
from ..context import PipelineContext, json_key
from ..events import Batch, Event, Position
from ..exceptions import (
    ConfigurationError,
    StageError,
    StateError,
    ToolError,
    ToolTimeoutError,
)
from ..state.durable import JsonCodec, SQLiteBackend, store_path
from ..tools.activation import ActivationContext, enter_activation, exit_activation
from ..tools.policy import POLICIES, ActivationPolicy, Decision, decide
from ..tools.tool import Tool, register_sink
from ..values import Window, to_key_function
from .base import Sink

__all__ = [
    "RecordedActivation",
    "ToolResult",
    "ToolSink",
    "ToolStatus",
    "activate",
    "idempotency_key",
    "trigger_of",
]

log = logging.getLogger("rxagent")

#: How long :meth:`ToolSink.aclose` waits for cancelled calls to unwind.
_CLOSE_TIMEOUT = 5.0
#: Sweep idle per-key bookkeeping after this many activations (cooldown keeps keys).
_SWEEP_EVERY = 1024
#: Default bound of :attr:`ToolSink.recorded` in dry-run mode.
_MAX_RECORDED = 10_000
#: Default bound of the activation record (``ToolSink(max_done=)``), in keys.
_MAX_DONE = 100_000
#: Part of every idempotency key: a change of the derivation changes this, so keys
#: recorded by an older derivation are never mistaken for new ones.
_KEY_VERSION = 1
#: What the activation record's file says it holds (``meta.kind``).
_RECORD_KIND = "tool-activations"
_T = TypeVar("_T")
#: An activation's trigger (what identifies it) and its idempotency key; None: no
#: stable identity.
_Trigger = tuple[Any, str] | None


class ToolStatus(enum.StrEnum):
    """How an activation ended."""

    OK = "ok"
    ERROR = "error"  # the call failed (after retries) or its arguments were invalid
    TIMEOUT = "timeout"  # the last attempt ran past the timeout
    CANCELLED = "cancelled"  # replaced by a newer event ("latest") or the sink closed
    DROPPED = "dropped"  # never called: key busy ("drop_while_busy") or in cooldown
    SKIPPED = "skipped"  # never called: its trigger's activation already ended (state_dir)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one activation.

    ``attempts`` counts the calls made (0 when never called); ``duration`` the
    seconds from the first call's start to the end; ``reason`` says why an
    activation was dropped or cancelled (``"busy"``, ``"cooldown"``,
    ``"circuit_open"``, ``"replaced"``, ``"closed"``), that its arguments were
    ``"invalid"``, that its trigger's activation had already ended before
    (``"already_done"``, status skipped), or (status ok) that it was only recorded
    (``"dry_run"``). ``event`` is the activating event (already ended: its hold is
    released). ``idempotency_key`` is the activation's key (:func:`idempotency_key`;
    ``None`` when the trigger has no stable identity).
    """

    tool: str
    key: Hashable
    status: ToolStatus
    value: Any = None
    error: BaseException | None = None
    attempts: int = 0
    duration: float = 0.0
    event: Event | None = None
    reason: str | None = None
    idempotency_key: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is ToolStatus.OK


@dataclass(frozen=True, slots=True)
class RecordedActivation:
    """What a dry-run sink did with one event: ``fired`` (the tool would have been
    called with ``arguments`` at ``at``, the pipeline clock's seconds) or not,
    with the ``reason`` (``"cooldown"``, ``"busy"``, ``"replaced"``,
    ``"circuit_open"``) and when the key was eligible again (``eligible_at``,
    ``None`` when that is not a time). ``sink`` and ``pipeline`` name where;
    ``idempotency_key`` is the activation's key (see :func:`idempotency_key`)."""

    tool: str
    sink: str
    pipeline: str
    key: Hashable
    fired: bool
    at: float
    arguments: dict[str, Any]
    reason: str | None = None
    eligible_at: float | None = None
    event_time: float | None = None
    idempotency_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            "tool": self.tool,
            "sink": self.sink,
            "pipeline": self.pipeline,
            "key": json_key(self.key),
            "fired": self.fired,
            "at": self.at,
            "arguments": self.arguments,
            "reason": self.reason,
            "eligible_at": self.eligible_at,
            "event_time": self.event_time,
            "idempotency_key": self.idempotency_key,
        }


class _Activation:
    """One accepted event on its way through the sink."""

    __slots__ = (
        "accepted_at",
        "args",
        "attempts",
        "cancel_reason",
        "ctx",
        "ended",
        "event",
        "guarded",
        "idem",
        "key",
        "started",
        "task",
        "trigger",
    )

    def __init__(
        self,
        event: Event,
        key: Hashable,
        args: BaseModel,
        ctx: PipelineContext,
        accepted_at: float,
        trigger: _Trigger,
    ):
        self.event = event
        self.accepted_at = accepted_at  # the pipeline clock when the policy took it
        self.key = key
        self.trigger = trigger
        self.idem = None if trigger is None else trigger[1]
        self.args = args
        self.ctx = ctx
        self.task: asyncio.Task[_Outcome] | None = None
        self.started: float | None = None
        self.attempts = 0
        self.ended = False
        self.cancel_reason: str | None = None
        self.guarded = False  # allowed by the sink's breaker: report the outcome to it


class _KeyState:
    """A key's calls in progress (running or waiting for a slot) and its backlog."""

    __slots__ = ("active", "backlog", "last_activation")

    def __init__(self) -> None:
        self.active: list[_Activation] = []
        self.backlog: deque[_Activation] = deque()
        self.last_activation: float | None = None

    @property
    def busy(self) -> bool:
        return bool(self.active or self.backlog)


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None


class ToolSink(Sink):
    """Activates ``tool`` once per event: the event's arguments are validated by
    the tool like an LLM's call, and the call runs under a per-key policy, with
    cooldowns, limits, retries and an optional circuit breaker.

    Invalid arguments, and calls that fail for good (after retries), go to dead
    letters. Events let go on purpose (cooldown, busy, replaced, circuit open) are
    recorded with their reason in :meth:`suppressions`. Every activation's
    idempotency key reaches the tool through
    :func:`rxagent.tools.current_activation` (also on its :class:`ToolResult` and
    dry-run record); every activation ends in exactly one :class:`ToolResult` on
    :attr:`results`.

    Example::

        alerts = ToolSink(notify, args=lambda v: {"symbol": v["sym"], "px": v["px"]},
                          key="sym", policy="latest", cooldown=30, timeout=5,
                          retry=Backoff(max_attempts=3, retry_on=(ConnectionError,)))
        alerts.results.subscribe(print)

    Args:
        tool: the :class:`Tool` to activate, or a function (made a tool as with
            ``@tool``).
        args: ``args(value)`` gives the call's arguments from the event's value: a
            dict or a model instance (default: the value itself is the arguments).
        event_args: ``event_args(event)`` gives them from the whole event (its key,
            time, source position); give ``args`` or ``event_args``, not both.
        key: the key the policy and cooldown work per: a field name or a function
            of the value (default: the event's key; events without one share the
            key ``None``, so under ``"queue"`` they run one at a time, in order).
        policy: what a key's event does while the key's call runs:
            ``"queue"`` (waits, calls run in arrival order), ``"latest"`` (cancels
            that call and runs instead), ``"drop_while_busy"`` (is dropped,
            counted) or ``"parallel"`` (runs too; only ``concurrency`` limits it).
        cooldown: seconds of the pipeline clock (``ctx.now()``) after a key's
            activation during which its events are dropped (reason ``"cooldown"``).
        concurrency: the most calls running at once, across keys.
        timeout: seconds per attempt (:class:`ToolTimeoutError` when exceeded).
        retry: a :class:`Backoff` for failed attempts; ``None`` calls once.
        breaker: a :class:`~rxagent.circuit.CircuitBreaker` asked when an event
            arrives (after the policy): while it refuses, events are dropped
            (reason ``"circuit_open"``); each call's final outcome (after retries)
            is reported to it. Its clock is its own if it has one, else the
            pipeline's.
        dry_run: record activations (:attr:`recorded`) instead of calling the tool.
        max_recorded: the most dry-run records kept; those past it are only
            counted (``recorded_overflow``).
        name: the sink's name in status, metrics and dead letters (default
            ``"tool:<the tool's name>"``).
        rng: the random source of the retry jitter (seed one for repeatable tests).
        state_dir: keep a durable record of the activations that ended, in
            ``<state_dir>/tools.<pipeline>.<sink>.sqlite3`` (names made safe for
            file names), written at each checkpoint and loaded when the pipeline
            starts; an event whose activation is recorded is not activated again
            (status ``skipped``, reason ``"already_done"``). A dry run reads the
            record but never writes it.
        max_done: the most keys the durable record keeps (the newest): make it
            larger than the number of triggers a restart can replay (a count,
            since the sink is not told the source's commit positions).
        trigger_id: ``trigger_id(event)`` identifies an event's trigger when the
            default (:func:`trigger_of`: its source position, or a window's key and
            bounds) does not fit, e.g. an order id in the value; it must give the
            same JSON-able value for the same trigger after a restart. The
            idempotency key is derived from it with the pipeline, sink and tool
            names (:func:`idempotency_key`).
    """

    kind = "tool"

    def __init__(
        self,
        tool: Tool | Callable[..., Any],
        *,
        args: Callable[[Any], Any] | None = None,
        event_args: Callable[[Event], Any] | None = None,
        key: str | int | Callable[[Any], Hashable] | None = None,
        policy: ActivationPolicy = "queue",
        cooldown: float | None = None,
        concurrency: int = 8,
        timeout: float | None = None,
        retry: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        dry_run: bool = False,
        max_recorded: int = _MAX_RECORDED,
        name: str | None = None,
        rng: random.Random | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        max_done: int = _MAX_DONE,
        trigger_id: Callable[[Event], Any] | None = None,
    ) -> None:
        self.tool = tool if isinstance(tool, Tool) else Tool(tool)
        super().__init__(name or f"tool:{self.tool.name}")
        where = f"tool sink {self.name!r}"
        if args is not None and event_args is not None:
            raise ConfigurationError(f"{where}: give args or event_args, not both")
        for label, fn in (("args", args), ("event_args", event_args)):
            if fn is not None and not callable(fn):
                raise ConfigurationError(f"{where}: {label} must be callable, got {fn!r}")
        if policy not in POLICIES:
            raise ConfigurationError(
                f"{where}: policy must be one of {sorted(POLICIES)}, got {policy!r}"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"{where}: concurrency must be an int >= 1, got {concurrency!r}"
            )
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"{where}: timeout must be > 0 seconds, got {timeout!r}")
        if cooldown is not None and not cooldown >= 0:
            raise ConfigurationError(f"{where}: cooldown must be >= 0 seconds, got {cooldown!r}")
        if retry is not None and not isinstance(retry, Backoff):
            raise ConfigurationError(f"{where}: retry must be a Backoff or None, got {retry!r}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(
                f"{where}: breaker must be a CircuitBreaker or None, got {breaker!r}"
            )
        if isinstance(max_recorded, bool) or not isinstance(max_recorded, int) or max_recorded < 0:
            raise ConfigurationError(
                f"{where}: max_recorded must be an int >= 0, got {max_recorded!r}"
            )
        if isinstance(max_done, bool) or not isinstance(max_done, int) or max_done < 1:
            raise ConfigurationError(f"{where}: max_done must be an int >= 1, got {max_done!r}")
        if trigger_id is not None and not callable(trigger_id):
            raise ConfigurationError(f"{where}: trigger_id must be callable, got {trigger_id!r}")
        if state_dir is not None and not isinstance(state_dir, str | os.PathLike):
            raise ConfigurationError(f"{where}: state_dir must be a path, got {state_dir!r}")
        #: Where the activation record lives (None: no record, activations are not
        #: remembered across restarts).
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.max_done = max_done
        self.trigger_id = trigger_id
        self._record_of: _ActivationRecord | None = None
        self._key_names: tuple[str, str] | None = None  # (pipeline, sink) the keys use
        # (pipeline, sink) and the idempotency keys' JSON prefix for them
        self._key_prefix: tuple[tuple[str, str], str] | None = None
        self.args_fn = args
        self.event_args_fn = event_args
        self.key_fn = None if key is None else to_key_function(key)
        self.policy: ActivationPolicy = policy
        self.cooldown = cooldown or None
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry
        self.breaker = breaker
        #: Record activations instead of calling the tool (set before the pipeline starts).
        self.dry_run = bool(dry_run)
        self.max_recorded = max_recorded
        #: Dry run: what the sink did with each event, up to ``max_recorded``.
        self.recorded: list[RecordedActivation] = []
        #: Dry run: records not kept because ``recorded`` was full.
        self.recorded_overflow = 0
        self._rng = rng if rng is not None else random.Random()
        self._results: Subject[ToolResult] = Subject()
        self._keys: dict[Hashable, _KeyState] = {}
        self._ready: deque[_Activation] = deque()  # accepted, waiting for a global slot
        self._tasks: dict[asyncio.Task[_Outcome], _Activation] = {}
        self._running = 0
        self._waiting = 0  # in _ready or a backlog, not ended
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._since_sweep = 0
        self._stream_done = False
        self._closed = False
        self._results_done = False

    # -- the public surface ---------------------------------------------------------

    @property
    def results(self) -> Observable[ToolResult]:
        """One :class:`ToolResult` per event received; completes once the sink
        has drained after the stream ended, or was closed."""
        return self._results

    @property
    def running(self) -> int:
        """Calls in progress now."""
        return self._running

    @property
    def queued(self) -> int:
        """Accepted activations waiting for their key or for a slot."""
        return self._waiting

    def suppressions(self) -> list[dict[str, Any]]:
        """Why this sink did not fire, per key: one dict per key and reason with
        ``key``, ``reason`` (``"cooldown"``, ``"busy"``, ``"replaced"``,
        ``"circuit_open"``), ``count``, ``first_at``, ``last_at`` and
        ``eligible_at`` (the pipeline clock's seconds; ``None`` when the key waits
        for something other than time), most recent first. Empty before the
        sink's pipeline started. The table keeps the most recently suppressed keys
        only (:class:`~rxagent.context.Suppressions`)."""
        if self.ctx is None:
            return []
        return [
            {k: v for k, v in e.as_dict().items() if k != "stage"}
            for e in self.ctx.suppressions.entries(self.name)
        ]

    @property
    def record_path(self) -> Path | None:
        """The file of the activation record (``None`` without ``state_dir``, or
        before the sink's pipeline started: the name includes the pipeline's)."""
        record = self._record_of
        return None if record is None else record.backend.path

    def bind(self, ctx: PipelineContext) -> None:
        super().bind(ctx)
        self._key_names = (ctx.pipeline, self.name)
        if self.state_dir is not None and self._record_of is None:
            self._record_of = _ActivationRecord(
                store_path(self.state_dir, f"tools.{ctx.pipeline}.{self.name}"),
                pipeline=ctx.pipeline,
                sink=self.name,
                tool=self.tool.name,
                max_done=self.max_done,
            )

    async def recover(self) -> None:
        """Load the activation record (``state_dir``): before the first event, so a
        replayed event whose activation already ended is not activated again."""
        if self._record_of is not None:
            try:
                await self._record_of.open()
            except StateError as error:
                raise StateError(
                    f"tool sink {self.name!r}: cannot load its activation record: {error}"
                ) from error

    async def checkpoint(self, meta: Mapping[str, Any] | None = None) -> None:
        """Write the keys of the activations that ended since the last checkpoint
        (one transaction, in the record's thread). Not in a dry run. The source's
        ``meta`` is not kept: the record is no resume position (a source resumes
        from what its state stores hold; the record skips what it replays)."""
        if self._record_of is not None and not self.dry_run:
            await self._record_of.checkpoint()

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "tool": self.tool.name,
            "policy": self.policy,
            "cooldown": self.cooldown,
            "concurrency": self.concurrency,
            "timeout": self.timeout,
            "retry": None if self.retry is None else self.retry.describe(),
            "running": self._running,
            "queued": self._waiting,
        }
        if self.breaker is not None:
            described["breaker"] = self.breaker.describe()
        if self.dry_run:
            described["dry_run"] = True
        if self.ctx is not None:
            described["suppressed"] = self.ctx.suppressions.totals(self.name)
        if self._record_of is not None:
            described["activation_record"] = self._record_of.describe()
        return described

    # -- receiving events ------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        ctx = batch.ctx
        metrics = ctx.stage(self.name)
        n = len(batch.values)
        metrics.events_in += n
        if self._closed:
            for i in range(n):
                event = batch.event(i, take=True)
                error = ToolError(
                    f"tool sink {self.name!r} is closed: event not activated", tool=self.tool.name
                )
                self._emit(
                    ToolResult(
                        self.tool.name,
                        event.key,
                        ToolStatus.CANCELLED,
                        error=error,
                        event=event,
                        reason="closed",
                    )
                )
                ctx.dead_letter(event, self.name, error)
            return
        now = ctx.now()
        record = self._record_of
        done = None if record is None else record.done
        for i in range(n):
            event = batch.event(i, take=True)
            key: Hashable = event.key
            trigger: _Trigger = None
            try:
                if self.key_fn is not None:
                    key = self.key_fn(event.value)
                    hash(key)  # an unhashable key is this event's error, not the pipeline's
                trigger = self._trigger(batch.source, event)
                if done is not None and trigger is not None and trigger[1] in done:
                    self._skip(ctx, event, key, trigger[1], now)
                    continue
                model = self.tool.validate(self._args_of(event))
            except Exception as error:
                self._emit(
                    ToolResult(
                        self.tool.name,
                        key,
                        ToolStatus.ERROR,
                        error=error,
                        event=event,
                        reason="invalid",
                        idempotency_key=None if trigger is None else trigger[1],
                    )
                )
                ctx.dead_letter(event, self.name, error)
                continue
            self._accept(ctx, event, key, model, now, trigger)
        self._gauges(ctx)

    def _trigger(self, source: str, event: Event) -> _Trigger:
        """The event's trigger and its idempotency key (None: no stable identity)."""
        names = self._key_names
        if names is None:  # not bound (a sink driven by hand): the names it has
            names = ("" if self.ctx is None else self.ctx.pipeline, self.name)
        ident = trigger_of(event, source) if self.trigger_id is None else self.trigger_id(event)
        if ident is None:
            return None
        cached = self._key_prefix
        if cached is None or cached[0] != names:
            cached = self._key_prefix = (names, _key_prefix(names[0], names[1], self.tool.name))
        text = cached[1] + _KEY_JSON.encode(ident) + "]"
        return ident, hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def _skip(
        self, ctx: PipelineContext, event: Event, key: Hashable, idem: str, now: float
    ) -> None:
        """The trigger's activation already ended (before a restart): end the event."""
        metrics = ctx.stage(self.name)
        metrics.dropped += 1
        _bump(metrics.extra, "skipped_done")
        ctx.suppressions.record(self.name, key, "already_done", at=now)
        self._emit(
            ToolResult(
                self.tool.name,
                key,
                ToolStatus.SKIPPED,
                event=event,
                reason="already_done",
                idempotency_key=idem,
            )
        )
        event.end()

    def _mark_done(self, activation_trigger: _Trigger, outcome: str) -> None:
        """Remember that the trigger's activation ended (before its event ends, so
        every offset committed after a checkpoint is covered by the record)."""
        record = self._record_of
        if record is None or activation_trigger is None or self.dry_run:
            return
        ident, idem = activation_trigger
        record.add(idem, outcome, _trigger_text(ident))

    def on_completed(self) -> None:
        self._stream_done = True

    def _args_of(self, event: Event) -> Any:
        if self.event_args_fn is not None:
            return self.event_args_fn(event)
        if self.args_fn is not None:
            return self.args_fn(event.value)
        return event.value

    def _accept(
        self,
        ctx: PipelineContext,
        event: Event,
        key: Hashable,
        model: BaseModel,
        now: float,
        trigger: _Trigger = None,
    ) -> None:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        decision = decide(
            self.policy,
            busy=state.busy,
            now=now,
            last_activation=state.last_activation,
            cooldown=self.cooldown,
        )
        if decision is Decision.DROP_BUSY or decision is Decision.DROP_COOLDOWN:
            if decision is Decision.DROP_BUSY:
                self._drop(ctx, event, key, model, state, now, "busy", None, trigger)
            else:
                assert state.last_activation is not None
                assert self.cooldown is not None
                until = state.last_activation + self.cooldown
                self._drop(ctx, event, key, model, state, now, "cooldown", until, trigger)
            return
        breaker = self.breaker
        if breaker is not None:
            at = now if breaker.clock is None else None
            if not breaker.allow(at):
                self._drop(
                    ctx, event, key, model, state, now, "circuit_open", breaker.open_until, trigger
                )
                return
        state.last_activation = now
        activation = _Activation(event, key, model, ctx, now, trigger)
        activation.guarded = breaker is not None
        if decision is Decision.QUEUE:
            state.backlog.append(activation)
            self._waiting += 1
            return
        if decision is Decision.REPLACE:
            for old in list(state.active):
                self._cancel(old, "replaced")
        self._admit(state, activation)
        self._sweep(now)

    def _drop(
        self,
        ctx: PipelineContext,
        event: Event,
        key: Hashable,
        model: BaseModel,
        state: _KeyState,
        now: float,
        reason: str,
        until: float | None,
        trigger: _Trigger = None,
    ) -> None:
        """Do not activate: count, record why (and, in a dry run, what), end the event."""
        metrics = ctx.stage(self.name)
        metrics.dropped += 1
        _bump(metrics.extra, f"dropped_{reason}")
        ctx.suppressions.record(self.name, key, reason, at=now, until=until)
        idem = None if trigger is None else trigger[1]
        if self.dry_run:
            self._record(
                ctx, event, key, model, now, fired=False, reason=reason, until=until, idem=idem
            )
        self._emit(
            ToolResult(
                self.tool.name,
                key,
                ToolStatus.DROPPED,
                event=event,
                reason=reason,
                idempotency_key=idem,
            )
        )
        # decided: a replay after a restart is not decided again (without the policy's
        # state, a dropped event could fire then)
        self._mark_done(trigger, f"dropped:{reason}")
        event.end()
        self._forget_if_idle(key, state)

    def _record(
        self,
        ctx: PipelineContext,
        event: Event,
        key: Hashable,
        args: BaseModel,
        at: float,
        *,
        fired: bool,
        reason: str | None = None,
        until: float | None = None,
        idem: str | None = None,
    ) -> None:
        """Keep a dry-run record, within ``max_recorded``."""
        if len(self.recorded) >= self.max_recorded:
            self.recorded_overflow += 1
            return
        self.recorded.append(
            RecordedActivation(
                self.tool.name,
                self.name,
                ctx.pipeline,
                key,
                fired,
                at,
                args.model_dump(mode="json"),
                reason,
                until,
                event.time,
                idem,
            )
        )

    # -- running calls -----------------------------------------------------------------

    def _admit(self, state: _KeyState, activation: _Activation) -> None:
        state.active.append(activation)
        if self._running < self.concurrency:
            self._start(activation)
        else:
            self._ready.append(activation)
            self._waiting += 1

    def _start(self, activation: _Activation) -> None:
        loop = asyncio.get_running_loop()
        self._running += 1
        activation.started = activation.ctx.now()  # the pipeline's clock (Decision 8)
        task = loop.create_task(self._run(activation), name=f"rxagent-{self.name}")
        activation.task = task
        self._tasks[task] = activation
        task.add_done_callback(partial(self._on_done, activation))

    async def _run(self, activation: _Activation) -> _Outcome:
        """The call with its timeout and retries. Cancellation propagates."""
        tool = self.tool
        ctx = activation.ctx
        if self.dry_run:  # record what would be called, call nothing
            activation.attempts = 1
            # at: when the policy accepted it (what its cooldown counts from), so the
            # records of one key read in the order the events came
            self._record(
                ctx,
                activation.event,
                activation.key,
                activation.args,
                activation.accepted_at,
                fired=True,
                idem=activation.idem,
            )
            return _Outcome()
        # timeouts, retry waits and the time retried so far are on the pipeline's
        # clock: virtual under a TestScheduler (Decision 8)
        first = ctx.now()
        pipeline = ctx.pipeline
        position = activation.event.position
        trigger = None if activation.trigger is None else _trigger_text(activation.trigger[0])
        while True:
            activation.attempts += 1
            token = enter_activation(
                ActivationContext(
                    activation.idem,
                    tool.name,
                    self.name,
                    pipeline,
                    activation.key,
                    activation.attempts,
                    position,
                    trigger,
                )
            )
            scope: asyncio.Timeout | None = None
            try:
                if self.timeout is None:  # no timeout scope to enter and leave per call
                    value = await tool.call(activation.args)
                else:
                    async with clock.timeout(ctx.scheduler, self.timeout) as scope:
                        value = await tool.call(activation.args)
            except Exception as raised:
                error: BaseException = raised
            else:
                return _Outcome(value=value)
            finally:
                exit_activation(token)
            if scope is not None and scope.expired():
                error = ToolTimeoutError(
                    f"tool {tool.name!r} timed out after {self.timeout:g}s "
                    f"(attempt {activation.attempts})",
                    tool=tool.name,
                )
                _bump(activation.ctx.stage(self.name).extra, "timeouts")
            retry = self.retry
            wait = (
                None
                if retry is None
                else retry.next_delay(activation.attempts, ctx.now() - first, error, self._rng)
            )
            if wait is None:
                return _Outcome(error=error)
            _bump(activation.ctx.stage(self.name).extra, "retries")
            await clock.sleep(ctx.scheduler, wait)

    def _on_done(self, activation: _Activation, task: asyncio.Task[_Outcome]) -> None:
        """A call's task finished: report it, end its event, start what waits."""
        self._tasks.pop(task, None)
        self._running -= 1
        ctx = activation.ctx
        try:
            if task.cancelled():
                self._finish_cancelled(activation, activation.cancel_reason or "cancelled")
            else:
                raised = task.exception()
                outcome = _Outcome(error=raised) if raised is not None else task.result()
                self._finish(activation, outcome)
        except StageError as error:  # fail_fast: the dead letter is a pipeline failure
            ctx.fail(error, self.name)
        except Exception as error:  # a bug here must fail loudly, not stall the source
            log.exception("tool sink %r failed to finish an activation", self.name)
            activation.event.end()
            ctx.fail(error, self.name)
        finally:
            self._release(activation)
            self._pump()
            self._gauges(ctx)
            self._check_idle()

    def _finish(self, activation: _Activation, outcome: _Outcome) -> None:
        if activation.ended:
            return
        activation.ended = True
        ctx = activation.ctx
        duration = self._duration(activation)
        error = outcome.error
        breaker = self.breaker
        if breaker is not None and activation.guarded:
            at = ctx.now() if breaker.clock is None else None
            if error is None:
                breaker.record_success(at)
            else:
                breaker.record_failure(at, error)
        if error is None:
            ctx.stage(self.name).events_out += 1
            self._mark_done(activation.trigger, ToolStatus.OK.value)
            self._emit(
                ToolResult(
                    self.tool.name,
                    activation.key,
                    ToolStatus.OK,
                    value=outcome.value,
                    attempts=activation.attempts,
                    duration=duration,
                    event=activation.event,
                    reason="dry_run" if self.dry_run else None,
                    idempotency_key=activation.idem,
                )
            )
            activation.event.end()
            return
        status = ToolStatus.TIMEOUT if isinstance(error, ToolTimeoutError) else ToolStatus.ERROR
        # failed after its retries: a dead letter, the offset committed past it like
        # any other ended event, so a restart does not retry it either
        self._mark_done(activation.trigger, status.value)
        self._emit(
            ToolResult(
                self.tool.name,
                activation.key,
                status,
                error=error,
                attempts=activation.attempts,
                duration=duration,
                event=activation.event,
                idempotency_key=activation.idem,
            )
        )
        ctx.dead_letter(activation.event, self.name, self._failure(activation, error))

    def _finish_cancelled(self, activation: _Activation, reason: str) -> None:
        """End a cancelled activation: a replaced one is a counted drop (the policy
        chose to lose it); one cancelled by closing becomes a dead letter, so
        shutting down loses nothing silently."""
        if activation.ended:
            return
        activation.ended = True
        ctx = activation.ctx
        if self.breaker is not None and activation.guarded:
            self.breaker.release()  # no verdict: free a half-open trial slot
        metrics = ctx.stage(self.name)
        _bump(metrics.extra, "cancelled")
        error = ToolError(
            f"tool {self.tool.name!r} call for key {activation.key!r} was cancelled: "
            + (
                "a newer event for the key replaced it (policy 'latest')"
                if reason == "replaced"
                else "the sink closed before it finished (drain timed out or the pipeline stopped)"
            ),
            tool=self.tool.name,
        )
        self._emit(
            ToolResult(
                self.tool.name,
                activation.key,
                ToolStatus.CANCELLED,
                error=error,
                attempts=activation.attempts,
                duration=self._duration(activation),
                event=activation.event,
                reason=reason,
                idempotency_key=activation.idem,
            )
        )
        if reason == "replaced":
            metrics.dropped += 1
            self._mark_done(activation.trigger, "cancelled:replaced")
            activation.event.end()
        else:
            ctx.dead_letter(activation.event, self.name, error)

    def _cancel(self, activation: _Activation, reason: str) -> None:
        if activation.ended or activation.cancel_reason is not None:
            return
        activation.cancel_reason = reason
        if reason == "replaced":  # the policy chose to lose it: say so, per key
            ctx = activation.ctx
            now = ctx.now()
            ctx.suppressions.record(self.name, activation.key, reason, at=now)
            if self.dry_run:
                self._record(
                    ctx,
                    activation.event,
                    activation.key,
                    activation.args,
                    now,
                    fired=False,
                    reason=reason,
                    idem=activation.idem,
                )
        if activation.task is not None:
            activation.task.cancel()  # _on_done finishes it
            return
        # still waiting for a slot: never started, finish it now
        self._waiting -= 1
        state = self._keys.get(activation.key)
        if state is not None and activation in state.active:
            state.active.remove(activation)
        self._finish_cancelled(activation, reason)

    def _release(self, activation: _Activation) -> None:
        """The activation left its key: let the key's next queued event run."""
        state = self._keys.get(activation.key)
        if state is None:
            return
        if activation in state.active:
            state.active.remove(activation)
        if not state.active and state.backlog and not self._closed:
            nxt = state.backlog.popleft()
            self._waiting -= 1
            self._admit(state, nxt)
        self._forget_if_idle(activation.key, state)

    def _pump(self) -> None:
        """Start waiting activations while global slots are free."""
        ready = self._ready
        while ready and self._running < self.concurrency and not self._closed:
            activation = ready.popleft()
            if activation.ended or activation.cancel_reason is not None:
                continue  # cancelled while waiting, already counted out
            self._waiting -= 1
            self._start(activation)

    # -- draining and closing ---------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every accepted activation ended (new events may still arrive)."""
        loop = asyncio.get_running_loop()
        while self._busy():
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._idle_waiters:
                    self._idle_waiters.remove(waiter)
        if self._stream_done:
            self._complete_results()

    async def aclose(self) -> None:
        """Cancel every call and every waiting activation; their events end as
        dead letters. Waits for the cancelled tasks, so none outlives the sink.
        Then writes what ended since the last checkpoint to the activation record
        (cancelled calls are not recorded: they fire again) and closes it."""
        try:
            await self._cancel_all()
        finally:
            record = self._record_of
            if record is not None:
                await record.close(write=not self.dry_run)

    async def _cancel_all(self) -> None:
        self._closed = True
        waiting = [a for a in self._ready if not a.ended and a.cancel_reason is None]
        for key_state in self._keys.values():
            waiting.extend(key_state.backlog)
            key_state.backlog.clear()
        self._ready.clear()
        for activation in waiting:
            activation.cancel_reason = "closed"
            self._waiting -= 1
            state = self._keys.get(activation.key)
            if state is not None and activation in state.active:
                state.active.remove(activation)
            self._finish_safely(activation)
        tasks = list(self._tasks)
        for task in tasks:
            activation = self._tasks[task]
            if activation.cancel_reason is None:
                activation.cancel_reason = "closed"
            task.cancel()
        if tasks:
            # real seconds, not the pipeline's clock: how long shutdown waits for
            # tasks on the event loop (a virtual clock may never advance again)
            _, stuck = await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT)
            for task in stuck:  # a tool that swallows cancellation: stop waiting for it
                log.warning(
                    "tool sink %r: a %r call ignored cancellation for %.0fs; its event ends now",
                    self.name,
                    self.tool.name,
                    _CLOSE_TIMEOUT,
                )
                self._finish_safely(self._tasks[task])
        self._keys.clear()
        self._check_idle()
        self._complete_results()

    def _finish_safely(self, activation: _Activation) -> None:
        try:
            self._finish_cancelled(activation, "closed")
        except StageError as error:
            activation.ctx.fail(error, self.name)

    def _busy(self) -> bool:
        return self._running > 0 or self._waiting > 0

    def _check_idle(self) -> None:
        if self._busy():
            return
        for waiter in self._idle_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._idle_waiters.clear()

    # -- helpers ---------------------------------------------------------------------------

    def _emit(self, result: ToolResult) -> None:
        try:
            self._results.on_next(result)
        except Exception:  # a subscriber's bug must not cost the event its end
            log.exception("tool sink %r: a results subscriber raised", self.name)

    def _complete_results(self) -> None:
        if not self._results_done:
            self._results_done = True
            try:
                self._results.on_completed()
            except Exception:
                log.exception("tool sink %r: a results subscriber raised", self.name)

    def _failure(self, activation: _Activation, error: BaseException) -> ToolError:
        """The dead letter's reason: what failed, how often it was tried, why it stopped."""
        last = f"{type(error).__name__}: {error}"
        n = activation.attempts
        if n > 1:
            why = f"failed after {n} attempts; last error: {last}"
        elif self.retry is not None and not self.retry.retryable(error):
            kinds = ", ".join(k.__name__ for k in self.retry.retry_on)
            why = f"failed: {last} (not retried: not one of retry_on ({kinds}))"
        else:
            why = f"failed: {last}"
        cls = ToolTimeoutError if isinstance(error, ToolTimeoutError) else ToolError
        wrapped = cls(
            f"tool {self.tool.name!r} (key {activation.key!r}) {why}", tool=self.tool.name
        )
        wrapped.__cause__ = error
        return wrapped

    def _duration(self, activation: _Activation) -> float:
        if activation.started is None:
            return 0.0
        return activation.ctx.now() - activation.started

    def _forget_if_idle(self, key: Hashable, state: _KeyState) -> None:
        # a key's state is kept while busy, or while its cooldown still matters
        if not state.busy and self.cooldown is None:
            self._keys.pop(key, None)

    def _sweep(self, now: float) -> None:
        """Forget idle keys whose cooldown is over, so many keys do not pile up."""
        if self.cooldown is None:
            return
        self._since_sweep += 1
        if self._since_sweep < _SWEEP_EVERY:
            return
        self._since_sweep = 0
        horizon = now - self.cooldown
        stale = [
            k
            for k, s in self._keys.items()
            if not s.busy and (s.last_activation is None or s.last_activation <= horizon)
        ]
        for k in stale:
            del self._keys[k]

    def _gauges(self, ctx: PipelineContext) -> None:
        extra = ctx.stage(self.name).extra
        extra["running"] = self._running
        extra["queued"] = self._waiting


def _bump(extra: dict[str, int | float], name: str) -> None:
    extra[name] = extra.get(name, 0) + 1


def activate(tool: Tool | Callable[..., Any], **options: Any) -> ToolSink:
    """A :class:`ToolSink` for ``tool`` (a :class:`Tool` or a plain function).

    ``Pipeline(...).to(activate(notify, key="sym", policy="latest"))``
    """
    return ToolSink(tool, **options)


# Tool.sink() builds a ToolSink without the tool module importing this one
register_sink(ToolSink)


# -- idempotency keys ----------------------------------------------------------------------


def trigger_of(event: Event, source: str | None = None) -> tuple[Any, ...] | None:
    """What identifies the trigger of an activation, the same after a restart.

    - An event whose value is a :class:`~rxagent.values.Window` (a window's
      output): ``("window", source, key, start, end)``. A window has no offset of
      its own (its row carries its last event's, which overlapping windows share)
      and no stable partition (its events may come from several batches). Its
      bounds are stable when they are event times; a window over processing time
      gets other bounds after a restart, and so another key.
    - An event with a source position: ``("event", source, partition, offset)``.
    - Otherwise ``None``: no stable identity (a push source's events, a value
      mapped from a window): such an activation has no idempotency key and is
      not recorded, so it fires again when replayed; give the sink
      ``trigger_id=`` to identify such events.

    ``source`` is the name of the source of the event's batch, used for a
    window without a position (a position names its own source).
    """
    position = event.position
    value = event.value
    if isinstance(value, Window):
        named = position.source if position is not None else source
        return ("window", named, value.key, value.start, value.end)
    if position is not None and position.offset is not None:
        return ("event", position.source, position.partition, position.offset)
    return None


def idempotency_key(trigger: Any, *, pipeline: str, sink: str, tool: str) -> str:
    """The idempotency key of an activation: 32 hex characters (a 128-bit BLAKE2b
    digest) of its trigger (:func:`trigger_of`, or a sink's ``trigger_id``) with
    the pipeline, sink and tool names, so two sinks (or two pipelines) activated
    by one event get different keys. The same inputs give the same key in every
    process: the trigger is hashed as canonical JSON (tuples as lists, mapping
    keys sorted; a value JSON cannot hold by its ``repr``, which must then be
    stable too), never with Python's randomised ``hash``. Renaming the
    pipeline or the sink changes every key."""
    text = _KEY_JSON.encode([_KEY_VERSION, pipeline, sink, tool, trigger])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


#: The canonical JSON of idempotency keys, made once (``json.dumps`` with options
#: builds an encoder per call: a third of a key's cost).
_KEY_JSON = json.JSONEncoder(default=repr, sort_keys=True, separators=(",", ":"))


def _key_prefix(pipeline: str, sink: str, tool: str) -> str:
    """The canonical JSON of a sink's idempotency keys up to the trigger: a key is
    ``blake2b(prefix + json(trigger) + "]")``, the same text :func:`idempotency_key`
    hashes, without encoding the names again per event."""
    return _KEY_JSON.encode([_KEY_VERSION, pipeline, sink, tool])[:-1] + ","


def _trigger_text(ident: Any, limit: int = 200) -> str:
    """A trigger as people read it: ``"ticks[0]@41"``, ``"window 'a' [0.0, 60.0] of ticks"``."""
    if isinstance(ident, tuple) and len(ident) == 4 and ident[0] == "event":
        text = str(Position(ident[1], ident[2], ident[3]))
    elif isinstance(ident, tuple) and len(ident) == 5 and ident[0] == "window":
        _, source, key, start, end = ident
        text = f"window {key!r} [{start}, {end}] of {source}"
    else:
        text = repr(ident)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the durable record of activations done ------------------------------------------------


class _ActivationRecord:
    """The idempotency keys of the activations that ended, durable at checkpoints.

    On the loop: ``done`` (key -> outcome, oldest first) answers "already done?"
    per event with one dict lookup; ``add`` puts a key there and in ``pending``.
    A checkpoint swaps ``pending`` (and the keys pruned since) out and writes them
    in one transaction of a SQLite file (:class:`~rxagent.state.durable.SQLiteBackend`:
    WAL, ``synchronous=FULL``, JSON codec), in a thread of its own; ``open`` loads
    the file in that thread. Each row is ``key -> [seq, outcome, trigger text]``.

    **Why the bound is a count.** The record needs a key as long as its trigger
    can be replayed. What is replayed after a restart is the source's business: a
    Kafka source replays from its last commit (which follows the checkpoints of
    *every* sink of the pipeline, not this one's), a memory or replay source
    replays from the start, and the sink sees no commit. Pruning by offset ("keep
    offsets at or above the lowest uncommitted one") would therefore need commit
    positions the sink is not told, and would be wrong for sources that start
    over. So the record keeps the newest ``max_done`` keys (default 100,000,
    about 100 bytes each on disk and in memory) and forgets the oldest first:
    safe whenever a restart replays fewer than ``max_done`` activations. For Kafka
    that is the events between the last commit and the crash (about a checkpoint
    interval's worth plus the source's credit); for a source that replays from
    the start, its whole input must fit, else the oldest activations fire again.
    The file never holds more rows than ``max_done`` after a checkpoint.
    """

    def __init__(self, path: Path, *, pipeline: str, sink: str, tool: str, max_done: int) -> None:
        self.backend = SQLiteBackend(path, store=sink, codec=JsonCodec())
        self.pipeline = pipeline
        self.sink = sink
        self.tool = tool
        self.max_done = max_done
        self.done: dict[str, str] = {}
        self.pending: dict[str, tuple[int, str, str]] = {}
        self.pruned_since: list[str] = []  # written keys pushed out by the bound
        self.seq = 0
        self.loaded = False
        self.checkpoints = 0
        self.written = 0
        self.restored = 0
        self.pruned = 0
        self.last_checkpoint: float | None = None
        self.last_duration: float | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._opening: asyncio.Future[None] | None = None
        self._lock: asyncio.Lock | None = None

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"rxagent-tools-{self.sink}"
            )
        result: _T = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return result

    # -- loading -------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the record (in its thread; once: later calls return at once)."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        rows = await self._run(self._load)
        keep = rows[-self.max_done :]
        self.pruned_since.extend(key for _, key, _ in rows[: len(rows) - len(keep)])
        for _, key, outcome in keep:
            self.done[key] = outcome
        # keys added before the load (a sink driven by hand) stay the newest
        for key in list(self.pending):
            self.done[key] = self.done.pop(key, self.pending[key][1])
        self._prune()
        if rows:
            self.seq = max(self.seq, rows[-1][0] + 1)
        self.restored = len(keep)
        self.loaded = True
        log.info(
            "tool sink %r: %d activations done loaded from %s",
            self.sink,
            len(keep),
            self.backend.path,
        )

    def _load(self) -> list[tuple[int, str, str]]:
        """Every recorded key as ``(seq, key, outcome)``, oldest first (in the thread)."""
        path = self.backend.path
        meta = self.backend.open()
        kind = meta.get("kind")
        if (kind is not None and kind != _RECORD_KIND) or meta.get("store") != self.sink:
            raise StateError(
                f"{path} is not the activation record of tool sink {self.sink!r} "
                f"(it holds {kind or 'state'} of {meta.get('store')!r}); use another state_dir"
            )
        rows: list[tuple[int, str, str]] = []
        try:
            for key, _part, record in self.backend.rows():
                if not isinstance(key, str):
                    raise ValueError(f"key {key!r} is not an idempotency key")
                rows.append((int(record[0]), key, str(record[1])))
        except (IndexError, TypeError, ValueError) as error:
            raise StateError(
                f"{path} is corrupt ({type(error).__name__}: {error}); move it away to "
                "start with an empty record"
            ) from error
        rows.sort()
        return rows

    # -- recording -----------------------------------------------------------------------

    def add(self, key: str, outcome: str, trigger: str) -> None:
        """The activation of ``key`` ended (on the loop; durable at the next checkpoint)."""
        if key in self.done:
            return
        self.done[key] = outcome
        self.pending[key] = (self.seq, outcome, trigger)
        self.seq += 1
        self._prune()

    def _prune(self) -> None:
        done = self.done
        while len(done) > self.max_done:
            oldest = next(iter(done))
            del done[oldest]
            self.pruned += 1
            if self.pending.pop(oldest, None) is None:
                self.pruned_since.append(oldest)  # on disk: delete it there too

    # -- checkpoints ---------------------------------------------------------------------

    async def checkpoint(self) -> bool:
        """Write the keys added (and delete those pruned) since the last checkpoint,
        in one transaction; False when there was nothing to write."""
        await self.open()
        if self._lock is None:
            self._lock = asyncio.Lock()
        # one checkpoint at a time; one that waited covers every key up to its start
        async with self._lock:
            if not self.pending and not self.pruned_since:
                return False
            puts, self.pending = self.pending, {}
            gone, self.pruned_since = self.pruned_since, []
            # status of the idempotency file, not stream time: how long the disk
            # write took (monotonic) and when it was made (wall, for "age")
            started = time.monotonic()
            try:
                await self._run(self._write, puts, gone)
            except BaseException:
                # not durable: still to be written (unless pruned meanwhile)
                kept = {k: v for k, v in puts.items() if k in self.done}
                self.pending = {**kept, **self.pending}
                self.pruned_since = gone + self.pruned_since
                raise
            self.checkpoints += 1
            self.written += len(puts)
            self.last_checkpoint = time.time()
            self.last_duration = time.monotonic() - started
            return True

    def _write(self, puts: dict[str, tuple[int, str, str]], gone: list[str]) -> int:
        backend = self.backend
        encoded: list[tuple[bytes, str | None, bytes]] = []
        for key, record in puts.items():
            key_bytes, record_bytes = backend.encode(key, record)
            encoded.append((key_bytes, None, record_bytes))
        deletes = [backend.codec.dumps(key) for key in gone]
        meta = {
            "kind": _RECORD_KIND,
            "pipeline": self.pipeline,
            "tool": self.tool,
            "max_done": self.max_done,
        }
        return backend.write(encoded, deletes, meta)

    async def close(self, *, write: bool = True) -> None:
        """Write what is left (when loaded and ``write``) and close the file."""
        if self._opening is None:
            return
        try:
            if write and self.loaded:
                await self.checkpoint()
        finally:
            if self._executor is not None:
                await self._run(self.backend.close)
                self._executor.shutdown(wait=False)
                self._executor = None
            self._opening = None

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.backend.path),
            "done": len(self.done),
            "max_done": self.max_done,
            "pending": len(self.pending),
            "restored": self.restored,
            "pruned": self.pruned,
            "checkpoints": self.checkpoints,
            "written": self.written,
            "last_checkpoint": self.last_checkpoint,
            "last_checkpoint_seconds": self.last_duration,
        }
