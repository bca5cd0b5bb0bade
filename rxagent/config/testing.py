"""Marble tests declared in a pipeline file, run in virtual time (``rxagent test``).

A test case (:class:`~rxagent.config.model.TestCaseModel`) names a pipeline,
gives its source's input as a marble diagram and says what each sink must
receive, frame by frame, and what a state store must hold at the end::

    tests:
      - name: one alert per symbol per 3 s
        pipeline: alerts
        tick: 1s                       # one marble frame = one second
        values:
          a: {sym: AAPL, px: 1.0}
          b: {sym: AAPL, px: 2.0}
        input:  a-b---b|
        expect:
          alert: a-----b|              # what the sink named "alert" (or index 0) receives
          state.prices: {AAPL: 2.0}    # the store's snapshot after the run
          activations.notify: n-----n  # the tool's calls, after its policy and cooldown
          dead_letters:                # every dead letter, in order (stage, error, value)
            - {stage: price, error: ZeroDivisionError}

How a case runs:

- the pipeline is built as the file declares it, on a
  ``reactivex.testing.TestScheduler``: every time-based step (windows,
  throttles, rate limits) runs in virtual time, so a five-minute window takes
  milliseconds and timing is exact;
- its source is replaced by :func:`~rxagent.testing.virtual.marble_source`
  playing ``input`` (``values`` maps letters to values; a letter not in it is
  itself, a one-character string). When the file's source sets ``key:``, the
  marble events get the same key; ``keys`` and ``times`` give a letter's key and
  event time (epoch seconds) directly, as a Kafka message's key and timestamp
  travel beside its value (a letter's own key wins over the source's ``key:``);
- every sink is observed with a :class:`~rxagent.testing.virtual.MarbleSink`
  recording what reaches it, and when. State sinks also run for real (their
  stores are what ``state.NAME`` checks); other sinks (tools, Kafka, WebSocket,
  record, log) do not run: a test never calls a tool nor touches the network,
  it checks what the sink *would* receive (for a tool sink: the events that
  reach it, before its policy and cooldown);
- ``activations.TOOL`` checks the calls a tool *would* get: its tool sinks run
  for real in dry-run mode (the machinery of ``rxagent dry-run``), so the
  policy, cooldown and concurrency apply in virtual time, and each activation is
  a notification at its frame with the call's arguments as its value; no
  completion is drawn (``n-----n``);
- ``dead_letters`` lists the run's dead letters in order, each a mapping of what
  to check: ``stage``, ``error`` (the error's type, or text its ``Type: message``
  contains) and ``value``;
- values reaching a sink are compared as plain data: a window is the mapping
  ``{key, value, count, start, end, partial}``;
- an input ending in ``|`` completes the pipeline (windows flush, timers due
  after the end still fire); an input without ``|`` or ``#`` stays open like a
  live feed: recording stops at the end of the longest diagram, then the
  pipeline is drained, a stop: windows still open are flushed marked
  ``partial: true``, or, when the file's source is Kafka, given up (a restart
  replays them), as in a real run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..clock import advance, next_due
from ..events import Batch
from ..exceptions import ConfigurationError
from ..plain import plain
from ..sinks.base import Sink
from ..sinks.tools import ToolSink
from ..testing.marbles import (
    MarbleError,
    Notification,
    assert_notifications,
    parse_letters,
    parse_marbles,
)
from ..testing.virtual import MarbleSink, VirtualSource, marble_source
from .document import Problem
from .loader import tool_from_declaration
from .registry import BuildContext

if TYPE_CHECKING:
    from ..context import PipelineContext
    from ..runtime import Pipeline
    from ..state import StateStore
    from .loader import Config, PipelineSpec, StageSpec
    from .model import TestCaseModel

__all__ = ["CaseResult", "check_cases", "run_case", "run_cases"]

#: how long (wall clock) a case may take before it fails as stuck
CASE_TIMEOUT = 10.0


@dataclass
class CaseResult:
    """The outcome of one test case: ``failures`` holds one readable block per
    expectation that was not met (empty when the case passed)."""

    name: str
    pipeline: str
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every expectation was met."""
        return not self.failures

    def report(self) -> str:
        """``PASS name`` or ``FAIL name`` followed by the indented failures."""
        head = f"{'PASS' if self.passed else 'FAIL'} {self.name} (pipeline {self.pipeline})"
        if self.passed:
            return head
        body = "\n".join("    " + line for failure in self.failures for line in failure.split("\n"))
        return f"{head}\n{body}"


# -- checking the cases (rxagent validate) -------------------------------------------------

#: What an expected dead letter may check.
_DEAD_LETTER_FIELDS = frozenset({"stage", "error", "value"})


def _sink_index(spec: PipelineSpec, label: str) -> int | None:
    """A sink by index (``"0"``), by its ``name:``, or by its kind when only one
    sink has that kind."""
    if label.isdigit():
        i = int(label)
        return i if i < len(spec.sinks) else None
    for i, sink in enumerate(spec.sinks):
        if sink.name == label:
            return i
    same_kind = [i for i, sink in enumerate(spec.sinks) if sink.kind.name == label]
    return same_kind[0] if len(same_kind) == 1 else None


def _sink_names(spec: PipelineSpec) -> str:
    return ", ".join(f"{i} ({sink.label})" for i, sink in enumerate(spec.sinks))


def check_cases(config: Config) -> list[Problem]:
    """The problems of the file's test cases (an unknown pipeline, sink or state
    store, a diagram that does not parse), located in the file."""
    problems: list[Problem] = []
    locations = config.document.locations
    for i, case in enumerate(config.model.tests):
        base: tuple[str | int, ...] = ("tests", i)
        spec = config.pipelines.get(case.pipeline)
        if spec is None:
            problems.append(
                locations.problem(
                    (*base, "pipeline"),
                    f"no pipeline named {case.pipeline!r}; the file has "
                    f"{', '.join(config.pipelines)}",
                )
            )
            continue
        if case.tick <= 0:
            problems.append(locations.problem((*base, "tick"), "tick must be > 0 seconds"))
            continue
        try:
            parsed = parse_letters(case.input, case.values, frame=case.tick)
        except MarbleError as error:
            problems.append(locations.problem((*base, "input"), f"bad marble diagram: {error}"))
        else:
            drawn = sorted({c for n, c in parsed if n.kind == "N"})
            for field_name in ("keys", "times"):
                for letter in getattr(case, field_name):
                    if letter not in drawn:
                        problems.append(
                            locations.problem(
                                (*base, field_name, letter),
                                f"letter {letter!r} is not a value of the input diagram "
                                f"{case.input!r} (its letters: {', '.join(drawn) or 'none'})",
                                key=True,
                            )
                        )
        if not case.expect:
            problems.append(
                locations.problem((*base, "expect"), "expect at least one sink or state store")
            )
        for label, expected in case.expect.items():
            path = (*base, "expect", label)
            if label == "dead_letters":
                if not isinstance(expected, list) or not all(
                    isinstance(e, dict) and set(e) <= _DEAD_LETTER_FIELDS for e in expected
                ):
                    problems.append(
                        locations.problem(
                            path,
                            "expected a list of dead letters, each a mapping of "
                            f"{', '.join(sorted(_DEAD_LETTER_FIELDS))} (e.g. "
                            "[{stage: price, error: ZeroDivisionError}])",
                        )
                    )
                continue
            if label.startswith("activations."):
                tool = label.removeprefix("activations.")
                users = [s for s in spec.sinks if s.kind.uses_tool is not None]
                used = {getattr(s.params, s.kind.uses_tool or "") for s in users}
                if tool not in used:
                    problems.append(
                        locations.problem(
                            path,
                            f"pipeline {case.pipeline!r} calls no tool {tool!r} (its tool "
                            f"sinks call: {', '.join(sorted(map(str, used))) or 'none'})",
                            key=True,
                        )
                    )
                    continue
                if not isinstance(expected, str):
                    problems.append(
                        locations.problem(
                            path, "expected a marble diagram of the tool's calls, e.g. 'n---n'"
                        )
                    )
                    continue
                try:
                    parse_marbles(expected, case.values, frame=case.tick)
                except MarbleError as error:
                    problems.append(locations.problem(path, f"bad marble diagram: {error}"))
                continue
            if label.startswith("state."):
                store = label.removeprefix("state.")
                if store not in config.model.state:
                    known = ", ".join(config.model.state) or "none declared"
                    problems.append(
                        locations.problem(
                            path, f"unknown state store {store!r} (declared: {known})", key=True
                        )
                    )
                elif not isinstance(expected, dict):
                    problems.append(
                        locations.problem(
                            path, "expected the store's snapshot as a mapping key -> value"
                        )
                    )
                continue
            if _sink_index(spec, label) is None:
                problems.append(
                    locations.problem(
                        path,
                        f"pipeline {case.pipeline!r} has no sink {label!r} (by index, name, or "
                        f"kind when unique: {_sink_names(spec)}; or state.STORE, "
                        "activations.TOOL, dead_letters)",
                        key=True,
                    )
                )
                continue
            if not isinstance(expected, str):
                problems.append(
                    locations.problem(
                        path, "expected a marble diagram of what the sink receives, e.g. '-a-b|'"
                    )
                )
                continue
            try:
                parse_marbles(expected, case.values, frame=case.tick)
            except MarbleError as error:
                problems.append(locations.problem(path, f"bad marble diagram: {error}"))
    return [Problem(p.location, p.path, config.redact(p.message)) for p in problems]


# -- running -------------------------------------------------------------------------------


class _Observed(MarbleSink):
    """A :class:`MarbleSink` in front of the real sink (or none): notes what arrives
    and when, then hands the batch on. Stops noting once ``recording`` is off."""

    kind = "observed"

    def __init__(self, name: str, inner: Sink | None, *, frame: float) -> None:
        super().__init__(name, frame=frame)
        self.inner = inner
        self.recording = True

    def bind(self, ctx: PipelineContext) -> None:
        super().bind(ctx)
        if self.inner is not None:
            self.inner.bind(ctx)

    def on_batch(self, batch: Batch) -> None:
        if self.recording:
            at = self._now_frame(batch.ctx)
            events = batch.events()
            self.events.extend(events)
            self.notifications.extend(Notification(at, "N", plain(e.value), e.key) for e in events)
        if self.inner is None:
            batch.end_all()
        else:
            self.inner.on_batch(batch)

    def on_completed(self) -> None:
        if self.recording:
            super().on_completed()
        if self.inner is not None:
            self.inner.on_completed()

    async def drain(self) -> None:
        if self.inner is not None:
            await self.inner.drain()

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()


def _max_frame(case: TestCaseModel) -> int:
    frames = [n.frame for n in parse_marbles(case.input, case.values, frame=case.tick)]
    for label, expected in case.expect.items():
        if label != "dead_letters" and not label.startswith("state.") and isinstance(expected, str):
            frames += [n.frame for n in parse_marbles(expected, case.values, frame=case.tick)]
    return math.ceil(max(frames, default=0))


def _build(
    config: Config, case: TestCaseModel, scheduler: Any
) -> tuple[Pipeline, VirtualSource, dict[int, _Observed], dict[str, StateStore]]:
    from ..deadletters import MemoryDeadLetters
    from ..runtime import Pipeline
    from ..state import StateStore
    from .kinds import compute

    spec = config.pipelines[case.pipeline]
    stores = {name: StateStore(name) for name in config.model.state}
    dead = MemoryDeadLetters()

    def context(name: str | None) -> BuildContext:
        return BuildContext(
            stores=stores,
            tools={},
            base_dir=config.document.base_dir,
            registry=config.registry,
            scheduler=scheduler,
            dead_letters=dead,
            pipeline=case.pipeline,
            name=name,
        )

    key = getattr(spec.source.params, "key", None)
    source = marble_source(
        case.input,
        case.values,
        frame=case.tick,
        keys=compute(key) if isinstance(key, str) else None,
        letter_keys=case.keys,
        letter_times=case.times,
        name=spec.source.label,
    )
    # a stop treats open windows as the file's source would: a Kafka source replays
    # them after a restart (not flushed), the others flush them marked partial
    source.replays_uncommitted = spec.source.kind.name == "kafka"
    pipeline = Pipeline(
        case.pipeline, source, dead_letters=dead, fail_fast=config.model.settings.fail_fast
    )
    pipeline.pipe(*(step.kind.build(step.params, context(step.name)) for step in spec.steps))
    observed: dict[int, _Observed] = {}
    for i, sink in enumerate(spec.sinks):
        inner: Sink | None = None
        if sink.kind.writes_store:
            inner = sink.kind.build(sink.params, context(sink.name))
        elif sink.kind.uses_tool is not None and _expects_calls(case, sink):
            # the real tool sink, recording instead of calling (as rxagent dry-run does)
            tools_ctx = context(sink.name)
            tool = getattr(sink.params, sink.kind.uses_tool)
            tools_ctx.tools = {tool: tool_from_declaration(tool, config.model.tools[tool])}
            built = sink.kind.build(sink.params, tools_ctx)
            if isinstance(built, ToolSink):
                built.dry_run = True
                inner = built
        observed[i] = _Observed(
            inner.name if inner is not None else sink.label, inner, frame=case.tick
        )
    pipeline.to(*observed.values())
    return pipeline, source, observed, stores


def _expects_calls(case: TestCaseModel, sink: StageSpec) -> bool:
    """Whether the case checks the calls of the tool ``sink`` calls."""
    tool = getattr(sink.params, sink.kind.uses_tool or "", None)
    return f"activations.{tool}" in case.expect


def _activations(observed: Mapping[int, _Observed], tool: str, tick: float) -> list[Notification]:
    """The calls the dry-run tool sinks of ``tool`` recorded, as notifications at
    their frames (the pipeline clock's seconds over the tick), in order."""
    fired = [
        activation
        for sink in observed.values()
        if isinstance(sink.inner, ToolSink)
        for activation in sink.inner.recorded
        if activation.fired and activation.tool == tool
    ]
    fired.sort(key=lambda a: a.at)
    return [Notification(round(a.at / tick), "N", plain(a.arguments), a.key) for a in fired]


def _compare_dead_letters(letters: list[Any], expected: list[dict[str, Any]]) -> str | None:
    """None when ``letters`` match ``expected`` one by one; else what differs."""
    lines: list[str] = []
    for i in range(max(len(letters), len(expected))):
        if i >= len(letters):
            lines.append(f"  - {expected[i]} (missing: only {len(letters)} dead letters)")
            continue
        letter = letters[i]
        got = {
            "stage": letter.stage,
            "error": f"{letter.error_type}: {letter.message}",
            "value": plain(letter.event.value),
        }
        if i >= len(expected):
            lines.append(f"  + {got} (unexpected)")
            continue
        want = expected[i]
        # error: its type or text within "Type: message"; the others: equal
        wrong = [
            name
            for name, value in want.items()
            if not (str(value) in got["error"] if name == "error" else got[name] == value)
        ]
        if wrong:
            lines.append(f"  ~ #{i}: expected {want}, got {got}")
    return "dead letters differ:\n" + "\n".join(lines) if lines else None


async def _play(
    pipeline: Pipeline,
    source: VirtualSource,
    scheduler: Any,
    observed: Mapping[int, _Observed],
    horizon: float,
) -> None:
    """Run the pipeline in virtual time until it stops (see the module docstring)."""
    from ..runtime import PipelineState

    ended = (PipelineState.STOPPED, PipelineState.FAILED)
    await pipeline.start(scheduler=scheduler)
    origin = scheduler.now
    await source.finished()
    drain: asyncio.Future[Any] | None = None
    idle = 0
    while pipeline.state not in ended:
        await asyncio.sleep(0)
        if pipeline.state in ended:
            break
        due = next_due(scheduler)
        open_ended = source.forever and drain is None
        if open_ended and (due is None or due > origin + timedelta(seconds=horizon)):
            # a live-like input: past the diagrams, stop recording and drain
            advance(scheduler, origin + timedelta(seconds=horizon))
            for sink in observed.values():
                sink.recording = False
            drain = asyncio.ensure_future(pipeline.drain(timeout=CASE_TIMEOUT))
            continue
        if due is None:
            idle += 1
            await asyncio.sleep(0.001 if idle < 100 else 0.01)
            continue
        idle = 0
        advance(scheduler, due, flush=True)
    if drain is not None:
        await drain


def _compare_state(store: StateStore, expected: Mapping[str, Any]) -> str | None:
    actual = {_key_text(k): plain(v) for k, v in store.snapshot.to_dict().items()}
    want = {str(k): v for k, v in expected.items()}
    if actual == want:
        return None
    lines = [f"state {store.name} differs:"]
    for key in sorted(set(want) | set(actual)):
        if key not in actual:
            lines.append(f"  - {key}: {want[key]!r} (missing)")
        elif key not in want:
            lines.append(f"  + {key}: {actual[key]!r} (unexpected)")
        elif actual[key] != want[key]:
            lines.append(f"  ~ {key}: expected {want[key]!r}, got {actual[key]!r}")
    return "\n".join(lines)


def _key_text(key: Hashable) -> str:
    return key if isinstance(key, str) else str(key)


async def run_case(config: Config, case: TestCaseModel) -> CaseResult:
    """Run one test case in virtual time and compare (see the module docstring)."""
    from reactivex.testing import TestScheduler

    result = CaseResult(case.name, case.pipeline)
    started = time.perf_counter()
    scheduler = TestScheduler()
    spec = config.pipelines[case.pipeline]
    try:
        pipeline, source, observed, stores = _build(config, case, scheduler)
        horizon = (_max_frame(case) + 1) * case.tick
        await asyncio.wait_for(_play(pipeline, source, scheduler, observed, horizon), CASE_TIMEOUT)
    except TimeoutError:
        result.failures.append(f"the pipeline did not finish within {CASE_TIMEOUT:g} s")
        return result
    except (ConfigurationError, MarbleError) as error:
        result.failures.append(config.redact(str(error)))
        return result
    status = pipeline.status()
    if status.last_error and status.state.value == "failed":
        where = f" in {status.failed_stage!r}" if status.failed_stage else ""
        result.failures.append(config.redact(f"the pipeline failed{where}: {status.last_error}"))
    dead = pipeline.dead_letters
    letters = list(getattr(dead, "letters", []))
    for label, expected in case.expect.items():
        if label == "dead_letters":
            problem = _compare_dead_letters(letters, expected)
            if problem:
                result.failures.append(config.redact(problem))
            continue
        if label.startswith("activations."):
            tool = label.removeprefix("activations.")
            calls = _activations(observed, tool, case.tick)
            try:
                assert_notifications(calls, expected, case.values, frame=case.tick)
            except AssertionError as error:
                result.failures.append(config.redact(f"calls of tool {tool}: {error}"))
            continue
        if label.startswith("state."):
            store = stores[label.removeprefix("state.")]
            problem = _compare_state(store, expected)
            if problem:
                result.failures.append(config.redact(problem))
            continue
        index = _sink_index(spec, label)
        assert index is not None  # check_cases ran first
        sink = observed[index]
        try:
            assert_notifications(sink.notifications, expected, case.values, frame=case.tick)
        except AssertionError as error:
            result.failures.append(
                config.redact(f"sink {label} ({spec.sinks[index].label}): {error}")
            )
    if letters and not result.passed and "dead_letters" not in case.expect:
        first = letters[0]
        result.failures.append(
            config.redact(
                f"{getattr(dead, 'total', len(letters))} dead letters, the first in stage "
                f"{first.stage!r}: {first.error_type}: {first.message}"
            )
        )
    result.seconds = time.perf_counter() - started
    return result


def run_cases(config: Config) -> list[CaseResult]:
    """Run every test case of the file; a case that does not check out (see
    :func:`check_cases`) fails with its located problems."""
    problems = check_cases(config)
    bad: dict[int, list[str]] = {}
    for problem in problems:
        bad.setdefault(int(problem.path[1]), []).append(str(problem))
    results: list[CaseResult] = []
    for i, case in enumerate(config.model.tests):
        if i in bad:
            results.append(CaseResult(case.name, case.pipeline, bad[i]))
        else:
            results.append(asyncio.run(run_case(config, case)))
    return results
