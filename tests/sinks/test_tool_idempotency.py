"""Idempotency keys of tool activations and the durable record of activations done.

The crash test runs a real worker process (tests/sinks/tool_worker.py), kills it
with SIGKILL right after a checkpoint of its activation record, restarts it (its
memory source replays from the start) and checks the calls the tool logged. The
other tests run real pipelines in process, with real files.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _helpers import TIME_SCALE

from rxagent import Backoff, Pipeline, sources
from rxagent import operators as ops
from rxagent.events import Event, Position
from rxagent.exceptions import ConfigurationError, StateError
from rxagent.operators import Window
from rxagent.sinks import MemoryDeadLetters, ToolResult, ToolSink, ToolStatus
from rxagent.sinks.tools import idempotency_key, trigger_of
from rxagent.tools import ActivationContext, current_activation, tool

WORKER = Path(__file__).with_name("tool_worker.py")


def recorded_keys(path: Path) -> dict[str, list[Any]]:
    """The activation record on disk, read with plain sqlite3: key -> [seq, outcome, trigger]."""
    db = sqlite3.connect(path)
    try:
        return {
            json.loads(k): json.loads(e) for k, e in db.execute("SELECT key, entry FROM entries")
        }
    finally:
        db.close()


class Calls:
    """What a test tool saw: (idempotency key, attempt, value) per call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, int, Any]] = []

    def note(self, value: Any) -> None:
        activation = current_activation()
        assert activation is not None
        self.seen.append((activation.idempotency_key, activation.attempt, value))


def sink_for(calls: Calls, state_dir: Path | None, **options: Any) -> ToolSink:
    @tool
    async def act(i: int) -> int:
        """Note the call."""
        calls.note(i)
        return i

    return ToolSink(act, args=lambda v: {"i": v}, state_dir=state_dir, **options)


async def run(items: list[Any], sink: ToolSink, **options: Any) -> list[ToolResult]:
    results: list[ToolResult] = []
    sink.results.subscribe(results.append)
    await Pipeline("p", sources.memory(items), **options).to(sink).run()
    return results


# -- the crash test ------------------------------------------------------------------------


def test_a_worker_killed_after_a_checkpoint_fires_no_recorded_activation_again(
    tmp_path: Path,
) -> None:
    n = 60
    state, calls, progress = tmp_path / "state", tmp_path / "calls.txt", tmp_path / "progress.txt"
    record = state / "tools.tool-worker.tool_act.sqlite3"
    delay = str(0.03 * TIME_SCALE)

    def worker(run: str) -> list[str]:
        return [sys.executable, str(WORKER), str(state), str(calls), str(progress), run, str(n)]

    def checkpointed() -> int:
        lines = progress.read_text().splitlines() if progress.exists() else []
        counts = [int(line.split()[1]) for line in lines if line.startswith("checkpoint")]
        return max(counts, default=0)

    # run 1: killed right after a checkpoint that recorded at least 15 activations
    process = subprocess.Popen([*worker("1"), delay])
    try:
        deadline = time.monotonic() + 30 * TIME_SCALE
        while checkpointed() < 15:
            assert process.poll() is None, "the worker exited before the kill"
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.001)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    at_kill = recorded_keys(record)  # what the last checkpoint before the kill made durable
    assert 15 <= len(at_kill) < n, "the kill must land mid-run, after a checkpoint"

    # run 2: replays all n events from the start and finishes
    subprocess.run([*worker("2"), delay], check=True, timeout=60 * TIME_SCALE)
    assert progress.read_text().splitlines()[-1] == f"finished {len(at_kill)}"

    rows = [line.split() for line in calls.read_text().splitlines()]
    first = [(key, int(i)) for run, key, i in rows if run == "1"]
    second = [(key, int(i)) for run, key, i in rows if run == "2"]
    key_of: dict[int, set[str]] = {}
    for key, i in first + second:
        key_of.setdefault(i, set()).add(key)
    # one key per trigger, the same in both runs; a different key per trigger
    assert all(len(keys) == 1 for keys in key_of.values()), key_of
    trigger_of_key = {next(iter(keys)): i for i, keys in key_of.items()}
    assert len(trigger_of_key) == len(key_of)
    # every trigger was activated
    assert set(key_of) == set(range(n))
    # each run called a key at most once
    assert max(Counter(k for k, _ in first).values()) == 1
    assert max(Counter(k for k, _ in second).values()) == 1
    # every recorded activation really ran in run 1, and none of them ran again
    first_keys = {k for k, _ in first}
    second_keys = {k for k, _ in second}
    assert set(at_kill) <= first_keys
    assert not set(at_kill) & second_keys
    # run 2 activated exactly the triggers the record did not cover
    assert {trigger_of_key[k] for k in second_keys} == set(range(n)) - {
        trigger_of_key[k] for k in at_kill
    }
    # so the only keys called twice are activations after the last checkpoint
    # (running at the kill, or ended after the checkpoint): at-least-once for those
    twice = first_keys & second_keys
    assert twice == first_keys - set(at_kill)
    print(
        f"tool crash test: {n} triggers, killed with {len(at_kill)} recorded, "
        f"{len(first)} calls in run 1, {len(second)} in run 2, {len(twice)} fired twice"
    )

    # the record now covers everything: a third run calls nothing
    assert len(recorded_keys(record)) == n
    subprocess.run([*worker("3"), delay], check=True, timeout=60 * TIME_SCALE)
    assert not [row for row in calls.read_text().splitlines() if row.startswith("3 ")]
    assert progress.read_text().splitlines()[-1] == f"finished {n}"


# -- keys ------------------------------------------------------------------------------------


def test_the_key_of_a_trigger_is_stable_and_distinct() -> None:
    names = {"pipeline": "p", "sink": "tool:act", "tool": "act"}
    event = Event({"x": 1}, position=Position("ticks", ("orders", 3), 41))
    trigger = trigger_of(event)
    assert trigger == ("event", "ticks", ("orders", 3), 41)
    key = idempotency_key(trigger, **names)
    # pinned: a key must never change between versions, or records stop matching
    assert key == "900a62f4f79d6c5e29bc4ad73b372ff5"
    assert len(key) == 32
    assert int(key, 16) >= 0
    again = Event({"x": 2}, key="other", position=Position("ticks", ("orders", 3), 41))
    assert idempotency_key(trigger_of(again), **names) == key  # the value does not matter
    others = [
        idempotency_key(trigger_of(Event(1, position=p)), **names)
        for p in (
            Position("ticks", ("orders", 3), 42),
            Position("ticks", ("orders", 4), 41),
            Position("quotes", ("orders", 3), 41),
        )
    ]
    others += [
        idempotency_key(trigger, **{**names, field: "x"}) for field in ("pipeline", "sink", "tool")
    ]
    assert len({key, *others}) == len(others) + 1


def test_a_window_is_identified_by_its_key_and_bounds() -> None:
    names = {"pipeline": "p", "sink": "s", "tool": "t"}
    window = Event(Window("a", 3.0, 2, 10.0, 20.0), key="a")
    assert trigger_of(window, "ticks") == ("window", "ticks", "a", 10.0, 20.0)
    # a window's position (its last event's, shared by overlapping windows) is not used
    positioned = Event(Window("a", 9.0, 2, 10.0, 20.0), position=Position("ticks", 0, 7))
    assert trigger_of(positioned) == trigger_of(window, "ticks")
    later = Event(Window("a", 3.0, 2, 20.0, 30.0), key="a")
    assert idempotency_key(trigger_of(later, "ticks"), **names) != idempotency_key(
        trigger_of(window, "ticks"), **names
    )
    assert trigger_of(Event(1, key="a")) is None  # no position, no window: no identity


async def test_windows_activate_with_their_keys_and_are_recorded(tmp_path: Path) -> None:
    items = [{"k": "a", "t": float(t)} for t in range(6)]
    calls = Calls()

    def pipeline(sink: ToolSink) -> Pipeline:
        return (
            Pipeline("w", sources.memory(items))
            .pipe(ops.event_time("t"), ops.count_window(2, key="k"))
            .to(sink)
        )

    @tool
    async def act(n: int) -> int:
        """Note the window."""
        calls.note(n)
        return n

    def make() -> ToolSink:
        return ToolSink(act, args=lambda w: {"n": w.count}, state_dir=tmp_path, name="win")

    sink = make()
    results: list[ToolResult] = []
    sink.results.subscribe(results.append)
    await pipeline(sink).run()
    expected = [
        idempotency_key(("window", "memory", "a", s, s + 1.0), pipeline="w", sink="win", tool="act")
        for s in (0.0, 2.0, 4.0)
    ]
    assert [r.idempotency_key for r in results] == expected
    assert [k for k, _, _ in calls.seen] == expected
    again = make()
    results.clear()
    again.results.subscribe(results.append)
    await pipeline(again).run()
    assert [r.status for r in results] == [ToolStatus.SKIPPED] * 3
    assert len(calls.seen) == 3


# -- passing the key to the tool ---------------------------------------------------------


async def test_the_tool_reads_the_key_the_same_on_every_retry_and_in_a_thread() -> None:
    seen: list[ActivationContext | None] = []
    failures = {"left": 1}

    @tool
    async def flaky(i: int) -> int:
        """Fails once."""
        seen.append(current_activation())
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("down")
        return i

    @tool
    def blocking(i: int) -> str | None:
        """A synchronous tool: runs in a worker thread."""
        activation = current_activation()
        return None if activation is None else activation.idempotency_key

    retry = Backoff(max_attempts=3, initial=0.001, jitter="none", retry_on=(ConnectionError,))
    flaky_sink = ToolSink(flaky, args=lambda v: {"i": v}, retry=retry)
    thread_sink = ToolSink(blocking, args=lambda v: {"i": v})
    flaky_results: list[ToolResult] = []
    thread_results: list[ToolResult] = []
    flaky_sink.results.subscribe(flaky_results.append)
    thread_sink.results.subscribe(thread_results.append)
    await Pipeline("p", sources.memory([7])).to(flaky_sink, thread_sink).run()
    activations = [a for a in seen if a is not None]
    assert [a.attempt for a in activations] == [1, 2]
    key = idempotency_key(
        ("event", "memory", None, 0), pipeline="p", sink="tool:flaky", tool="flaky"
    )
    assert {a.idempotency_key for a in activations} == {key}
    first = activations[0]
    assert first.position == Position("memory", None, 0)
    assert (first.tool, first.sink, first.pipeline, first.key) == ("flaky", "tool:flaky", "p", None)
    assert first.trigger == "memory@0"
    assert flaky_results[0].idempotency_key == key
    # two sinks on one event: two keys
    thread_key = thread_results[0].value
    assert thread_key == thread_results[0].idempotency_key
    assert thread_key is not None
    assert thread_key != key
    assert current_activation() is None  # only inside a sink's call
    assert await flaky.invoke(i=1) == 1  # an LLM's call: no activation
    assert seen[-1] is None
    assert len(seen) == 3


async def test_a_custom_trigger_id_replaces_the_position(tmp_path: Path) -> None:
    calls = Calls()
    await run([5, 6], sink_for(calls, tmp_path, trigger_id=lambda e: ["order", e.value]))
    keys = [k for k, _, _ in calls.seen]
    assert keys == [
        idempotency_key(["order", v], pipeline="p", sink="tool:act", tool="act") for v in (5, 6)
    ]
    # the same order ids at other positions after a restart: the same triggers
    again = sink_for(calls, tmp_path, trigger_id=lambda e: ["order", e.value])
    results = await run([6, 5, 7], again)
    assert [r.status for r in results] == ["skipped", "skipped", "ok"]
    assert [v for _, _, v in calls.seen] == [5, 6, 7]
    with pytest.raises(ConfigurationError, match="trigger_id must be callable"):
        sink_for(calls, None, trigger_id=3)


# -- the record ------------------------------------------------------------------------------


async def test_a_restart_skips_what_was_done_and_records_failures_too(tmp_path: Path) -> None:
    calls = Calls()

    @tool
    async def act(i: int) -> int:
        """Fails for 2."""
        calls.note(i)
        if i == 2:
            raise ValueError("no 2")
        return i

    def make() -> ToolSink:
        return ToolSink(act, args=lambda v: {"i": v}, state_dir=tmp_path)

    letters = MemoryDeadLetters()
    first = make()
    results = await run(list(range(5)), first, dead_letters=letters)
    assert sorted(r.status for r in results) == ["error", "ok", "ok", "ok", "ok"]
    assert first.record_path == tmp_path / "tools.p.tool_act.sqlite3"
    on_disk = recorded_keys(tmp_path / "tools.p.tool_act.sqlite3")
    assert sorted(outcome for _, outcome, _ in on_disk.values()) == ["error"] + ["ok"] * 4
    assert sorted(trigger for _, _, trigger in on_disk.values()) == [
        f"memory@{i}" for i in range(5)
    ]
    assert set(on_disk) == {r.idempotency_key for r in results}

    # a restart over the same events and two new ones: only the new ones fire
    second = make()
    pipeline = Pipeline("p", sources.memory(list(range(7))), dead_letters=letters).to(second)
    results = []
    second.results.subscribe(results.append)
    status = await pipeline.run()
    assert [r.status for r in results[:5]] == [ToolStatus.SKIPPED] * 5
    assert {r.reason for r in results[:5]} == {"already_done"}
    assert [r.status for r in results[5:]] == [ToolStatus.OK] * 2
    assert [v for _, _, v in calls.seen] == [0, 1, 2, 3, 4, 5, 6]
    assert len(letters.letters) == 1  # the failure was not retried after the restart
    stage = status.stages[second.name]
    assert stage["skipped_done"] == 5
    suppressed = second.suppressions()
    assert [(s["reason"], s["count"]) for s in suppressed] == [("already_done", 5)]
    info = second.describe()["activation_record"]
    assert (info["restored"], info["done"], info["pending"]) == (5, 7, 0)


async def test_recover_loads_the_record_before_the_first_event(tmp_path: Path) -> None:
    calls = Calls()
    await run(list(range(4)), sink_for(calls, tmp_path))
    sink = sink_for(calls, tmp_path)
    pipeline = Pipeline("p", sources.memory([])).to(sink)
    await pipeline.start()  # recover() ran: the record is loaded
    info = sink.describe()["activation_record"]
    assert (info["restored"], info["done"]) == (4, 4)
    await pipeline.wait()


async def test_the_record_keeps_the_newest_max_done_keys(tmp_path: Path) -> None:
    calls = Calls()
    sink = sink_for(calls, tmp_path, max_done=5)
    results = await run(list(range(12)), sink)
    path = tmp_path / "tools.p.tool_act.sqlite3"
    on_disk = recorded_keys(path)
    assert len(on_disk) == 5
    assert set(on_disk) == {r.idempotency_key for r in results[7:]}  # the newest
    info = sink.describe()["activation_record"]
    assert (info["done"], info["pruned"]) == (5, 7)

    # a restart replaying all 12: the 7 pruned fire again, the 5 kept do not
    calls.seen.clear()
    again = sink_for(calls, tmp_path, max_done=5)
    await run(list(range(12)), again)
    assert [v for _, _, v in calls.seen] == list(range(7))
    assert len(recorded_keys(path)) == 5

    # a smaller bound on restart: the file shrinks to it at the next checkpoint
    smaller = sink_for(calls, tmp_path, max_done=2)
    await run([], smaller)
    assert len(recorded_keys(path)) == 2
    with pytest.raises(ConfigurationError, match="max_done must be an int >= 1"):
        sink_for(calls, tmp_path, max_done=0)


async def test_checkpoints_write_the_record_not_each_event(tmp_path: Path) -> None:
    calls = Calls()
    sink = sink_for(calls, tmp_path)
    await run(list(range(50)), sink, checkpoint_interval=60.0)
    info = sink.describe()["activation_record"]
    # the one at stop (and aclose finding nothing more to write)
    assert (info["checkpoints"], info["written"]) == (1, 50)


async def test_a_corrupt_record_file_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tools.p.tool_act.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    calls = Calls()
    pipeline = Pipeline("p", sources.memory([1])).to(sink_for(calls, tmp_path))
    with pytest.raises(
        StateError, match=r"activation record: .*tools\.p\.tool_act\.sqlite3 is not"
    ):
        await pipeline.start()
    assert pipeline.status().state == "failed"
    await pipeline.wait()
    assert calls.seen == []
    assert path.read_bytes() == b"this is not a database" * 100  # never silently emptied


async def test_a_record_with_a_bad_row_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    calls = Calls()
    await run([1], sink_for(calls, tmp_path))
    path = tmp_path / "tools.p.tool_act.sqlite3"
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET entry = ?", (b'"not a row"',))
    db.commit()
    db.close()
    pipeline = Pipeline("p", sources.memory([1])).to(sink_for(calls, tmp_path))
    with pytest.raises(StateError, match=r"tools\.p\.tool_act\.sqlite3 is corrupt"):
        await pipeline.start()
    await pipeline.wait()


async def test_another_sink_s_file_is_refused(tmp_path: Path) -> None:
    calls = Calls()
    await run([1], sink_for(calls, tmp_path))
    os.rename(tmp_path / "tools.p.tool_act.sqlite3", tmp_path / "tools.p.other.sqlite3")
    pipeline = Pipeline("p", sources.memory([1])).to(sink_for(calls, tmp_path, name="other"))
    with pytest.raises(StateError, match="not the activation record of tool sink 'other'"):
        await pipeline.start()
    await pipeline.wait()


async def test_a_dry_run_reads_the_record_but_never_writes_it(tmp_path: Path) -> None:
    calls = Calls()
    await run([0, 1], sink_for(calls, tmp_path))
    path = tmp_path / "tools.p.tool_act.sqlite3"
    before = recorded_keys(path)
    dry = sink_for(calls, tmp_path, dry_run=True)
    results = await run([0, 1, 2], dry)
    assert [r.status for r in results] == ["skipped", "skipped", "ok"]
    assert dry.recorded[0].idempotency_key == results[2].idempotency_key
    assert recorded_keys(path) == before
    assert len(calls.seen) == 2  # nothing called in the dry run


async def test_without_state_dir_nothing_is_recorded_or_skipped(tmp_path: Path) -> None:
    calls = Calls()
    sink = sink_for(calls, None)
    await run([0, 1], sink)
    await run([0, 1], sink_for(calls, None))
    assert len(calls.seen) == 4
    assert calls.seen[0][0] == calls.seen[2][0]  # the same key for the same trigger
    assert sink.record_path is None
    assert "activation_record" not in sink.describe()
    assert not os.listdir(tmp_path)


async def test_dropped_events_are_decided_once(tmp_path: Path) -> None:
    """A cooldown drop is recorded too: after a restart (the cooldown forgotten) the
    replayed event that was dropped does not fire."""
    calls = Calls()

    def make() -> ToolSink:
        return sink_for(calls, tmp_path, cooldown=3600)

    items = [0, 1, 2]
    results = await run(items, make())
    by_value = {r.event.value: r.status for r in results if r.event is not None}
    assert by_value == {0: "ok", 1: "dropped", 2: "dropped"}
    results = await run(items, make())
    assert [r.status for r in results] == ["skipped"] * 3
    assert [v for _, _, v in calls.seen] == [0]
