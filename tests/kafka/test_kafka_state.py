"""Durable state with a Kafka source: real broker, real worker processes, SIGKILL.

The promise (docs/state.md): a worker killed at any instant and restarted ends
with a state *equal* to a fault-free run, because offsets are committed only after
the state changes of the events before them are durable, and replayed events are
skipped by the source position each entry remembers.
"""

from __future__ import annotations

import json
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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


class Worker:
    """A state_worker.py process and the progress lines it prints."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen([*WORKER, *args], stdout=subprocess.PIPE, text=True)
        self.last: dict[str, Any] = {"folded": 0, "keys": 0, "partitions": [], "emitted": 0}
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def until(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 60) -> float:
        """Wait until a progress line meets ``condition``; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while not condition(self.last):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; the worker's last progress: {self.last}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the worker exited (code {self.process.wait()})")
            self.last = line
        return time.monotonic() - started

    def poll(self) -> dict[str, Any]:
        """The latest progress line printed so far (without waiting)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.last
            if line is not None:
                self.last = line

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(60) == 0


def run_until_folded(args: list[str], at_least: int, timeout: float = 60) -> int:
    """Start a worker, SIGKILL it once it has folded ``at_least`` events; returns
    the count it had reached."""
    worker = Worker(args)
    try:
        worker.until(lambda p: p["folded"] >= at_least, timeout)
    finally:
        worker.kill()
    return int(worker.last["folded"])


@pytest.mark.parametrize("lose_disk", [False, True], ids=["local", "disk-lost"])
def test_state_killed_three_times_equals_a_fault_free_run(
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    kafka_produce: Produce,
    tmp_path: Path,
    lose_disk: bool,
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
    if lose_disk:
        # the machine's disk is gone: the state comes back from the changelog topic
        shutil.rmtree(tmp_path / "state")
    subprocess.run(
        [*WORKER, *args, "--assign", "--until-eof"],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    final = json.loads(out.read_text())
    print(
        f"durable state ({'disk lost' if lose_disk else 'local'}): seed {seed}, "
        f"SIGKILL at {killed_at} folded events of {n}"
    )
    expected = truth(n, keys)
    wrong = {k: (final.get(k), v) for k, v in expected.items() if final.get(k) != v}
    assert not wrong, f"seed {seed}, killed at {killed_at}: {len(wrong)} keys differ: {wrong}"
    assert final == expected


def test_a_killed_worker_s_partitions_move_with_their_state_and_move_again(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n, keys = 30_000, 40
    topic = kafka_topic(4)
    produce_events(kafka_produce, topic, n, keys)
    gid = f"g-{uuid.uuid4().hex[:8]}"

    def args(name: str) -> list[str]:
        return [kafka_bootstrap, topic, gid, str(tmp_path / name), str(tmp_path / f"{name}.json")]

    a, b = Worker(args("a")), Worker(args("b"))
    try:
        for w in (a, b):
            w.until(lambda p: len(p["partitions"]) == 2, 60)
        b.until(lambda p: p["folded"] >= 1_000)
        b.kill()  # mid-run, with state not yet checkpointed and events in flight
        # a takes b's partitions over, restores their state, and reads on to the end
        a.until(lambda p: len(p["partitions"]) == 4 and p["folded"] == n, 90)
        c = Worker(args("c"))
        try:
            # a third worker: partitions move to it with their state (restored, not re-read)
            c.until(lambda p: len(p["partitions"]) >= 1 and p["folded"] > 0, 90)
            deadline = time.monotonic() + 30
            # each partition's state is held by exactly one of them
            while not (
                len(a.poll()["partitions"]) + len(c.poll()["partitions"]) == 4
                and a.last["folded"] + c.last["folded"] == n
            ):
                assert time.monotonic() < deadline, f"a: {a.last}, c: {c.last}"
                time.sleep(0.02)
            assert c.last["emitted"] < n // 4, "the new owner re-read its partitions"
            # both leave at once: each writes out what it holds (no rebalance in between)
            for w in (a, c):
                w.process.send_signal(signal.SIGTERM)
            assert a.process.wait(60) == 0
            assert c.process.wait(60) == 0
        finally:
            c.kill()
    finally:
        a.kill()
        b.kill()
    held_a = json.loads((tmp_path / "a.json").read_text())
    held_c = json.loads((tmp_path / "c.json").read_text())
    assert held_a, "a held no state"
    assert held_c, "c held no state"
    assert not set(held_a) & set(held_c), "a key was held by two workers"
    assert {**held_a, **held_c} == truth(n, keys)


def test_a_restarted_static_member_resumes_within_10_seconds(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n, keys = 20_000, 20
    topic = kafka_topic(4)
    produce_events(kafka_produce, topic, n, keys)
    gid = f"g-{uuid.uuid4().hex[:8]}"
    args = [kafka_bootstrap, topic, gid, str(tmp_path / "s"), str(tmp_path / "s.json")]
    args += ["--instance", "worker-0"]
    first = Worker(args)
    try:
        first.until(lambda p: p["folded"] >= n // 3, 60)
    finally:
        first.kill()
    killed = time.monotonic()
    second = Worker(args)
    try:
        second.until(lambda p: p["folded"] > first.last["folded"] and p["emitted"] > 0, 60)
        resumed = time.monotonic() - killed
        print(f"restart after SIGKILL: consuming again {resumed:.1f}s after the kill")
        assert resumed < 10, f"resumed only after {resumed:.1f}s"
        second.until(lambda p: p["folded"] == n, 60)
        second.stop()
    finally:
        second.kill()
    assert json.loads((tmp_path / "s.json").read_text()) == truth(n, keys)


def test_a_worker_joining_mid_run_does_not_wait_for_open_windows(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    """Count windows hold events; a revoke releases them (uncommitted, replayed by
    the new owner) instead of waiting for the windows to close."""
    n, keys, size = 100_000, 40, 50
    first = 50_685  # every key's window is open (17 or 18 of 50) when b joins
    topic = kafka_topic(4)
    produce_events(kafka_produce, topic, first, keys)
    gid = f"g-{uuid.uuid4().hex[:8]}"

    def args(name: str) -> list[str]:
        out = [kafka_bootstrap, topic, gid, str(tmp_path / name), str(tmp_path / f"{name}.json")]
        return [*out, "--window", str(size)]

    a = Worker(args("a"))
    b: Worker | None = None
    try:
        a.until(lambda p: len(p["partitions"]) == 4 and p["folded"] >= first - keys * size, 60)
        b = Worker(args("b"))
        # a gives two partitions up while their windows are open
        a.until(lambda p: p["revocations"] >= 1 and p["last_revoke"] is not None, 60)
        revoke = a.last["last_revoke"]
        print(f"revoke with open count windows took {revoke:.3f}s")
        assert revoke < 1.0, f"the revoke took {revoke:.2f}s"
        b.until(lambda p: len(p["partitions"]) == 2, 60)
        rest = range(first, n)
        kafka_produce(
            topic, [(f"k{i % keys}", json.dumps({"id": i, "n": i % 97}).encode()) for i in rest]
        )
        # every event folded, except what the last open window of each key holds
        deadline = time.monotonic() + 90
        while a.poll()["folded"] + b.poll()["folded"] < n - keys * (size - 1):
            assert time.monotonic() < deadline, f"a: {a.last}, b: {b.last}"
            time.sleep(0.05)
        # both leave at once; the stop gives the open windows' events back uncommitted
        for w in (a, b):
            w.process.send_signal(signal.SIGTERM)
        assert a.process.wait(60) == 0
        assert b.process.wait(60) == 0
    finally:
        a.kill()
        if b is not None:
            b.kill()
    held = json.loads((tmp_path / "a.json").read_text())
    held_b = json.loads((tmp_path / "b.json").read_text())
    assert held, "a held no state"
    assert held_b, "b held no state"
    assert not set(held) & set(held_b), "a key was held by two workers"
    held.update(held_b)
    expected = truth(n, keys)
    got = {k: {"count": v["count"], "sum": v["sum"]} for k, v in held.items()}
    # no partial window reached state: what the open windows held is missing, not half-folded
    assert sum(v["count"] for v in got.values()) < n
    assert all(got[k]["count"] <= expected[k]["count"] for k in got)
    # a restart reads those events again (their offsets were not committed): exact
    subprocess.run(
        [*WORKER, *args("c"), "--assign", "--until-eof"],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    final = json.loads((tmp_path / "c.json").read_text())
    assert {k: {"count": v["count"], "sum": v["sum"]} for k, v in final.items()} == expected
