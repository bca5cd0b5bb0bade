"""The tool activation sink, run in real pipelines with real asyncio time (small
durations), and the pure per-key policy decision with hypothesis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from _helpers import MS, until
from hypothesis import given
from hypothesis import strategies as st
from reactivex.testing import TestScheduler

from rxagent import Backoff, Pipeline, PipelineError, sources
from rxagent.exceptions import ConfigurationError, ToolArgumentsError, ToolTimeoutError
from rxagent.operators.circuit import CircuitBreaker
from rxagent.sinks import MemoryDeadLetters, ToolResult, ToolSink, ToolStatus, activate
from rxagent.sources.memory import PushSource
from rxagent.tools import Tool, tool
from rxagent.tools.policy import Decision, decide


@pytest.fixture(autouse=True)
async def no_task_leaks() -> AsyncIterator[None]:
    """Every test here must leave no tool task behind."""
    yield
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t.get_name().startswith("rxagent-tool")]
    assert left == [], f"tool tasks leaked: {left}"


class Recorder:
    """Collects a sink's results and whether the stream completed."""

    def __init__(self, sink: ToolSink) -> None:
        self.results: list[ToolResult] = []
        self.completed = False
        sink.results.subscribe(self.results.append, on_completed=self._done)

    def _done(self) -> None:
        self.completed = True

    def by_status(self, status: ToolStatus) -> list[ToolResult]:
        return [r for r in self.results if r.status is status]

    def values(self, status: ToolStatus) -> list[Any]:
        return [r.event.value for r in self.by_status(status) if r.event is not None]


def pipeline(
    items: Iterable[Any], sink: ToolSink, *, credit: int = 64, batch_size: int = 64, **kw: Any
) -> Pipeline:
    return Pipeline("tools", sources.memory(items, credit=credit, batch_size=batch_size), **kw).to(
        sink
    )


@tool
async def double(n: int) -> int:
    """Twice n."""
    await asyncio.sleep(MS)
    return n * 2


# -- the pure decision -----------------------------------------------------------------


def test_decide_per_policy() -> None:
    assert decide("queue", busy=False, now=0) is Decision.START
    assert decide("queue", busy=True, now=0) is Decision.QUEUE
    assert decide("latest", busy=True, now=0) is Decision.REPLACE
    assert decide("drop_while_busy", busy=True, now=0) is Decision.DROP_BUSY
    assert decide("parallel", busy=True, now=0) is Decision.START
    assert decide("queue", busy=False, now=5, last_activation=4, cooldown=2) is (
        Decision.DROP_COOLDOWN
    )
    assert decide("queue", busy=False, now=6, last_activation=4, cooldown=2) is Decision.START


@given(
    st.sampled_from(["queue", "latest", "drop_while_busy", "parallel"]),
    st.booleans(),
    st.floats(0, 1e6),
    st.one_of(st.none(), st.floats(0, 1e6)),
    st.one_of(st.none(), st.floats(0, 1e3)),
)
def test_decide_properties(
    policy: Any, busy: bool, now: float, last: float | None, cooldown: float | None
) -> None:
    decision = decide(policy, busy=busy, now=now, last_activation=last, cooldown=cooldown)
    in_cooldown = bool(cooldown) and last is not None and now < last + cooldown
    # drops for cooldown happen exactly inside the cooldown
    assert (decision is Decision.DROP_COOLDOWN) == in_cooldown
    if not in_cooldown and not busy:
        assert decision is Decision.START  # an idle key always runs
    if decision in (Decision.QUEUE, Decision.REPLACE, Decision.DROP_BUSY):
        assert busy


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"policy": "newest"}, "policy must be one of"),
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"cooldown": -1}, "cooldown must be >= 0"),
        ({"retry": 3}, "retry must be a Backoff"),
        ({"args": len, "event_args": len}, "not both"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        ToolSink(double, **options)


def test_tool_sink_and_activate_build_the_same_sink() -> None:
    sink = double.sink(key="k", policy="latest", timeout=1.0)
    assert isinstance(sink, ToolSink)
    assert sink.name == "tool:double"
    described = sink.describe()
    assert described["tool"] == "double"
    assert described["policy"] == "latest"
    with pytest.raises(ConfigurationError, match="'<lambda>' is not usable"):
        activate(lambda n: n)
    plain = activate(double.fn, name="again")
    assert plain.tool.name == "double"
    assert plain.name == "again"


# -- results, arguments, dead letters --------------------------------------------------


async def test_results_stream_reports_each_activation_and_completes() -> None:
    sink = ToolSink(double, args=lambda v: {"n": v}, policy="parallel")
    rec = Recorder(sink)
    status = await pipeline(range(5), sink).run()
    assert status.completed
    assert rec.completed, "results stream must complete after the sink drained"
    assert sorted(r.value for r in rec.results) == [0, 2, 4, 6, 8]
    for result in rec.results:
        assert result.status is ToolStatus.OK
        assert result.ok
        assert result.tool == "double"
        assert result.attempts == 1
        assert result.duration >= MS * 0.5
        assert result.event is not None
        assert result.value == result.event.value * 2
    stage = status.stages["tool:double"]
    assert (stage["in"], stage["out"], stage["dead_lettered"]) == (5, 5, 0)


async def test_event_args_and_key_field() -> None:
    seen: list[tuple[str, int]] = []

    @tool
    async def record(sym: str, pos: int) -> None:
        seen.append((sym, pos))

    sink = ToolSink(
        record,
        key="sym",
        event_args=lambda ev: {"sym": ev.value["sym"], "pos": ev.position.offset},
    )
    rec = Recorder(sink)
    await pipeline([{"sym": "A"}, {"sym": "B"}], sink).run()
    assert sorted(seen) == [("A", 0), ("B", 1)]
    assert sorted(r.key for r in rec.results) == ["A", "B"]


async def test_invalid_arguments_are_dead_lettered_and_the_rest_flow() -> None:
    letters = MemoryDeadLetters()
    sink = ToolSink(double, args=lambda v: {"n": v}, policy="parallel")
    rec = Recorder(sink)
    p = pipeline([1, "two", 3], sink, dead_letters=letters)
    status = await p.run()
    assert sorted(rec.values(ToolStatus.OK)) == [1, 3]
    [bad] = rec.by_status(ToolStatus.ERROR)
    assert bad.reason == "invalid"
    assert bad.attempts == 0
    assert isinstance(bad.error, ToolArgumentsError)
    [letter] = letters.letters
    assert letter.stage == "tool:double"
    assert letter.error_type == "ToolArgumentsError"
    assert "n: Input should be a valid integer" in letter.message
    assert letter.event.value == "two"
    assert status.flow["pending"] == 0


async def test_a_raising_args_function_is_a_dead_letter() -> None:
    letters = MemoryDeadLetters()
    sink = ToolSink(double, args=lambda v: {"n": 10 // v})
    await pipeline([0, 1], sink, dead_letters=letters).run()
    assert [(x.event.value, x.error_type) for x in letters] == [(0, "ZeroDivisionError")]


async def test_an_unhashable_key_is_a_dead_letter() -> None:
    letters = MemoryDeadLetters()
    sink = ToolSink(double, args=lambda v: {"n": v["n"]}, key=lambda v: v["k"])
    status = await pipeline(
        [{"n": 1, "k": [1]}, {"n": 2, "k": "ok"}], sink, dead_letters=letters
    ).run()
    assert status.completed
    assert [(x.event.value["n"], x.error_type) for x in letters] == [(1, "TypeError")]
    assert status.stages["tool:double"]["out"] == 1


async def test_a_raising_results_subscriber_does_not_hold_credit() -> None:
    sink = ToolSink(double, args=lambda v: {"n": v}, policy="parallel")

    def explode(_: ToolResult) -> None:
        raise RuntimeError("subscriber bug")

    sink.results.subscribe(explode)
    p = pipeline(range(20), sink, credit=4, batch_size=4)
    status = await asyncio.wait_for(p.run(), 5)
    assert status.completed
    assert status.flow["pending"] == 0


# -- policies ---------------------------------------------------------------------------


def _tracking_tool(log: list[tuple[str, str, int]], delay: float) -> Tool:
    @tool
    async def track(key: str, n: int) -> int:
        log.append(("start", key, n))
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            log.append(("cancelled", key, n))
            raise
        log.append(("end", key, n))
        return n

    return track


async def test_queue_runs_each_key_in_order_one_at_a_time_and_keys_in_parallel() -> None:
    log: list[tuple[str, str, int]] = []
    sink = ToolSink(_tracking_tool(log, 3 * MS), key="key", policy="queue")
    items = [{"key": "ab"[i % 2], "n": i} for i in range(10)]
    rec = Recorder(sink)
    await pipeline(items, sink).run()
    assert len(rec.by_status(ToolStatus.OK)) == 10
    for key in "ab":
        mine = [(kind, n) for kind, k, n in log if k == key]
        # strictly start, end, start, end ... in arrival order: never two at once
        expected = [n for n in range(10) if "ab"[n % 2] == key]
        assert mine == [(kind, n) for n in expected for kind in ("start", "end")]
    running = peak = 0
    for kind, _, _ in log:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2, "different keys must run at the same time"


async def test_latest_cancels_the_running_call_of_the_key() -> None:
    log: list[tuple[str, str, int]] = []
    sink = ToolSink(_tracking_tool(log, 1.0), key="key", policy="latest", timeout=5)
    rec = Recorder(sink)
    source = sources.push(credit=16)
    p = Pipeline("latest", source).to(sink)
    await p.start()
    source.push({"key": "a", "n": 1})
    await until(lambda: ("start", "a", 1) in log)
    source.push({"key": "a", "n": 2})
    await until(lambda: ("start", "a", 2) in log)
    assert ("cancelled", "a", 1) in log, "the tool must see its cancellation"
    [first] = rec.by_status(ToolStatus.CANCELLED)
    assert first.reason == "replaced"
    assert first.event is not None
    assert first.event.value["n"] == 1
    assert p.flow is not None
    assert p.flow.pending == 1, "the replaced event ended, the new one holds its credit"
    await p.drain(timeout=0.05)  # the 1 s call cannot finish: closed and cancelled
    assert p.flow.pending == 0
    stage = p.status().stages["tool:track"]
    assert stage["dropped"] == 1
    assert stage["cancelled"] == 2


async def test_latest_within_one_batch_keeps_only_the_newest_per_key() -> None:
    log: list[tuple[str, str, int]] = []
    sink = ToolSink(_tracking_tool(log, MS), key="key", policy="latest")
    rec = Recorder(sink)
    items = [{"key": k, "n": n} for n, k in enumerate("aaab")]
    status = await pipeline(items, sink).run()
    assert sorted(r.value for r in rec.by_status(ToolStatus.OK)) == [2, 3]
    cancelled = rec.by_status(ToolStatus.CANCELLED)
    assert sorted(r.event.value["n"] for r in cancelled if r.event) == [0, 1]
    assert all(r.reason == "replaced" for r in cancelled)
    assert status.stages["tool:track"]["dropped"] == 2
    assert status.flow["pending"] == 0


async def test_latest_replaces_an_activation_still_waiting_for_a_slot() -> None:
    log: list[tuple[str, str, int]] = []
    sink = ToolSink(_tracking_tool(log, 5 * MS), key="key", policy="latest", concurrency=1)
    rec = Recorder(sink)
    items = [{"key": "x", "n": 0}, {"key": "a", "n": 1}, {"key": "a", "n": 2}]
    await pipeline(items, sink).run()
    # x runs; a1 waits for the only slot and is replaced there, never started
    assert ("start", "a", 1) not in log
    assert sorted(r.value for r in rec.by_status(ToolStatus.OK)) == [0, 2]
    [replaced] = rec.by_status(ToolStatus.CANCELLED)
    assert replaced.attempts == 0


async def test_drop_while_busy_drops_and_counts() -> None:
    log: list[tuple[str, str, int]] = []
    sink = ToolSink(_tracking_tool(log, 5 * MS), key="key", policy="drop_while_busy")
    rec = Recorder(sink)
    items = [{"key": "a", "n": n} for n in range(5)] + [{"key": "b", "n": 5}]
    status = await pipeline(items, sink).run()
    assert sorted(r.value for r in rec.by_status(ToolStatus.OK)) == [0, 5]
    dropped = rec.by_status(ToolStatus.DROPPED)
    assert [r.event.value["n"] for r in dropped if r.event] == [1, 2, 3, 4]
    assert all(r.reason == "busy" and r.attempts == 0 for r in dropped)
    stage = status.stages["tool:track"]
    assert stage["dropped"] == 4
    assert stage["dropped_busy"] == 4
    assert stage["dead_lettered"] == 0
    assert status.flow["pending"] == 0


async def test_cooldown_uses_the_pipeline_scheduler_clock() -> None:
    scheduler = TestScheduler()
    sink = ToolSink(double, key=lambda v: v["k"], args=lambda v: {"n": v["n"]}, cooldown=1.0)
    rec = Recorder(sink)
    source = sources.push(credit=16)
    p = Pipeline("cooldown", source).to(sink)
    await p.start(scheduler=scheduler)

    async def send(k: str, n: int) -> None:
        before = len(rec.results)
        source.push({"k": k, "n": n})
        await until(lambda: len(rec.results) > before)

    await send("a", 1)  # t=0: activated
    scheduler.advance_to(0.5)
    await send("a", 2)  # t=0.5: within a's cooldown
    await send("b", 3)  # another key: its own cooldown
    scheduler.advance_to(1.0)
    await send("a", 4)  # t=1.0: cooldown over
    source.complete()
    status = await p.wait()
    assert [(r.event.value["n"], r.status) for r in rec.results if r.event] == [
        (1, ToolStatus.OK),
        (2, ToolStatus.DROPPED),
        (3, ToolStatus.OK),
        (4, ToolStatus.OK),
    ]
    assert rec.results[1].reason == "cooldown"
    assert status.stages["tool:double"]["dropped_cooldown"] == 1


# -- timeouts and retries ------------------------------------------------------------------


async def test_timeout_ends_the_call_with_tool_timeout_error() -> None:
    letters = MemoryDeadLetters()

    @tool
    async def hang(n: int) -> None:
        await asyncio.sleep(10)

    sink = ToolSink(hang, args=lambda v: {"n": v}, timeout=20 * MS)
    rec = Recorder(sink)
    started = asyncio.get_running_loop().time()
    status = await pipeline([1], sink, dead_letters=letters).run()
    assert asyncio.get_running_loop().time() - started < 1.0
    [result] = rec.results
    assert result.status is ToolStatus.TIMEOUT
    assert isinstance(result.error, ToolTimeoutError)
    assert "timed out after" in str(result.error)
    [letter] = letters.letters
    assert letter.error_type == "ToolTimeoutError"
    assert "tool 'hang' (key None) failed" in letter.message
    assert status.stages["tool:hang"]["timeouts"] == 1


async def test_retry_then_success() -> None:
    calls: dict[int, int] = {}

    @tool
    async def flaky(n: int) -> str:
        calls[n] = calls.get(n, 0) + 1
        if calls[n] < 3:
            raise ConnectionError(f"down ({calls[n]})")
        return "up"

    retry = Backoff(initial=MS, jitter="none", max_attempts=5, retry_on=(ConnectionError,))
    sink = ToolSink(flaky, args=lambda v: {"n": v}, retry=retry, policy="parallel")
    rec = Recorder(sink)
    status = await pipeline([1, 2], sink).run()
    assert [(r.status, r.attempts, r.value) for r in rec.results] == [
        (ToolStatus.OK, 3, "up"),
        (ToolStatus.OK, 3, "up"),
    ]
    stage = status.stages["tool:flaky"]
    assert stage["retries"] == 4
    assert stage["dead_lettered"] == 0


async def test_a_timed_out_attempt_is_retried() -> None:
    attempts = 0

    @tool
    async def slow_once(n: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.sleep(10)
        return n

    sink = ToolSink(
        slow_once,
        args=lambda v: {"n": v},
        timeout=20 * MS,
        retry=Backoff(initial=MS, jitter="none", max_attempts=2),
    )
    rec = Recorder(sink)
    await pipeline([7], sink).run()
    [result] = rec.results
    assert (result.status, result.attempts, result.value) == (ToolStatus.OK, 2, 7)


async def test_retries_exhausted_go_to_dead_letters_with_the_reason() -> None:
    letters = MemoryDeadLetters()

    @tool
    async def down(n: int) -> None:
        raise ConnectionError("service down")

    retry = Backoff(initial=MS, jitter="full", max_attempts=3)
    sink = ToolSink(down, args=lambda v: {"n": v}, retry=retry)
    rec = Recorder(sink)
    status = await pipeline([1], sink, dead_letters=letters).run()
    [result] = rec.results
    assert (result.status, result.attempts) == (ToolStatus.ERROR, 3)
    assert isinstance(result.error, ConnectionError)
    [letter] = letters.letters
    assert letter.error_type == "ToolError"
    assert letter.message == (
        "tool 'down' (key None) failed after 3 attempts; last error: ConnectionError: service down"
    )
    assert status.stages["tool:down"]["dead_lettered"] == 1
    assert status.flow["pending"] == 0


async def test_errors_outside_retry_on_are_not_retried() -> None:
    letters = MemoryDeadLetters()

    @tool
    async def picky(n: int) -> None:
        raise ValueError("bad input")

    retry = Backoff(initial=MS, max_attempts=5, retry_on=(ConnectionError,))
    sink = ToolSink(picky, args=lambda v: {"n": v}, retry=retry)
    rec = Recorder(sink)
    await pipeline([1], sink, dead_letters=letters).run()
    assert rec.results[0].attempts == 1
    assert "not retried: not one of retry_on (ConnectionError)" in letters.letters[0].message


async def test_fail_fast_turns_a_failed_call_into_a_pipeline_failure() -> None:
    @tool
    async def boom(n: int) -> None:
        raise RuntimeError("boom")

    sink = ToolSink(boom, args=lambda v: {"n": v})
    with pytest.raises(PipelineError, match="boom"):
        await pipeline([1, 2, 3], sink, fail_fast=True).run()


# -- concurrency and backpressure -----------------------------------------------------------


async def test_concurrency_limit_is_respected() -> None:
    running = peak = 0

    @tool
    async def busy(n: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(3 * MS)
        running -= 1

    sink = ToolSink(busy, args=lambda v: {"n": v}, key=lambda v: v, concurrency=3)
    rec = Recorder(sink)
    await pipeline(range(30), sink).run()
    assert peak == 3
    assert len(rec.by_status(ToolStatus.OK)) == 30


async def test_a_slow_tool_slows_the_source_and_nothing_is_buffered() -> None:
    credit = 16
    finished = 0
    violations: list[int] = []
    p: Pipeline

    def check() -> None:
        assert p.flow is not None
        outstanding = p.flow.emitted - finished
        if outstanding > credit:
            violations.append(outstanding)

    @tool
    async def slow(n: int) -> int:
        check()
        await asyncio.sleep(5 * MS + (n % 3) * 5 * MS)
        return n

    def count(_: ToolResult) -> None:
        nonlocal finished
        finished += 1
        check()

    sink = ToolSink(slow, args=lambda v: {"n": v}, key=lambda v: v % 8, concurrency=8)
    sink.results.subscribe(count)
    p = pipeline(range(120), sink, credit=credit, batch_size=8)

    async def monitor() -> None:
        while True:
            check()
            assert sink.running + sink.queued <= credit
            await asyncio.sleep(MS)

    watcher = asyncio.create_task(monitor())
    try:
        status = await asyncio.wait_for(p.run(), 10)
    finally:
        watcher.cancel()
    assert p.flow is not None
    stats = p.flow.stats()
    assert status.completed
    assert finished == 120
    assert stats.peak_in_flight <= credit
    assert stats.waits > 0, "the source must have waited for credit"
    assert violations == [], "events were emitted beyond the credit"
    assert stats.pending == 0


async def test_drain_lets_in_flight_calls_finish() -> None:
    started: list[int] = []
    done: list[int] = []

    @tool
    async def work(n: int) -> int:
        started.append(n)
        await asyncio.sleep(30 * MS)
        done.append(n)
        return n

    def endless() -> Iterable[int]:
        n = 0
        while True:
            yield n
            n += 1

    sink = ToolSink(work, args=lambda v: {"n": v}, key=lambda v: v, concurrency=4)
    rec = Recorder(sink)
    p = pipeline(endless(), sink, credit=16, batch_size=4)
    await p.start()
    await until(lambda: len(started) >= 4)
    status = await p.drain(timeout=5)
    assert str(status.state) == "stopped"
    assert started, "some calls ran"
    assert sorted(done) == sorted(started), "every started call finished"
    assert {r.status for r in rec.results} == {ToolStatus.OK}
    assert sorted(r.value for r in rec.results) == sorted(started)
    assert rec.completed
    assert p.flow is not None
    assert p.flow.pending == 0


async def test_close_cancels_running_and_waiting_calls_and_ends_their_events() -> None:
    letters = MemoryDeadLetters()
    log: list[tuple[str, str, int]] = []
    sink = ToolSink(_tracking_tool(log, 10.0), key="key", policy="queue", concurrency=2)
    rec = Recorder(sink)
    # a0 and b1 run; c2 waits for a slot; a3 waits behind a0
    items = [{"key": k, "n": n} for n, k in enumerate("abca")]
    p = pipeline(items, sink, dead_letters=letters)
    await p.start()
    await until(lambda: len([e for e in log if e[0] == "start"]) == 2)
    assert (sink.running, sink.queued) == (2, 2)
    await p.drain(timeout=20 * MS)  # too short: the sink is closed
    assert sorted(n for kind, _, n in log if kind == "cancelled") == [0, 1]
    assert len(rec.results) == 4
    assert {r.status for r in rec.results} == {ToolStatus.CANCELLED}
    assert {r.reason for r in rec.results} == {"closed"}
    assert rec.completed
    assert sorted(x.event.value["n"] for x in letters) == [0, 1, 2, 3]
    assert all("sink closed" in x.message for x in letters)
    assert p.flow is not None
    assert p.flow.pending == 0
    assert (sink.running, sink.queued) == (0, 0)


async def test_sync_tool_in_a_sink_runs_off_the_loop() -> None:
    import threading
    import time

    loop_thread = threading.get_ident()
    threads: set[int] = set()

    @tool
    def blocking(n: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(2 * MS)
        return n

    sink = ToolSink(blocking, args=lambda v: {"n": v}, policy="parallel", concurrency=4)
    rec = Recorder(sink)
    await pipeline(range(8), sink).run()
    assert len(rec.by_status(ToolStatus.OK)) == 8
    assert loop_thread not in threads


async def test_events_after_close_are_dead_lettered() -> None:
    letters = MemoryDeadLetters()
    sink = ToolSink(double, args=lambda v: {"n": v})
    rec = Recorder(sink)
    source: PushSource = sources.push(credit=4)
    p = Pipeline("late", source, dead_letters=letters).to(sink)
    await p.start()
    await sink.aclose()
    source.push(1)
    await until(lambda: len(letters) == 1)
    assert rec.results == []  # the results stream completed when the sink closed
    assert "is closed" in letters.letters[0].message
    assert p.flow is not None
    assert p.flow.pending == 0
    await p.stop()


async def test_per_key_bookkeeping_stays_bounded_with_many_keys() -> None:
    @tool
    async def instant(n: int) -> int:
        return n

    plain = ToolSink(instant, args=lambda v: {"n": v}, key=lambda v: v)
    await pipeline(range(500), plain).run()
    assert plain._keys == {}, "idle keys without cooldown are forgotten at once"

    cooled = ToolSink(instant, args=lambda v: {"n": v}, key=lambda v: v, cooldown=1e-9)
    await pipeline(range(3000), cooled, credit=256, batch_size=256).run()
    # kept for their cooldown, swept every 1024 activations; keys busy at a sweep
    # (at most the credit) stay: 3000 keys without the sweep
    assert len(cooled._keys) <= 1024 + 256


# -- why didn't it fire: suppressions ---------------------------------------------------------


async def test_cooldown_suppressions_say_when_the_key_is_eligible_again() -> None:
    scheduler = TestScheduler()
    sink = ToolSink(double, key=lambda v: v["k"], args=lambda v: {"n": v["n"]}, cooldown=1.0)
    assert sink.suppressions() == []  # not started yet
    rec = Recorder(sink)
    source = sources.push(credit=16)
    p = Pipeline("cooldown", source).to(sink)
    await p.start(scheduler=scheduler)

    async def send(k: str, n: int) -> None:
        before = len(rec.results)
        source.push({"k": k, "n": n})
        await until(lambda: len(rec.results) > before)

    await send("a", 1)  # t=0: activated
    scheduler.advance_to(0.25)
    await send("a", 2)  # in cooldown until 1.0
    scheduler.advance_to(0.5)
    await send("a", 3)  # again
    source.complete()
    status = await p.wait()
    assert sink.suppressions() == [
        {
            "key": "a",
            "reason": "cooldown",
            "count": 2,
            "first_at": 0.25,
            "last_at": 0.5,
            "eligible_at": 1.0,
        }
    ]
    shown = status.as_dict()["suppressions"]["tool:double"]
    assert shown["totals"] == {"cooldown": 2}
    assert shown["entries"][0]["eligible_at"] == 1.0
    assert sink.describe()["suppressed"] == {"cooldown": 2}


async def test_busy_and_replaced_activations_are_recorded_per_key() -> None:
    log: list[tuple[str, str, int]] = []
    busy = ToolSink(_tracking_tool(log, 5 * MS), key="key", policy="drop_while_busy")
    items = [{"key": "a", "n": n} for n in range(3)] + [{"key": "b", "n": 3}]
    await pipeline(items, busy).run()
    assert [(s["key"], s["reason"], s["count"], s["eligible_at"]) for s in busy.suppressions()] == [
        ("a", "busy", 2, None)
    ]
    latest = ToolSink(_tracking_tool(log, MS), key="key", policy="latest", name="latest")
    await pipeline([{"key": k, "n": n} for n, k in enumerate("aaab")], latest).run()
    assert [(s["key"], s["reason"], s["count"]) for s in latest.suppressions()] == [
        ("a", "replaced", 2)
    ]


async def test_a_breaker_guarding_the_sink_drops_while_open_and_says_until_when() -> None:
    now = [0.0]
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=10, clock=lambda: now[0])

    @tool
    async def flaky(n: int) -> int:
        if n == 0:
            raise ConnectionError("down")
        return n

    sink = ToolSink(flaky, args=lambda v: {"n": v}, breaker=breaker, concurrency=1)
    rec = Recorder(sink)
    source = sources.push(credit=16)
    p = Pipeline("guarded", source).to(sink)
    await p.start()
    source.push(0)
    await until(lambda: len(rec.results) == 1)
    assert breaker.state == "open"
    source.push(1)  # refused: the circuit is open until t=10
    await until(lambda: len(rec.results) == 2)
    now[0] = 10.0  # half-open: one trial
    source.push(2)
    source.complete()
    await p.wait()
    assert [(r.status, r.reason) for r in rec.results] == [
        (ToolStatus.ERROR, None),
        (ToolStatus.DROPPED, "circuit_open"),
        (ToolStatus.OK, None),
    ]
    assert breaker.state == "closed"
    [entry] = sink.suppressions()
    assert (entry["reason"], entry["count"], entry["eligible_at"]) == ("circuit_open", 1, 10.0)
    assert sink.describe()["breaker"]["name"] == "api"


def test_a_breaker_must_be_a_circuit_breaker() -> None:
    with pytest.raises(ConfigurationError, match="breaker must be a CircuitBreaker"):
        ToolSink(double, breaker="api")  # type: ignore[arg-type]
