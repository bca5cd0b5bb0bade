"""Dead-letter storms are loud: a stage dead-lettering most of what it receives is
named in logs, status and ``rxagent run``'s output with its most frequent error and
an example; ``max_dead_letter_ratio`` (``--max-dead-letter-ratio``) fails the run."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rxagent import App, Pipeline
from rxagent import operators as ops
from rxagent.exceptions import DeadLetterStormError
from rxagent.sinks import ListSink
from rxagent.sources import memory

EXE = str(Path(sys.executable).with_name("rxagent"))


def price(value: dict[str, Any]) -> float:
    if value["n"] == 399:
        raise ValueError("a rare one")  # the latest error, not the frequent one
    return value["price"]  # KeyError: most values have no "price"


def _items() -> list[dict[str, Any]]:
    return [{"n": i, "px": 1.0} | ({"price": 2.0} if i % 10 == 0 else {}) for i in range(400)]


async def test_a_storm_is_logged_once_and_status_names_the_most_frequent_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = (
        Pipeline("feed", memory(_items(), batch_size=50))
        .pipe(ops.map(price, name="price"))
        .to(ListSink())
    )
    with caplog.at_level(logging.WARNING, logger="rxagent"):
        await App([pipeline]).run(duration=2.0)
    stage = pipeline.status().stages["price"]
    assert stage["dead_lettered"] == 360
    top = stage["top_errors"][0]
    assert top["error"] == "KeyError: 'price'"
    assert top["count"] == 359
    assert top["example"] == "{'n': 1, 'px': 1.0}"
    assert stage["last_error"] == "ValueError: a rare one"
    storms = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(storms) == 1, storms
    assert "stage 'price' dead-lettered" in storms[0]
    assert "most frequent: KeyError: 'price'" in storms[0]
    assert "e.g. value {'n': 1, 'px': 1.0}" in storms[0]
    assert pipeline.status().state.value == "stopped"


async def test_past_the_ratio_the_pipeline_fails() -> None:
    pipeline = (
        Pipeline("feed", memory(_items(), batch_size=50), max_dead_letter_ratio=0.5)
        .pipe(ops.map(price, name="price"))
        .to(ListSink())
    )
    await App([pipeline]).run(duration=2.0)
    status = pipeline.status()
    assert status.state.value == "failed"
    assert status.failed_stage == "price"
    assert isinstance(pipeline.error, DeadLetterStormError)
    assert "more than --max-dead-letter-ratio 0.5" in str(status.last_error)


def test_the_ratio_must_be_a_share() -> None:
    with pytest.raises(Exception, match="between 0 and 1"):
        Pipeline("feed", memory([]), max_dead_letter_ratio=1.5)


FILE = """\
pipelines:
  feed:
    source:
      memory: [{items}]
    steps:
      - filter: value.px / value.zero > 0
    sinks: [log]
"""


@pytest.mark.parametrize("limit", [None, "0.5"])
def test_rxagent_run_says_so_and_fails_past_the_limit(tmp_path: Path, limit: str | None) -> None:
    path = tmp_path / "feed.yaml"
    path.write_text(FILE.format(items=", ".join("{px: 1, zero: 0}" for _ in range(300))))
    args = [EXE, "run", str(path), "--no-live"]
    if limit is not None:
        args += ["--max-dead-letter-ratio", limit]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert "dead-lettered 300 of 300 events" in output or "dead-lettered" in output, output
    assert "most frequent:" in output, output
    assert "e.g. value {'px': 1, 'zero': 0}" in output, output
    if limit is None:
        assert done.returncode == 0, output
    else:
        assert done.returncode != 0, output
        assert "max-dead-letter-ratio" in output, output


async def test_a_limit_below_half_fails_without_a_storm() -> None:
    """40 % of the events dead-lettered is no storm to log, but past a 0.3 limit."""
    items = [{"n": i} | ({} if i % 10 in (1, 2, 3, 4) else {"price": 1.0}) for i in range(400)]
    pipeline = (
        Pipeline("feed", memory(items, batch_size=50), max_dead_letter_ratio=0.3)
        .pipe(ops.map(price, name="price"))
        .to(ListSink())
    )
    await App([pipeline]).run(duration=2.0)
    assert pipeline.status().state.value == "failed"
    assert isinstance(pipeline.error, DeadLetterStormError)
    assert "more than --max-dead-letter-ratio 0.3" in str(pipeline.error)
