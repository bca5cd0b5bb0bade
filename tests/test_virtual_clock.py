"""One clock (docs/architecture.md Decision 8): on a virtual clock, the tool sink's
cooldown, timeouts and retry waits, the state store's times and staleness, and
circuit breakers (in the operator, the tool sink and a breaker of one's own
shared with them) all read the pipeline's clock, and nothing else moves them."""

from __future__ import annotations

import asyncio
from typing import Any

from _helpers import until  # real seconds: the loop's work, not the clock
from reactivex.testing import TestScheduler

from rxagent import Backoff, Pipeline, sources
from rxagent.circuit import CircuitBreaker
from rxagent.clock import scheduler_seconds
from rxagent.exceptions import ToolTimeoutError
from rxagent.operators import circuit_breaker
from rxagent.sinks import MemoryDeadLetters, ToolResult, ToolSink, ToolStatus
from rxagent.state import StateStore
from rxagent.tools import tool


async def idle(rounds: int = 20) -> None:
    """Let the loop run a while with the virtual clock standing still."""
    for _ in range(rounds):
        await asyncio.sleep(0.001)


async def test_tool_sink_cooldown_timeout_and_retry_wait_follow_the_virtual_clock() -> None:
    scheduler = TestScheduler()
    calls: list[tuple[int, float]] = []
    release = asyncio.Event()

    @tool
    async def slow(n: int) -> int:
        calls.append((n, scheduler_seconds(scheduler)))
        if n == 1:
            await release.wait()  # hangs until its virtual timeout
        if n == 2 and sum(1 for c, _ in calls if c == 2) == 1:
            raise ConnectionError("first attempt fails")
        return n

    sink = ToolSink(
        slow,
        key=lambda v: v["k"],
        args=lambda v: {"n": v["n"]},
        cooldown=30.0,
        timeout=5.0,
        retry=Backoff(initial=10.0, jitter="none", max_attempts=2, retry_on=(ConnectionError,)),
    )
    results: list[ToolResult] = []
    sink.results.subscribe(results.append)
    source = sources.push(credit=16)
    p = Pipeline("one-clock", source, dead_letters=MemoryDeadLetters()).to(sink)
    await p.start(scheduler=scheduler)

    source.push({"k": "a", "n": 1})  # t=0: called; hangs
    await until(lambda: len(calls) == 1)
    scheduler.advance_to(4.9)
    await idle()
    assert results == []  # 4.9 virtual seconds: not timed out, however long it really ran
    scheduler.advance_to(5.0)
    await until(lambda: len(results) == 1)
    assert results[0].status is ToolStatus.TIMEOUT
    assert isinstance(results[0].error, ToolTimeoutError)
    assert results[0].duration == 5.0  # measured on the pipeline's clock

    source.push({"k": "a", "n": 9})  # t=5: key a is in its cooldown until t=30
    await until(lambda: len(results) == 2)
    assert (results[1].status, results[1].reason) == (ToolStatus.DROPPED, "cooldown")
    assert sink.suppressions()[0]["eligible_at"] == 30.0

    source.push({"k": "b", "n": 2})  # t=5: fails, retried 10 virtual seconds later
    await until(lambda: len(calls) == 2)
    await idle()
    assert len(calls) == 2  # the retry waits for the clock
    scheduler.advance_to(15.0)
    await until(lambda: len(results) == 3)
    assert [(n, t) for n, t in calls if n == 2] == [(2, 5.0), (2, 15.0)]
    assert (results[2].status, results[2].value, results[2].attempts) == (ToolStatus.OK, 2, 2)
    source.complete()
    await p.wait()


async def test_state_store_times_and_staleness_follow_the_virtual_clock() -> None:
    scheduler = TestScheduler()
    store = StateStore("prices")
    source = sources.push(credit=16)
    p = Pipeline("store-clock", source).to(store.sink(key="sym", value="px"))
    await p.start(scheduler=scheduler)
    scheduler.advance_to(3.0)
    source.push({"sym": "A", "px": 1.0})
    await until(lambda: "A" in store)
    entry = store.snapshot.entry("A")
    assert entry is not None
    assert entry.wall_time == 3.0
    scheduler.advance_to(10.0)
    assert store.now() == 10.0
    assert store.snapshot.staleness("A") == 7.0  # counted on the store's (pipeline's) clock
    assert store.snapshot.staleness() == 7.0
    assert "7s ago" in store.context() or "7.0s ago" in store.context()
    source.complete()
    await p.wait()


async def test_a_breaker_shared_by_operator_and_tool_sink_reads_the_virtual_clock() -> None:
    scheduler = TestScheduler()
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=10.0)  # no clock
    failing = [True]

    def call(value: Any) -> Any:
        if failing[0]:
            raise ConnectionError("down")
        return value

    @tool
    async def notify(n: int) -> int:
        return n

    sink = ToolSink(notify, args=lambda v: {"n": v}, breaker=breaker)
    results: list[ToolResult] = []
    sink.results.subscribe(results.append)
    letters = MemoryDeadLetters()
    source = sources.push(credit=16)
    guarded = Pipeline("guarded", source, dead_letters=letters).pipe(
        circuit_breaker(call, breaker=breaker)
    )
    p = guarded.to(sink)
    await p.start(scheduler=scheduler)
    scheduler.advance_to(2.0)
    source.push(1)  # fails at t=2: open until t=12 on the virtual clock
    await until(lambda: breaker.state == "open")
    assert breaker.open_until == 12.0
    scheduler.advance_to(11.0)
    source.push(2)  # still open at t=11: failed fast
    await until(lambda: len(letters.letters) == 2)
    failing[0] = False
    scheduler.advance_to(12.0)
    assert breaker.current(12.0) == "half_open"  # its timer ran at t=12 too
    source.push(3)  # the trial call passes the operator; the sink sees a closed circuit
    await until(lambda: len(results) == 1)
    assert breaker.state == "closed"
    assert (results[0].status, results[0].value) == (ToolStatus.OK, 3)
    source.complete()
    await p.wait()
