"""Dry runs: which tools a pipeline would have fired, when, with what, and why not.

:func:`dry_run_report` runs an app (live for a while, or over a replay to its
end) with every :class:`~rxagent.sinks.ToolSink` in record mode
(``dry_run=True``: policies, cooldown, breakers and concurrency apply, each call
takes no time, no tool is called) and returns a :class:`DryRunReport`: the
activations that would have fired, those the sinks held back with the reason,
and what the stages before them (throttles, debounce, rate limits, circuit
breakers) suppressed, per key, from the pipelines'
:class:`~rxagent.context.Suppressions`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from reactivex.abc import SchedulerBase
from rich.table import Table

from ..exceptions import ConfigurationError
from ..sinks.tools import RecordedActivation, ToolSink

if TYPE_CHECKING:
    from ..runtime import App, Pipeline

__all__ = ["DryRunReport", "dry_run", "dry_run_report"]

#: Characters of the arguments shown per row of :meth:`DryRunReport.table`.
_ARGS_SHOWN = 60


class _HasApp(Protocol):
    """What :meth:`rxagent.config.Config.build` returns: something with an ``app``."""

    @property
    def app(self) -> App: ...


@dataclass(frozen=True)
class DryRunReport:
    """What a dry run recorded.

    - ``fired``: the activations each tool sink would have made, in time order;
    - ``held_back``: those its policy, cooldown or breaker did not make, with
      ``reason`` and ``eligible_at``;
    - ``suppressed``: per pipeline, what every stage held back, per key and
      reason (:meth:`Suppressions.as_dict <rxagent.context.Suppressions.as_dict>`
      entries with their ``pipeline`` and whether the stage is a dry-run
      ``tool_sink``), most recent first;
    - ``pipelines``: each pipeline's final state and error;
    - ``overflow``: records not kept per sink (beyond its ``max_recorded``).

    Times are the pipelines' clock seconds: epoch seconds when live, the
    replay's virtual time when replayed virtually.
    """

    fired: list[RecordedActivation] = field(default_factory=list)
    held_back: list[RecordedActivation] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    overflow: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (``json.dumps`` takes it as is)."""
        data = {
            "fired": [a.as_dict() for a in self.fired],
            "held_back": [a.as_dict() for a in self.held_back],
            "suppressed": self.suppressed,
            "pipelines": self.pipelines,
            "overflow": self.overflow,
        }
        # keys and arguments were made JSON-friendly when recorded; prove it here
        return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]

    def table(self) -> Table:
        """A rich table: one row per activation (fired or held back, in time
        order), then one per key and reason a stage suppressed."""
        table = Table(title="dry run: tool activations", show_lines=False)
        columns = ("at", "where", "key", "outcome", "why", "count", "eligible at", "arguments")
        for column in columns:
            table.add_column(column, overflow="fold")
        # by time; within one clock reading (a batch), per key, what fired first
        rows = sorted(
            [*self.fired, *self.held_back], key=lambda a: (a.at, _text(a.key), not a.fired)
        )
        for a in rows:
            table.add_row(
                _time(a.at),
                f"{a.pipeline}/{a.sink}",
                _text(a.key),
                "[green]fired[/green]" if a.fired else "[yellow]held back[/yellow]",
                a.reason or "",
                "1",
                "" if a.eligible_at is None else _time(a.eligible_at),
                _args(a.arguments),
            )
        for s in self.suppressed:
            if s["tool_sink"]:
                continue  # a sink's own drops are the rows above, one per event
            table.add_row(
                _time(s["last_at"]),
                f"{s['pipeline']}/{s['stage']}",
                _text(s["key"]),
                "[red]suppressed[/red]",
                s["reason"],
                str(s["count"]),
                "" if s["eligible_at"] is None else _time(s["eligible_at"]),
                "",
            )
        table.caption = (
            f"{len(self.fired)} fired, {len(self.held_back)} held back by tool sinks, "
            f"{sum(s['count'] for s in self.suppressed)} suppressed events in all stages"
        )
        return table


def dry_run(app: App | _HasApp) -> list[ToolSink]:
    """Put every tool sink of ``app`` (an :class:`~rxagent.App`, or what
    ``Config.build`` returns) in record mode; returns them. Before the app starts."""
    the_app = _app_of(app)
    sinks: list[ToolSink] = []
    for pipeline in the_app.pipelines.values():
        if str(pipeline.state) != "created":
            raise ConfigurationError(
                f"dry run: pipeline {pipeline.name!r} is {pipeline.state}; "
                "switch to dry run before the app starts"
            )
        for sink in pipeline.sinks:
            if isinstance(sink, ToolSink):
                sink.dry_run = True
                sinks.append(sink)
    return sinks


async def dry_run_report(
    app: App | _HasApp,
    *,
    duration: float | None = None,
    drain_timeout: float = 10.0,
    max_recorded: int | None = None,
    scheduler: SchedulerBase | None = None,
) -> DryRunReport:
    """Run ``app`` with its tool sinks in record mode and report what they would
    have done (see :class:`DryRunReport`).

    The app runs until its sources end (a replay, a memory source) or for
    ``duration`` seconds (a live source), then drains for up to
    ``drain_timeout`` s. ``max_recorded`` overrides each sink's bound on kept
    records. A failing pipeline does not raise: its state and error are in
    ``pipelines``.

    ``scheduler`` starts every pipeline on that scheduler: a ``TestScheduler``
    with ``replay(path, virtual=True)`` sources replays a recording in virtual
    time, so cooldowns and throttles see the recorded gaps (``duration`` is
    then still wall-clock seconds).
    """
    the_app = _app_of(app)
    sinks = dry_run(the_app)
    if max_recorded is not None:
        if isinstance(max_recorded, bool) or not isinstance(max_recorded, int) or max_recorded < 0:
            raise ConfigurationError(
                f"dry_run_report: max_recorded must be an int >= 0, got {max_recorded!r}"
            )
        for sink in sinks:
            sink.max_recorded = max_recorded
    if scheduler is None:
        statuses = await the_app.run(duration=duration, drain_timeout=drain_timeout)
    else:
        for pipeline in the_app.pipelines.values():
            await pipeline.start(scheduler=scheduler)
        try:
            statuses = await asyncio.wait_for(asyncio.shield(the_app.wait()), duration)
        except TimeoutError:
            statuses = await the_app.drain(drain_timeout)
    return _report(the_app.pipelines, sinks, statuses)


def _report(pipelines: dict[str, Pipeline], sinks: list[ToolSink], statuses: Any) -> DryRunReport:
    fired: list[RecordedActivation] = []
    held: list[RecordedActivation] = []
    overflow: dict[str, int] = {}
    for sink in sinks:
        for record in sink.recorded:
            (fired if record.fired else held).append(record)
        if sink.recorded_overflow:
            overflow[sink.name] = sink.recorded_overflow
    fired.sort(key=lambda a: a.at)
    held.sort(key=lambda a: a.at)
    suppressed: list[dict[str, Any]] = []
    recording = {(s.ctx.pipeline, s.name) for s in sinks if s.ctx is not None}
    for name, pipeline in pipelines.items():
        if pipeline.ctx is None:
            continue
        for entry in pipeline.ctx.suppressions.entries():
            tool_sink = (pipeline.ctx.pipeline, entry.stage) in recording
            suppressed.append({"pipeline": name, **entry.as_dict(), "tool_sink": tool_sink})
    suppressed.sort(key=lambda s: s["last_at"], reverse=True)
    states = {
        name: {"state": str(status.state), "last_error": status.last_error}
        for name, status in statuses.items()
    }
    return DryRunReport(fired, held, suppressed, states, overflow)


def _app_of(app: Any) -> App:
    from ..runtime import App

    if isinstance(app, App):
        return app
    inner = getattr(app, "app", None)
    if isinstance(inner, App):
        return inner
    raise ConfigurationError(
        f"dry run takes an App or a built configuration (with .app), got {app!r}"
    )


def _time(t: float) -> str:
    if t > 1e9:  # epoch seconds: a wall clock
        return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"t={t:.3f}s"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _args(arguments: dict[str, Any]) -> str:
    text = json.dumps(arguments, separators=(",", ":"), default=str, ensure_ascii=False)
    return text if len(text) <= _ARGS_SHOWN else text[: _ARGS_SHOWN - 1] + "…"
