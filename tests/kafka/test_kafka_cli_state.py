"""Durable stores from a pipeline file: `rxagent run` keeps them in a state directory,
`rxagent run --workers N` shares a group's partitions between processes, and
`rxagent state` inspects, exports and resets them (real broker, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Produce = Callable[..., None]

REDUCERS = """
def total(old, event):
    old = old or {"count": 0, "sum": 0}
    return {"count": old["count"] + 1, "sum": old["sum"] + event.value["n"]}
"""

PIPELINE = """
version: 1
settings: {{checkpoint_interval: 0.2}}
state:
  totals: {{description: per key count and sum}}
pipelines:
  totals:
    source:
      kafka:
        topics: {topic}
        bootstrap_servers: {bootstrap}
        group_id: {group}
        until_eof: {until_eof}
        config: {{session.timeout.ms: 6000, heartbeat.interval.ms: 500}}
    sinks:
      - state: {{store: totals, reducer: "reducers:total"}}
"""


def rxagent(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-c", "from rxagent.cli import main; main()", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path
    )


def produce(kafka_produce: Produce, topic: str, ids: range, keys: int) -> None:
    kafka_produce(
        topic, [(f"k{i % keys}", json.dumps({"id": i, "n": i % 97}).encode()) for i in ids]
    )


def truth(ids: range, keys: int) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for i in ids:
        entry = totals.setdefault(f"k{i % keys}", {"count": 0, "sum": 0})
        entry["count"] += 1
        entry["sum"] += i % 97
    return totals


def exported(tmp_path: Path, *args: str) -> dict[str, Any]:
    proc = rxagent(tmp_path, "state", "p.yaml", "--export", "-", *args)
    assert proc.returncode == 0, proc.stderr
    return {row["key"]: row["value"] for row in map(json.loads, proc.stdout.splitlines())}


@pytest.fixture
def setup(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], tmp_path: Path
) -> Callable[[bool], str]:
    (tmp_path / "reducers.py").write_text(REDUCERS)
    topic = kafka_topic(4)
    group = f"g-{uuid.uuid4().hex[:8]}"

    def write(until_eof: bool) -> str:
        text = PIPELINE.format(
            topic=topic, bootstrap=kafka_bootstrap, group=group, until_eof=str(until_eof).lower()
        )
        (tmp_path / "p.yaml").write_text(text)
        return topic

    return write


@pytest.mark.slow
def test_run_keeps_state_across_runs_and_state_inspects_exports_and_resets_it(
    setup: Callable[[bool], str], kafka_produce: Produce, tmp_path: Path
) -> None:
    topic = setup(True)
    keys = 8
    produce(kafka_produce, topic, range(2_000), keys)
    first = rxagent(tmp_path, "run", "p.yaml", "--no-live")
    assert first.returncode == 0, first.stderr
    state_file = tmp_path / ".rxagent" / "state" / "p" / "totals.sqlite3"
    assert state_file.exists(), "rxagent run kept no state file in .rxagent/state/<file>"
    assert exported(tmp_path) == truth(range(2_000), keys)
    to_file = rxagent(tmp_path, "state", "p.yaml", "--export", "entries.jsonl")
    assert to_file.returncode == 0, to_file.stderr
    assert len((tmp_path / "entries.jsonl").read_text().splitlines()) == keys
    assert (tmp_path / "entries.jsonl").stat().st_mode & 0o777 == 0o600, "payloads: owner only"
    # a second run restores the state and folds only the new events
    produce(kafka_produce, topic, range(2_000, 3_000), keys)
    second = rxagent(tmp_path, "run", "p.yaml", "--no-live")
    assert second.returncode == 0, second.stderr
    assert exported(tmp_path) == truth(range(3_000), keys)
    shown = rxagent(tmp_path, "state", "p.yaml")
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)
    assert f"state totals: {state_file.relative_to(tmp_path)}" in shown.stdout
    assert "8 keys" in shown.stdout
    assert "changelog rxagent-changelog." in shown.stdout
    # reset deletes the local file; the next start rebuilds it from the changelog
    reset = rxagent(tmp_path, "state", "p.yaml", "totals", "--reset", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert not state_file.exists()
    third = rxagent(tmp_path, "run", "p.yaml", "--no-live")
    assert third.returncode == 0, third.stderr
    assert exported(tmp_path) == truth(range(3_000), keys)


def test_unknown_store_and_workers_on_a_non_kafka_source_are_usage_errors(
    setup: Callable[[bool], str], tmp_path: Path
) -> None:
    setup(True)
    proc = rxagent(tmp_path, "state", "p.yaml", "nope")
    assert proc.returncode == 2
    assert "no state store named 'nope' (stores: totals)" in proc.stderr
    (tmp_path / "m.yaml").write_text(
        "version: 1\npipelines:\n  p:\n    source: {memory: {items: [1]}}\n    sinks: [{log: {}}]\n"
    )
    proc = rxagent(tmp_path, "run", "m.yaml", "--workers", "2")
    assert proc.returncode == 2
    assert "--workers 2: pipeline 'p' reads a memory source" in proc.stderr


@pytest.mark.slow
def test_workers_share_the_partitions_and_each_holds_the_state_of_its_own(
    setup: Callable[[bool], str], kafka_produce: Produce, tmp_path: Path
) -> None:
    topic = setup(False)
    keys = 16
    produce(kafka_produce, topic, range(4_000), keys)
    proc = rxagent(tmp_path, "run", "p.yaml", "--workers", "2", "--duration", "20", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[worker 0] " in proc.stdout
    assert "[worker 1] " in proc.stdout
    held = [exported(tmp_path, "--worker", str(i)) for i in range(2)]
    assert held[0], "worker 0 held no state"
    assert held[1], "worker 1 held no state"
    assert not set(held[0]) & set(held[1]), "a key held by both workers"
    assert {**held[0], **held[1]} == truth(range(4_000), keys)
