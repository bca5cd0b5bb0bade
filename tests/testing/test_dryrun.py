"""Dry runs: a memory source through a throttle into tool sinks, nothing called,
every activation and suppression reported with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from reactivex.testing import TestScheduler
from rich.console import Console

from rxagent import App, Pipeline, sources
from rxagent import operators as ops
from rxagent.exceptions import ConfigurationError
from rxagent.recording import encode_event, encode_header
from rxagent.sinks import ToolSink
from rxagent.sources import replay
from rxagent.testing.dryrun import dry_run, dry_run_report
from rxagent.tools import tool

called: list[Any] = []


@tool
async def alert(symbol: str, px: float) -> str:
    """Alert a trader."""
    called.append((symbol, px))
    return "sent"


TICKS = [
    {"sym": "A", "px": 1.0},
    {"sym": "A", "px": 2.0},
    {"sym": "B", "px": 3.0},
    {"sym": "A", "px": 4.0},
]


def build_app() -> App:
    args = {"args": lambda v: {"symbol": v["sym"], "px": v["px"]}, "key": "sym"}
    app = App(name="dry")
    app.pipeline("throttled", sources.memory(TICKS)).pipe(ops.throttle_first(60.0, key="sym")).to(
        ToolSink(alert, **args)
    )
    app.pipeline("cooled", sources.memory(TICKS)).to(
        ToolSink(alert, cooldown=60.0, name="cooled-alert", **args)
    )
    return app


async def test_the_report_lists_fired_and_suppressed_activations_with_reasons() -> None:
    called.clear()
    report = await dry_run_report(build_app())
    assert called == [], "a dry run calls no tool"
    fired = sorted((a.pipeline, a.key, a.arguments["px"]) for a in report.fired)
    assert fired == [
        ("cooled", "A", 1.0),
        ("cooled", "B", 3.0),
        ("throttled", "A", 1.0),
        ("throttled", "B", 3.0),
    ]
    held = [(a.sink, a.key, a.reason, a.arguments["px"]) for a in report.held_back]
    assert sorted(held) == [
        ("cooled-alert", "A", "cooldown", 2.0),
        ("cooled-alert", "A", "cooldown", 4.0),
    ]
    [first_a] = [a for a in report.fired if a.pipeline == "cooled" and a.key == "A"]
    # eligible 60 s after A was activated (accepted, a moment before its call started)
    assert all(a.eligible_at == pytest.approx(first_a.at + 60.0, abs=0.5) for a in report.held_back)
    throttled = [s for s in report.suppressed if s["stage"] == "throttle_first"]
    assert [(s["pipeline"], s["key"], s["reason"], s["count"]) for s in throttled] == [
        ("throttled", "A", "throttled", 2)
    ]
    assert throttled[0]["eligible_at"] > throttled[0]["last_at"]
    assert report.pipelines["cooled"]["state"] == "stopped"
    data = report.as_json()
    json.dumps(data)
    assert {a["key"] for a in data["fired"]} == {"A", "B"}
    assert data["held_back"][0]["reason"] == "cooldown"


async def test_the_table_shows_every_row() -> None:
    report = await dry_run_report(build_app())
    table = report.table()
    assert table.row_count == 4 + 2 + 1  # fired, held back by the sink, one throttled key
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "cooldown" in text
    assert "throttled" in text
    assert "4 fired, 2 held back" in text


async def test_tool_results_say_dry_run_and_describe_says_so() -> None:
    sink = ToolSink(alert, args=lambda v: {"symbol": v["sym"], "px": v["px"]}, dry_run=True)
    results: list[Any] = []
    sink.results.subscribe(results.append)
    await Pipeline("p", sources.memory(TICKS[:1])).to(sink).run()
    assert [(r.status, r.reason, r.value) for r in results] == [("ok", "dry_run", None)]
    assert sink.describe()["dry_run"] is True
    assert sink.recorded[0].as_dict()["arguments"] == {"symbol": "A", "px": 1.0}


async def test_records_are_bounded() -> None:
    report = await dry_run_report(build_app(), max_recorded=1)
    assert len(report.fired) + len(report.held_back) == 2
    assert report.overflow == {"tool:alert": 1, "cooled-alert": 3}


async def test_dry_run_needs_an_unstarted_app() -> None:
    app = build_app()
    await app.run()
    with pytest.raises(ConfigurationError, match="before the app starts"):
        dry_run(app)
    with pytest.raises(ConfigurationError, match="App or a built configuration"):
        await dry_run_report(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_recorded"):
        await dry_run_report(build_app(), max_recorded=-1)


async def test_a_virtual_replay_reports_recorded_times(tmp_path: Path) -> None:
    # AAPL at 0, 10 and 70 s; MSFT at 5 s: a 60 s cooldown holds back the one at 10 s only
    path = tmp_path / "ticks.jsonl"
    times = [(0.0, "AAPL"), (5.0, "MSFT"), (10.0, "AAPL"), (70.0, "AAPL")]
    path.write_bytes(
        b"".join(
            [encode_header(created=0.0, source="feed")]
            + [
                encode_event(1000.0 + t, {"sym": sym, "px": t}, offset=i)
                for i, (t, sym) in enumerate(times)
            ]
        )
    )
    app = App()
    app.pipeline("replayed", replay(path, virtual=True)).to(
        ToolSink(alert, args=lambda v: {"symbol": v["sym"], "px": v["px"]}, key="sym", cooldown=60)
    )
    report = await dry_run_report(app, scheduler=TestScheduler())
    assert [(a.key, a.at) for a in report.fired] == [
        ("AAPL", pytest.approx(0.0)),
        ("MSFT", pytest.approx(5.0)),
        ("AAPL", pytest.approx(70.0)),
    ]
    [held] = report.held_back
    assert (held.key, held.reason, held.at, held.eligible_at) == (
        "AAPL",
        "cooldown",
        pytest.approx(10.0),
        pytest.approx(60.0),
    )
    console = Console(width=200, record=True)
    console.print(report.table())
    assert "t=10.000s" in console.export_text()
