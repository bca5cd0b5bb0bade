"""Durable state with a Kafka source: real broker, real worker processes, SIGKILL.

The promise (docs/state.md): a worker killed at any instant and restarted ends
with a state *equal* to a fault-free run, because offsets are committed only after
the state changes of the events before them are durable, and replayed events are
skipped by the source position each entry remembers.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

Produce = Callable[..., None]
WORKER = [sys.executable, str(Path(__file__).with_name("state_worker.py"))]


def truth(n: int, keys: int) -> dict[str, dict[str, int]]:
    """What a fault-free run folds: per key, the count and the sum of ``n``."""
    totals: dict[str, dict[str, int]] = {}
    for i in range(n):
        entry = totals.setdefault(f"k{i % keys}", {"count": 0, "sum": 0})
        entry["count"] += 1
        entry["sum"] += i % 97
    return totals


def produce_events(produce: Produce, topic: str, n: int, keys: int) -> None:
    produce(
        topic, [(f"k{i % keys}", json.dumps({"id": i, "n": i % 97}).encode()) for i in range(n)]
    )


def run_until_folded(args: list[str], at_least: int, timeout: float = 60) -> int:
    """Start a worker, SIGKILL it once it has folded ``at_least`` events; returns
    the count it had reached."""
    process = subprocess.Popen([*WORKER, *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    folded = 0
    deadline = time.monotonic() + timeout
    try:
        for line in process.stdout:
            folded = int(line)
            if folded >= at_least:
                break
            assert time.monotonic() < deadline, f"the worker folded only {folded} events"
        else:
            raise AssertionError(f"the worker exited early (code {process.wait()})")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return folded


def test_state_killed_three_times_equals_a_fault_free_run(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n, keys = 100_000, 40
    topic = kafka_topic(4)
    produce_events(kafka_produce, topic, n, keys)
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    # three kill points spread over the run, different in every run of the test
    points = sorted(rng.randrange(lo, hi) for lo, hi in ((5, 30), (35, 60), (65, 90)))
    out = tmp_path / "state.json"
    args = [kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}", str(tmp_path / "state"), str(out)]
    killed_at = [run_until_folded([*args, "--assign"], n * p // 100) for p in points]
    subprocess.run(
        [*WORKER, *args, "--assign", "--until-eof"],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    final = json.loads(out.read_text())
    print(f"durable state: seed {seed}, SIGKILL at {killed_at} folded events of {n}")
    expected = truth(n, keys)
    wrong = {k: (final.get(k), v) for k, v in expected.items() if final.get(k) != v}
    assert not wrong, f"seed {seed}, killed at {killed_at}: {len(wrong)} keys differ: {wrong}"
    assert final == expected
