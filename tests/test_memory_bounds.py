"""Memory bounded in bytes, not only in count (issue 12): in-memory dead letters,
in-flight credit, and string building in expressions."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from _helpers import Stall, until
from websockets.asyncio.server import ServerConnection, serve

from rxagent import ConfigurationError, Pipeline
from rxagent.config.expressions import (
    MAX_STRING,
    ExpressionError,
    ExpressionEvaluationError,
    compile_expression,
    expression_map,
)
from rxagent.deadletters import DeadLetter, MemoryDeadLetters, letter_size
from rxagent.events import Event
from rxagent.flow import DEFAULT_CREDIT_BYTES, Flow
from rxagent.sinks import ListSink
from rxagent.testing import run
from rxagent.websocket.source import WebSocketSource

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/feed"


def rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# -- dead letters ---------------------------------------------------------------------------


async def test_large_garbage_frames_cost_a_bounded_prefix_in_memory_dead_letters() -> None:
    frames, size = 300, 500_000  # 150 MB of undecodable frames

    async def handler(ws: ServerConnection) -> None:
        garbage = b"\xff" * size
        for _ in range(frames):
            await ws.send(garbage)
        await ws.wait_closed()

    letters = MemoryDeadLetters()
    before = rss()
    async with serving(handler) as url:
        source = WebSocketSource(url, decode="json")
        pipeline = Pipeline("ws", source, dead_letters=letters).to(ListSink())
        await pipeline.start()
        await until(lambda: letters.total == frames, 20)
        await pipeline.stop()
    grown = rss() - before
    # whole, they would be 150 MB; queues of the client and server come and go
    assert grown < 60 << 20, f"RSS grew by {grown >> 20} MiB"
    kept = letters.letters
    assert len(kept) == frames  # the count bound is not what held memory down
    assert all(len(d.event.value) == 1024 and d.size == size for d in kept)
    assert kept[0].event.value == b"\xff" * 1024
    assert letters.bytes == sum(map(letter_size, kept)) < 2 * 1024 * frames


def test_the_byte_budget_evicts_the_oldest_letters_and_counts_them() -> None:
    letters = MemoryDeadLetters(max_bytes=64 << 10, max_payload=None)
    for i in range(100):
        letters.put(DeadLetter(Event("x" * 4000, key=i), "stage", "E", "bad"))
    kept = letters.letters
    assert letters.bytes <= 64 << 10
    assert letters.dropped == 100 - len(kept) > 0
    assert [d.event.key for d in kept] == list(range(100 - len(kept), 100))
    assert letters.total == 100
    # a decoded value is measured through its containers, not by its shell only
    big = DeadLetter(Event({"text": "y" * 100_000}), "stage", "E", "bad")
    assert letter_size(big) > 100_000
    letters.clear()
    assert letters.bytes == 0
    assert len(letters) == 0


def test_str_payloads_are_cut_to_a_prefix_with_their_size_noted() -> None:
    letters = MemoryDeadLetters(max_payload=10)
    letters.put(DeadLetter(Event("a" * 50), "s", "E", "bad"))
    letters.put(DeadLetter(Event("short"), "s", "E", "bad"))
    letters.put(DeadLetter(Event({"whole": "z" * 50}), "s", "E", "bad"))
    first, second, third = letters.letters
    assert (first.event.value, first.size) == ("a" * 10, 50)
    assert (second.event.value, second.size) == ("short", None)
    assert third.event.value == {"whole": "z" * 50}
    assert third.size is None


# -- byte credit ----------------------------------------------------------------------------


async def test_a_stalled_sink_holds_at_most_the_byte_credit_of_large_websocket_messages() -> None:
    total, pad, limit = 400, 200_000, 2 << 20  # 80 MB sent, 2 MiB allowed in flight

    async def handler(ws: ServerConnection) -> None:
        body = "x" * pad
        for i in range(total):
            await ws.send(f'{{"seq": {i}, "pad": "{body}"}}')
        await ws.wait_closed()

    async with serving(handler) as url:
        source = WebSocketSource(url, credit=4096)
        assert source.credit_bytes == DEFAULT_CREDIT_BYTES
        source.credit_bytes = limit
        sink = Stall()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: sink.count > 0, 20)
        await asyncio.sleep(0.5)  # the source stalls on bytes, far below 4,096 events
        stalled = sink.count
        flow = pipeline.status().flow
        assert stalled < 20, stalled
        assert flow["bytes_in_flight"] <= limit + pad + 100
        assert flow["capacity_bytes"] == limit
        sink.release()
        await until(lambda: sink.count == total, 20)
        status = await pipeline.stop()
    assert status.flow["peak_bytes_in_flight"] <= limit + pad + 100
    assert status.flow["bytes_in_flight"] == 0
    assert status.flow["in_flight"] == 0


async def test_byte_credit_returns_with_ends_and_folds_and_wakes_the_source() -> None:
    flow = Flow("s", capacity=100, capacity_bytes=1000)
    assert await flow.acquire(10) == 10
    first = flow.ticket(10, nbytes=1000)  # 100 bytes per event
    assert flow.bytes_in_flight == 1000
    assert flow.try_acquire(5) == 0  # events free, bytes not
    waiting = asyncio.ensure_future(flow.acquire(50))
    await asyncio.sleep(0)
    assert not waiting.done()
    first.fold(4)  # the folded events' share of the bytes returns with their credit
    assert flow.bytes_in_flight == 600
    # 400 bytes left: about 4 events of the recent size, not the 50 wanted
    assert await asyncio.wait_for(waiting, 1) == 4
    flow.give_back(4)
    first.end(10)
    assert flow.bytes_in_flight == 0
    assert flow.in_flight == 0
    assert flow.peak_bytes_in_flight == 1000
    # without sizes (memory sources) only events count; None turns the byte limit off
    assert Flow("s", capacity=10, capacity_bytes=None).try_acquire(10) == 10
    with pytest.raises(ConfigurationError, match="credit_bytes for source 's'"):
        Flow("s", capacity_bytes=0)


# -- string building in expressions ---------------------------------------------------------


async def test_a_data_supplied_percent_template_is_refused_before_it_is_built() -> None:
    events = [
        {"tpl": "%0100000000d", "n": 1},  # 100 MB from a 50-byte event, before the fix
        {"tpl": "%.100000000f", "n": 1},
        {"tpl": "%*d", "n": 1},
        {"tpl": "n=%05d %%", "n": 7},
    ]
    tracemalloc.start()
    try:
        result = await run(events, expression_map("value.tpl % value.n", name="fmt"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"peak {peak >> 20} MiB"
    assert result.values == ["n=00007 %"]
    letters = result.dead_letters
    assert [d.stage for d in letters] == ["fmt"] * 3
    assert {d.error_type for d in letters} == {"ExpressionEvaluationError"}
    assert "value.tpl % value.n" in letters[0].message
    assert f"more than {MAX_STRING} characters" in letters[0].message
    assert "'*' width" in letters[2].message


def test_percent_stays_modulo_for_numbers_and_constant_templates_are_checked_when_compiled() -> (
    None
):
    assert compile_expression("value.n % 3")({"n": 10}) == 1
    assert compile_expression("'%(s)s-%(n)03d' % value")({"s": "a", "n": 5}) == "a-005"
    with pytest.raises(ExpressionError, match="column 0: '%' formatting would build more"):
        compile_expression("'%0100000000d' % value.n")
    with pytest.raises(ExpressionError, match="'\\*' width"):
        compile_expression("'%*d' % value.n")


def test_a_long_plus_chain_cannot_repeat_a_large_input_past_the_bound() -> None:
    big = {"s": "x" * 300_000, "l": ["y"] * 300_000}
    assert len(compile_expression("value.s + value.s + value.s")(big)) == 900_000
    chain = compile_expression(" + ".join(["value.s"] * 40))  # 12 MB before the fix
    start = time.perf_counter()
    with pytest.raises(ExpressionEvaluationError, match="'\\+' result too large"):
        chain(big)
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ExpressionEvaluationError, match="too large"):
        compile_expression(" + ".join(["value.l"] * 8))(big)
    assert compile_expression(" + ".join(["value.n"] * 40))({"n": 2}) == 80
