"""Conflation and status, in process: the server on memory streams, the SDK's
``ClientSession`` as the client, a store written at 10k changes per second."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession, IncomingMessage
from mcp.shared.memory import create_client_server_memory_streams
from mcp_helpers import WAIT

from rxagent import App, Pipeline, StateStore, sources
from rxagent.deadletters import MemoryDeadLetters
from rxagent.events import Batch
from rxagent.mcp import Conflater, RxAgentMCP, key_uri, store_uri
from rxagent.sinks import CallbackSink, Sink

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


class Received:
    """Every ``resources/updated`` notification with its arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.events.append((message.params.uri, time.monotonic()))
            self.changed.set()

    def times(self, uri: str) -> list[float]:
        return [t for u, t in self.events if u == uri]

    async def wait(self, uri: str, after: float) -> None:
        """Until a notification of ``uri`` arrived at or after ``after``."""
        async with asyncio.timeout(WAIT):
            while not any(t >= after for t in self.times(uri)):
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def connected(server: RxAgentMCP, handler: Any = None) -> AsyncIterator[ClientSession]:
    async with server, session_of(server, handler) as session:
        yield session


@contextlib.asynccontextmanager
async def session_of(server: RxAgentMCP, handler: Any = None) -> AsyncIterator[ClientSession]:
    """One client connection to a started ``server``, closed on exit."""
    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(
            lambda: server.server.run(
                server_streams[0],
                server_streams[1],
                server.server.create_initialization_options(),
            )
        )
        async with ClientSession(*client_streams, message_handler=handler) as session:
            await session.initialize()
            yield session
        tasks.cancel_scope.cancel()


async def test_fast_feed_is_conflated() -> None:
    store = StateStore("ticks")
    server = RxAgentMCP(stores={"ticks": store}, min_interval=0.2)
    received = Received()
    whole, one = store_uri("ticks"), key_uri("ticks", "k7")
    async with connected(server, received) as session:
        await session.subscribe_resource(whole)
        await session.subscribe_resource(one)
        # 10k changes per second for a second, 100 keys
        start = time.monotonic()
        for step in range(100):
            await asyncio.sleep(0.01)
            for i in range(100):
                store.set(f"k{i}", step * 100 + i)
        last_write = time.monotonic()  # before any await: nothing was delivered since
        elapsed = last_write - start
        # the last change is always delivered, at most one interval later
        await received.wait(whole, last_write)
        await received.wait(one, last_write)
        bound = int(elapsed / 0.2) + 2  # a leading notification, then one per interval
        for uri in (whole, one):
            times = received.times(uri)
            assert 2 <= len(times) <= bound, (uri, len(times), elapsed)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # spaced by the interval (less the jitter of delivery on a busy loop)
            assert min(gaps) >= 0.1, gaps
        assert server.conflater is not None
        assert server.conflater.touched == 10_000 + 100  # every change of the store, and of k7
        read = await session.read_resource(one)
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        assert json.loads(content.text)["value"] == 9907


async def test_unsubscribed_changes_cost_nothing() -> None:
    store = StateStore("ticks")
    server = RxAgentMCP(stores={"ticks": store}, min_interval=0.2)
    async with connected(server) as session:
        for i in range(1000):
            store.set(i % 10, i)
        assert server.conflater is not None
        assert server.conflater.touched == 0
        await session.subscribe_resource(key_uri("ticks", 3))  # an int key, as text
        store.set(3, "x")
        store.set(4, "y")
        assert server.conflater.touched == 1
        await session.unsubscribe_resource(key_uri("ticks", 3))
        store.set(3, "z")
        assert server.conflater.touched == 1


async def test_disconnect_releases_subscriptions() -> None:
    store = StateStore("ticks")
    async with RxAgentMCP(stores={"ticks": store}) as server:
        async with session_of(server) as first, session_of(server) as second:
            await first.subscribe_resource(store_uri("ticks"))
            await second.subscribe_resource(store_uri("ticks"))
            await second.subscribe_resource(key_uri("ticks", "a"))
            subscribed = server.status()["notifications"]["subscribed"]
            assert subscribed == [store_uri("ticks"), key_uri("ticks", "a")]
        assert server.status()["notifications"]["subscribed"] == []
        store.set("a", 1)
        assert server.conflater is not None
        assert server.conflater.touched == 0


class Suppressing(Sink):
    """A sink reporting activation suppressions, as ToolSink may."""

    def on_batch(self, batch: Batch) -> None:
        batch.end_all()

    def suppressions(self) -> list[dict[str, Any]]:
        return [{"key": "AAPL", "reason": "cooldown"}]


async def test_status_resource() -> None:
    store = StateStore("prices")
    dead_letters = MemoryDeadLetters()
    source = sources.memory([{"s": "A", "px": 1}, {"s": "B", "px": 2}])
    pipeline = Pipeline("ticks", source, dead_letters=dead_letters).to(
        store.sink(key="s", value="px"),
        Suppressing("alerts"),
        CallbackSink(lambda v: 1 / 0 if v["s"] == "B" else None, name="check"),
    )
    app = App([pipeline], name="demo")
    server = RxAgentMCP(
        stores={"prices": store}, app=app, status_interval=0.05, dead_letters=dead_letters
    )
    received = Received()
    async with connected(server, received) as session:
        await session.subscribe_resource("rxagent://status")
        await asyncio.sleep(0)  # let the status watcher take its first look
        before = time.monotonic()
        await app.run()
        await received.wait("rxagent://status", before)
        read = await session.read_resource("rxagent://status")
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        status = json.loads(content.text)
    ticks = status["pipelines"]["ticks"]
    assert ticks["state"] == "stopped"
    assert ticks["completed"] is True
    assert ticks["stages"]["state:prices"]["in"] == 2
    assert ticks["sinks"]["alerts"]["suppressions"] == [{"key": "AAPL", "reason": "cooldown"}]
    assert ticks["flow"]["in_flight"] == 0
    assert status["stores"]["prices"]["keys"] == 2
    assert status["app"] == "demo"
    assert status["dead_letters"] == 1
    (letter,) = status["recent_dead_letters"]
    assert letter["stage"] == "check"
    assert letter["error"] == "ZeroDivisionError: division by zero"
    assert ticks["stages"]["check"]["last_error"] == "ZeroDivisionError: division by zero"


def test_conflater_spacing() -> None:
    async def scenario() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        out: list[tuple[str, float]] = []
        conflater = Conflater(0.05, lambda key: out.append((key, loop.time())))
        t0 = loop.time()
        conflater.touch("a")  # leading: at once
        conflater.touch("a")
        conflater.touch("b")
        assert [k for k, _ in out] == ["a", "b"]
        assert conflater.pending("a")
        await asyncio.sleep(0.08)  # the trailing "a" fired
        assert [k for k, _ in out] == ["a", "b", "a"]
        assert out[2][1] - t0 >= 0.045
        conflater.touch("a")  # within the interval of the trailing one: scheduled
        conflater.forget("a")
        conflater.touch("b")
        conflater.close()
        await asyncio.sleep(0.08)
        return out

    out = asyncio.run(scenario())
    assert [k for k, _ in out] == ["a", "b", "a", "b"]
