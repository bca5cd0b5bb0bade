"""The command line, through the real ``rxagent`` console script (and the
marble test runner of pipeline files, in process)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from rxagent.cli import schema_text
from rxagent.config import loads
from rxagent.config.testing import check_cases, run_cases

ROOT = Path(__file__).resolve().parent.parent
EXE = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"
SECRET = "sekrit-token-value"

TICKS = """\
state:
  prices: {}
pipelines:
  ticks:
    source:
      memory:
        items:
          - {sym: AAPL, px: 1.5}
          - {sym: MSFT, px: 2.5}
          - {sym: AAPL, px: 3.5}
    steps:
      - key_by: sym
    sinks:
      - state: {store: prices, value: px}
"""

# a pipeline that never ends on its own: "watch" follows the changes of "prices"
ENDLESS = """\
state:
  prices: {}
  copy: {}
pipelines:
  ticks:
    source: {memory: {items: [{sym: AAPL, px: 1.5}, {sym: MSFT, px: 2.5}]}}
    steps:
      - key_by: sym
    sink: {state: {store: prices, value: px}}
  watch:
    source: {state: prices}
    sink: {state: copy}
"""

# throttle_first per symbol, 2 s: timing decides what passes
THROTTLED = """\
state:
  prices: {}
pipelines:
  ticks:
    source: {memory: {items: []}}
    steps:
      - key_by: sym
      - throttle_first: 2s
    sinks:
      - state: {store: prices, value: px, name: prices}
tests:
  - name: a second tick within 2 s is dropped
    pipeline: ticks
    tick: 1s
    values:
      a: {sym: AAPL, px: 1.0}
      b: {sym: AAPL, px: 2.0}
      c: {sym: AAPL, px: 3.0}
      m: {sym: MSFT, px: 9.0}
    input:  abm-c|
    expect:
      prices: a-m-c|
      state.prices: {AAPL: 3.0, MSFT: 9.0}
"""

WRONG = """\
  - name: wrong on purpose
    pipeline: ticks
    tick: 1s
    values:
      a: {sym: AAPL, px: 1.0}
      b: {sym: AAPL, px: 2.0}
    input:  ab|
    expect:
      "0": ab|
      state.prices: {AAPL: 2.0}
"""


def rxagent(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- validate --------------------------------------------------------------------------------


def test_validate_ok(tmp_path: Path) -> None:
    write(tmp_path, "ticks.yaml", TICKS)
    write(tmp_path, "throttled.yaml", THROTTLED)
    proc = rxagent("validate", "ticks.yaml", "throttled.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ticks.yaml: ok (1 pipeline: ticks; 1 state store; 0 tools)",
        "throttled.yaml: ok (1 pipeline: ticks; 1 state store; 0 tools; 1 test)",
    ]


def test_validate_reports_located_problems_without_secrets(tmp_path: Path) -> None:
    write(
        tmp_path,
        "bad.yaml",
        """\
        state:
          prices: {}
        pipelines:
          ticks:
            source:
              websocket: {url: "${TOKEN}", token: "${TOKEN}"}
            steps:
              - key_bi: sym
              - throttle_first: {interval: fast}
            sinks:
              - state: {store: pricez}
        """,
    )
    proc = rxagent("validate", "bad.yaml", cwd=tmp_path, env={"TOKEN": SECRET})
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("bad.yaml:6:24: pipelines.ticks.source.websocket.url: ")
    assert (
        "bad.yaml:8:9: pipelines.ticks.steps[0].key_bi: unknown step kind 'key_bi'; "
        "did you mean 'key_by'?"
    ) in proc.stdout
    assert "steps[1].throttle_first.interval: expected a duration" in proc.stdout
    assert "sinks[0].state.store: unknown state store 'pricez'" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert "***" in proc.stdout


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    write(tmp_path, "ticks.yaml", TICKS)
    write(tmp_path, "broken.yaml", "pipelines: [\n")
    missing = rxagent("graph", "missing.yaml", cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (
        2,
        "rxagent: pipeline file 'missing.yaml' does not exist\n",
    )
    unknown = rxagent("run", "ticks.yaml", "--pipeline", "nope", cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "rxagent: ticks.yaml: no pipeline named 'nope'; the file has ticks\n",
    )
    broken = rxagent("validate", "broken.yaml", "missing.yaml", cwd=tmp_path)
    assert broken.returncode == 2  # a missing file is a usage error, worse than invalid
    assert broken.stdout.startswith("broken.yaml:2:1: YAML syntax error:")
    assert broken.stderr == "missing.yaml: error: no such file\n"
    bad_yaml = rxagent("test", "broken.yaml", cwd=tmp_path)
    assert bad_yaml.returncode == 1
    assert bad_yaml.stderr.startswith("broken.yaml:2:1: YAML syntax error:")


# -- graph and schema ------------------------------------------------------------------------


def test_graph_prints_the_mermaid_flowchart(tmp_path: Path) -> None:
    write(tmp_path, "endless.yaml", ENDLESS)
    proc = rxagent("graph", "endless.yaml", "--pipeline", "watch", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("flowchart LR\n")
    assert 'subgraph p_watch["pipeline watch"]' in proc.stdout
    assert "pipeline ticks" not in proc.stdout
    assert "state_prices -.changes.-> watch_source" in proc.stdout


def test_schema_command_matches_the_checked_in_copy(tmp_path: Path) -> None:
    proc = rxagent("schema", "--output", "schema.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    checked_in = (ROOT / "docs" / "rxagent.schema.json").read_text(encoding="utf-8")
    assert (tmp_path / "schema.json").read_text(encoding="utf-8") == checked_in
    assert schema_text() == checked_in, "regenerate: rxagent schema -o docs/rxagent.schema.json"


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_example_pipelines_are_valid_against_the_schema(path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [e.message for e in _validator().iter_errors(document)]
    assert errors == []


def test_schema_accepts_valid_documents_and_rejects_invalid_ones() -> None:
    validator = _validator()
    for text in (TICKS, ENDLESS, THROTTLED):
        assert list(validator.iter_errors(yaml.safe_load(text))) == []
    shorthand = {
        "tools": {"alert": "rxagent.demo:alert"},
        "pipelines": {"p": {"source": {"memory": [1, 2]}, "sink": {"tool": "alert"}}},
    }
    assert list(validator.iter_errors(shorthand)) == []
    for bad in (
        {"pipelines": {}},  # at least one pipeline
        {"pipelines": {"p": {"source": {"memory": []}}}},  # no sink
        {"pipelines": {"p": {"source": {"nope": {}}, "sink": "log"}}},  # unknown kind
        {"pipelines": {"p": {"source": {"memory": []}, "sinks": [{"log": {"levle": "info"}}]}}},
        {"version": 2, "pipelines": {"p": {"source": {"memory": []}, "sink": "log"}}},
    ):
        assert list(validator.iter_errors(bad)), bad


# -- run and replay --------------------------------------------------------------------------


def test_run_for_a_duration_logs_each_second_then_prints_the_final_state(tmp_path: Path) -> None:
    write(tmp_path, "endless.yaml", ENDLESS)
    proc = rxagent("run", "endless.yaml", "--duration", "1.2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    logged = [line for line in lines if " pipeline=watch state=running " in line]
    assert len(logged) == 1
    assert "events=2 " in logged[0]
    assert "in_flight=0 dropped=0 dead_lettered=0 errors=0" in logged[0]
    assert "pipeline ticks: stopped (completed), 2 events, 0 dropped, 0 dead-lettered" in lines
    assert "pipeline watch: stopped, 2 events, 0 dropped, 0 dead-lettered" in lines
    at = lines.index("state copy (version 1, 2 keys):")
    assert sorted(lines[at + 1 : at + 3]) == ["  AAPL: 1.5", "  MSFT: 2.5"]
    assert lines[-1] == "dead letters: 0"


def test_run_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    write(tmp_path, "endless.yaml", ENDLESS)
    proc = subprocess.Popen(
        [EXE, "run", "endless.yaml", "--no-live"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # running: one line per pipeline per second
    assert "pipeline=" in first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "pipeline watch: stopped, 2 events" in out
    assert "state copy (version 1, 2 keys):" in out
    assert "Traceback" not in out + err


def test_replay_a_recording_through_a_pipeline(tmp_path: Path) -> None:
    write(
        tmp_path,
        "record.yaml",
        """\
        pipelines:
          rec:
            source:
              memory:
                items: [{sym: AAPL, px: 1.5}, {sym: MSFT, px: 2.5}, {sym: AAPL, px: 3.5}, "bad"]
            sink: {record: feed.jsonl}
        """,
    )
    recorded = rxagent("run", "record.yaml", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    # the same ticks, as if they came from the live feed (never contacted: replaced)
    write(
        tmp_path,
        "live.yaml",
        """\
        state:
          prices: {}
        pipelines:
          other:
            source: {memory: [1]}
            sink: log
          feed:
            source: {websocket: "ws://127.0.0.1:9/feed"}
            steps:
              - key_by: sym
            sink: {state: {store: prices, value: px}}
        """,
    )
    proc = rxagent("replay", "feed.jsonl", "--pipeline", "live.yaml:feed", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "pipeline feed: stopped (completed), 4 events, 0 dropped, 1 dead-lettered" in lines
    at = lines.index("state prices (version 1, 2 keys):")
    assert sorted(lines[at + 1 : at + 3]) == ["  AAPL: 3.5", "  MSFT: 2.5"]
    assert lines[-1] == "dead letters: 1"
    ambiguous = rxagent("replay", "feed.jsonl", "--pipeline", "live.yaml", cwd=tmp_path)
    assert ambiguous.returncode == 2
    assert "name one with --pipeline live.yaml:NAME" in ambiguous.stderr


# -- test ------------------------------------------------------------------------------------


def test_test_command_passes_and_fails_with_a_diagram_diff(tmp_path: Path) -> None:
    write(tmp_path, "ok.yaml", THROTTLED)
    passing = rxagent("test", "ok.yaml", cwd=tmp_path)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert passing.stdout.splitlines() == [
        "PASS a second tick within 2 s is dropped (pipeline ticks)",
        "1 passed, 0 failed",
    ]
    write(tmp_path, "wrong.yaml", THROTTLED + WRONG)
    failing = rxagent("test", "wrong.yaml", cwd=tmp_path)
    assert failing.returncode == 1
    out = failing.stdout
    assert "PASS a second tick within 2 s is dropped" in out
    assert "FAIL wrong on purpose (pipeline ticks)" in out
    # b comes 1 s after a: throttle_first(2s) drops it, and the state keeps a
    at = out.index("FAIL wrong on purpose")
    assert out[at:].splitlines()[1:5] == [
        "    sink 0 (prices): marble diagrams differ (one frame = 1s)",
        "      expected: ab|",
        "      actual:   a-|",
        "                 ^ frame 1: expected {'sym': 'AAPL', 'px': 2.0} at frame 1, "
        "got completion at frame 2",
    ]
    assert "    state prices differs:\n      ~ AAPL: expected 2.0, got 1.0\n" in out
    assert out.splitlines()[-1] == "1 passed, 1 failed"


# -- the runner, in process ------------------------------------------------------------------


def _results(text: str) -> list[str]:
    return [r.report() for r in run_cases(loads(textwrap.dedent(text), file="t.yaml"))]


def test_a_wrong_timing_fails_with_aligned_diagrams() -> None:
    [report] = _results(THROTTLED.replace("prices: a-m-c|", "prices: a-m--c|"))
    assert report.splitlines()[:5] == [
        "FAIL a second tick within 2 s is dropped (pipeline ticks)",
        "    sink prices (prices): marble diagrams differ (one frame = 1s)",
        "      expected: a-m--c|",
        "      actual:   a-m-c|",
        "                    ^ frame 4: expected {'sym': 'AAPL', 'px': 3.0} at frame 5, "
        "got {'sym': 'AAPL', 'px': 3.0} at frame 4",
    ]


def test_windows_compare_as_plain_mappings_at_a_tool_sink() -> None:
    [report] = _results(
        """\
        tools:
          alert: rxagent.demo:alert
        pipelines:
          w:
            source: {memory: []}
            steps:
              - tumbling_window: {size: 5s, agg: count}
            sinks:
              - tool: {tool: alert, args: {symbol: key, move_pct: value}}
        tests:
          - name: windows of 5 s
            pipeline: w
            tick: 1s
            input: a-b 5s c|
            expect:
              tool: -----x---(y|)  # x closes at 5 s, c (at 8 s) flushes at the end
            values:
              x: {key: null, value: 2, count: 2, start: 0.0, end: 5.0, partial: false}
              y: {key: null, value: 1, count: 1, start: 5.0, end: 10.0, partial: false}
        """
    )
    assert report == "PASS windows of 5 s (pipeline w)"


def test_an_open_input_is_drained_after_the_diagrams() -> None:
    [report] = _results(
        """\
        state:
          last: {}
        pipelines:
          p:
            source: {memory: []}
            steps:
              - key_by: sym
              - throttle_last: 3s
            sink: {state: {store: last, value: px}}
        tests:
          - name: live feed
            pipeline: p
            tick: 1s
            values:
              a: {sym: X, px: 1}
              b: {sym: X, px: 2}
            input: ab------
            expect:
              "0": ---b----
              state.last: {X: 2}
        """
    )
    assert report == "PASS live feed (pipeline p)"


def test_bad_cases_are_located_problems() -> None:
    config = loads(
        textwrap.dedent(
            """\
            state:
              prices: {}
            pipelines:
              p:
                source: {memory: []}
                sink: {state: prices}
            tests:
              - {name: a, pipeline: nope, input: a|, expect: {"0": a|}}
              - name: b
                pipeline: p
                input: a-(b|
                expect: {"3": a|, state.other: {}, "0": 1}
            """
        ),
        file="t.yaml",
    )
    assert [str(p) for p in check_cases(config)] == [
        "t.yaml:8:25: tests[0].pipeline: no pipeline named 'nope'; the file has p",
        "t.yaml:11:12: tests[1].input: bad marble diagram: " + str(_marble_error("a-(b|")),
        "t.yaml:12:14: tests[1].expect.3: pipeline 'p' has no sink '3' (by index, name, or "
        "kind when unique: 0 (state); or state.STORE, activations.TOOL, dead_letters)",
        "t.yaml:12:23: tests[1].expect.state.other: unknown state store 'other' (declared: prices)",
        "t.yaml:12:45: tests[1].expect.0: expected a marble diagram of what the sink "
        "receives, e.g. '-a-b|'",
    ]
    [first, second] = run_cases(config)
    assert first.failures == [str(check_cases(config)[0])]
    assert len(second.failures) == 4


def _marble_error(diagram: str) -> Exception:
    from rxagent.testing import parse_marbles

    try:
        parse_marbles(diagram)
    except ValueError as error:
        return error
    raise AssertionError("expected a MarbleError")


# -- dry-run and mcp -------------------------------------------------------------------------

ORDERS = """\
tools:
  alert: rxagent.demo:alert
pipelines:
  orders:
    source:
      memory:
        items:
          - {sym: AAPL, move: 1.0}
          - {sym: AAPL, move: 2.0}
          - {sym: MSFT, move: -3.0}
          - {sym: MSFT, move: -4.0}
    steps:
      - key_by: sym
    sinks:
      - tool: {tool: alert, args: {symbol: sym, move_pct: move}, cooldown: 60s, name: alerts}
"""


def test_dry_run_reports_what_would_fire_and_what_was_held_back(tmp_path: Path) -> None:
    write(tmp_path, "orders.yaml", ORDERS)
    proc = rxagent("dry-run", "orders.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    fired = [(a["key"], a["arguments"]) for a in report["fired"]]
    assert fired == [
        ("AAPL", {"symbol": "AAPL", "move_pct": 1.0}),
        ("MSFT", {"symbol": "MSFT", "move_pct": -3.0}),
    ]
    held = [(a["key"], a["reason"]) for a in report["held_back"]]
    assert held == [("AAPL", "cooldown"), ("MSFT", "cooldown")]
    assert all(a["eligible_at"] > a["at"] for a in report["held_back"])

    table = rxagent("dry-run", "orders.yaml", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "2 fired, 2 held back" in table.stdout
    assert "cooldown" in table.stdout


def test_mcp_over_http_needs_a_token(tmp_path: Path) -> None:
    write(tmp_path, "ticks.yaml", TICKS)
    env = {"RXAGENT_MCP_TOKEN": ""}
    proc = rxagent("mcp", "ticks.yaml", "--http", "--port", "0", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert "set the environment variable RXAGENT_MCP_TOKEN" in proc.stderr
    proc = rxagent("mcp", "missing.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "pipeline file 'missing.yaml' does not exist" in proc.stderr


def test_run_says_what_stages_held_back(tmp_path: Path) -> None:
    write(
        tmp_path,
        "thr.yaml",
        """\
        state: {prices: {}}
        pipelines:
          ticks:
            source: {memory: {items: [{sym: A, px: 1}, {sym: A, px: 2}, {sym: B, px: 3}]}}
            steps:
              - key_by: sym
              - throttle_first: 10s
            sinks: [{state: {store: prices, value: px}}]
        """,
    )
    proc = rxagent("run", "thr.yaml", "--no-live", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  held back: throttle_first: throttled 1" in proc.stdout.splitlines()


# -- test cases with keys and event times per letter ----------------------------------------

# keyed by the Kafka message key (no key_by, no key: on the source); event-time windows
# over the message timestamps; a test gives both per marble letter
KAFKA_KEYS_TIMES = """\
state:
  last: {}
pipelines:
  throttled:
    source: {kafka: {topics: ticks, bootstrap_servers: "127.0.0.1:9092", group_id: g}}
    steps:
      - throttle_first: 3s
    sinks:
      - state: {store: last, value: px, name: last}
  windows:
    source: {kafka: {topics: ticks, bootstrap_servers: "127.0.0.1:9092", group_id: g}}
    steps:
      - tumbling_window: {size: 10s, time: event, agg: count, late: drop}
    sinks: [log]
tests:
  - name: per message key
    pipeline: throttled
    tick: 1s
    values: {a: {px: 1}, b: {px: 2}, m: {px: 9}}
    keys: {a: AAPL, b: AAPL, m: MSFT}
    input: amb-b|
    expect:
      last: am--b|
      state.last: {AAPL: 2, MSFT: 9}
  - name: per message timestamp, the late one dropped
    pipeline: windows
    tick: 1s
    times: {a: 1000, b: 1004, c: 1012, l: 1003}
    input: abcl|
    expect:
      log: --x-(y|)
    values:
      x: {key: null, value: 2, count: 2, start: 1000.0, end: 1010.0, partial: false}
      y: {key: null, value: 1, count: 1, start: 1010.0, end: 1020.0, partial: false}
"""


def test_test_command_gives_letters_keys_and_event_times(tmp_path: Path) -> None:
    write(tmp_path, "kafka.yaml", KAFKA_KEYS_TIMES)
    proc = rxagent("test", "kafka.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "PASS per message key (pipeline throttled)",
        "PASS per message timestamp, the late one dropped (pipeline windows)",
        "2 passed, 0 failed",
    ]


def test_validate_locates_a_key_or_time_for_a_letter_not_in_the_input(tmp_path: Path) -> None:
    write(
        tmp_path,
        "typo.yaml",
        KAFKA_KEYS_TIMES.replace("keys: {a: AAPL, b: AAPL,", "keys: {a: AAPL, n: AAPL,"),
    )
    proc = rxagent("validate", "typo.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "typo.yaml:20:21: tests[0].keys.n: letter 'n' is not a value of the input diagram "
        "'amb-b|' (its letters: a, b, m)"
    ]
    tested = rxagent("test", "typo.yaml", cwd=tmp_path)
    assert tested.returncode == 1
    assert "    typo.yaml:20:21: tests[0].keys.n: letter 'n'" in tested.stdout
