"""Memory bounded in bytes, not only in count (issue 12): in-memory dead letters,
in-flight credit, and string building in expressions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from websockets.asyncio.server import ServerConnection, serve

from rxagent import Pipeline
from rxagent.deadletters import DeadLetter, MemoryDeadLetters, letter_size
from rxagent.events import Event
from rxagent.sinks import ListSink
from rxagent.sources.websocket import WebSocketSource

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/feed"


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


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
        await until(lambda: letters.total == frames)
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
