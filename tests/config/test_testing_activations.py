"""A file's tests check what users most want to: the calls a tool gets after its
policy and cooldown (``activations.TOOL``), and dead letters with their reasons
(``dead_letters``), through ``rxagent test`` and the Python API."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rxagent.config import load
from rxagent.config.testing import check_cases, run_cases

EXE = str(Path(sys.executable).with_name("rxagent"))

FILE = """\
tools:
  notify: {module}:notify
pipelines:
  trades:
    source: {{memory: []}}
    steps:
      - key_by: sym
      - map: '{{"sym": value.sym, "move": 100 / value.px}}'
    sinks:
      - tool: {{tool: notify, args: {{symbol: sym, move: move}}, cooldown: 10s}}
tests:
  - name: at most once per 10 s per symbol
    pipeline: trades
    tick: 1s
    values:
      a: {{sym: AAPL, px: 1}}
      b: {{sym: AAPL, px: 2}}
      m: {{sym: MSFT, px: 4}}
      z: {{sym: AAPL, px: 0}}
      u: {{symbol: AAPL, move: 100.0}}
      v: {{symbol: MSFT, move: 25.0}}
      w: {{symbol: AAPL, move: 50.0}}
    input: a-bm-z---------b|
    expect:
      activations.notify: {expected}
      dead_letters:
        - {{stage: map, error: division by zero, value: {{sym: AAPL, px: 0}}}}
"""


def _file(tmp_path: Path, expected: str) -> Path:
    module = f"notify_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "async def notify(symbol: str, move: float) -> str:\n"
        '    """Tell a trader."""\n'
        "    raise AssertionError('a test never calls the tool')\n"
    )
    path = tmp_path / "trades.yaml"
    path.write_text(FILE.format(module=module, expected=expected))
    return path


def test_a_cooldown_rule_is_tested_in_the_file(tmp_path: Path) -> None:
    # AAPL at 0 s calls; b (2 s) is within AAPL's 10 s; MSFT is another key; b at 15 s calls
    path = _file(tmp_path, "u--v-----------w")
    [result] = run_cases(load(path))
    assert result.passed, result.report()
    done = subprocess.run([EXE, "test", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS at most once per 10 s per symbol" in done.stdout


def test_a_wrong_expectation_of_calls_fails_saying_what_was_called(tmp_path: Path) -> None:
    # what the sink receives (before the cooldown) is not what the tool gets
    path = _file(tmp_path, "u-uv-----------w")
    [result] = run_cases(load(path))
    assert not result.passed
    report = result.report()
    assert "calls of tool notify" in report
    done = subprocess.run([EXE, "test", str(path)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "calls of tool notify" in done.stdout + done.stderr


def test_dead_letters_are_checked_with_their_reasons(tmp_path: Path) -> None:
    path = _file(tmp_path, "u--v-----------w")
    text = path.read_text().replace("error: division by zero", "error: KeyError")
    path.write_text(text)
    [result] = run_cases(load(path))
    assert not result.passed
    assert "dead letters differ" in result.report()
    assert "division by zero" in result.report()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("activations.notify: u", "activations.nope: 'u-'", "calls no tool 'nope'"),
        ("activations.notify: u", "activations.notify: {a: 1}", "expected a marble diagram"),
        ("error: division by zero, value:", "reason: x, value:", "expected a list of dead letters"),
    ],
)
def test_bad_expectations_are_located(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _file(tmp_path, "u")
    path.write_text(path.read_text().replace(old, new))
    [problem] = [str(p) for p in check_cases(load(path))]
    assert problem.startswith(f"{path}:"), problem
    assert message in problem
    done = subprocess.run([EXE, "validate", str(path)], capture_output=True, text=True)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
