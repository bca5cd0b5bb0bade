"""The MCP server over stdio with the official client (``mcp`` SDK ``ClientSession``):
a real ``python -m rxagent.mcp FILE`` subprocess reading a WebSocket feed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.subscriptions import ResourceUpdated, listen
from mcp.shared.exceptions import MCPError
from mcp_helpers import WAIT, Feed, server_command, server_env, write_app

STORE = "rxagent://state/prices"
AAPL = "rxagent://state/prices/AAPL"


class Updates:
    """Collects ``notifications/resources/updated`` (the handshake-era flow)."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self._changed = asyncio.Condition()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            async with self._changed:
                self.uris.append(message.params.uri)
                self._changed.notify_all()

    async def wait_for(self, uri: str, count: int = 1) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: self.uris.count(uri) >= count)


@contextlib.asynccontextmanager
async def stdio_session(
    tmp_path: Path, app: Path, handler: Any = None
) -> AsyncIterator[ClientSession]:
    command = server_command(app, "--min-interval", "0.05")
    params = StdioServerParameters(
        command=command[0], args=command[1:], env=server_env(), cwd=str(tmp_path)
    )
    with (tmp_path / "server.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, message_handler=handler, read_timeout_seconds=WAIT) as s,
        ):
            yield s


def _json(result: types.ReadResourceResult) -> Any:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    assert content.mime_type == "application/json"
    return json.loads(content.text)


def _text(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


async def read_when(
    session: ClientSession, updates: Updates, uri: str, done: Callable[[Any], bool]
) -> Any:
    """Read ``uri`` each time it is announced changed until ``done(data)``."""
    while True:
        seen = updates.uris.count(uri)
        data = _json(await session.read_resource(uri))
        if done(data):
            return data
        await updates.wait_for(uri, seen + 1)


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_resources_and_tools(tmp_path: Path, feed: Feed) -> None:
    app = write_app(tmp_path, feed.url)
    updates = Updates()
    async with stdio_session(tmp_path, app, updates) as session:
        init = await session.initialize()
        assert init.protocol_version == "2025-11-25"
        assert init.capabilities.resources is not None
        assert init.capabilities.resources.subscribe is True

        listed = await session.list_resources()
        assert {r.uri for r in listed.resources} == {"rxagent://status", STORE}
        (store,) = [r for r in listed.resources if r.uri == STORE]
        assert store.description is not None
        assert "last price per symbol" in store.description
        templates = await session.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == [
            "rxagent://state/{store}/{key}"
        ]

        # the feed writes two keys, one needing percent-encoding
        await session.subscribe_resource(STORE)
        await feed.send({"sym": "AAPL", "px": 101.5}, {"sym": "a/b c", "px": 1.0})
        data = await read_when(session, updates, STORE, lambda d: d["keys"] == 2)
        assert data["entries"] == {"AAPL": 101.5, "a/b c": 1.0}
        assert data["version"] >= 1
        assert data["as_of"].endswith("Z")
        assert data["staleness_s"] >= 0
        key = _json(await session.read_resource(STORE + "/a%2Fb%20c"))
        assert key["key"] == "a/b c"
        assert key["value"] == 1.0
        assert {"version", "as_of", "staleness_s", "event_time"} <= set(key)

        with pytest.raises(MCPError, match="has no key 'MSFT'; existing keys include"):
            await session.read_resource(STORE + "/MSFT")
        with pytest.raises(MCPError, match="no state store 'nope'"):
            await session.read_resource("rxagent://state/nope")
        with pytest.raises(MCPError, match="unknown resource"):
            await session.read_resource("file:///etc/passwd")

        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == {"place_order", "explode", "query_state", "changes_since"}
        schema = tools["place_order"].input_schema
        assert schema["required"] == ["symbol", "qty"]
        assert schema["properties"]["qty"]["exclusiveMinimum"] == 0

        ok = await session.call_tool("place_order", {"symbol": "AAPL", "qty": 3})
        assert not ok.is_error
        assert ok.structured_content == {"placed": "AAPL", "qty": 3}

        bad = await session.call_tool("place_order", {"symbol": "AAPL", "qty": -3})
        assert bad.is_error
        assert "invalid arguments for tool 'place_order'" in _text(bad)
        assert "qty" in _text(bad)
        failed = await session.call_tool("explode", {"reason": "on purpose"})
        assert failed.is_error
        assert _text(failed) == "RuntimeError: exploded: on purpose"
        unknown = await session.call_tool("nope", {})
        assert unknown.is_error
        assert "no tool named 'nope'" in _text(unknown)

        everything = await session.call_tool("changes_since", {"store": "prices", "version": 0})
        assert everything.structured_content is not None
        version = everything.structured_content["version"]
        assert everything.structured_content["changed"] == {"AAPL": 101.5, "a/b c": 1.0}
        await feed.send({"sym": "MSFT", "px": 410.0})
        await read_when(session, updates, STORE, lambda d: "MSFT" in d["entries"])
        newer = await session.call_tool("changes_since", {"store": "prices", "version": version})
        assert newer.structured_content is not None
        assert newer.structured_content["changed"] == {"MSFT": 410.0}
        bad_store = await session.call_tool("changes_since", {"store": "nope", "version": 0})
        assert bad_store.is_error
        assert "store" in _text(bad_store)

        query = await session.call_tool("query_state", {"store": "prices", "key": "AAPL"})
        assert query.structured_content is not None
        assert query.structured_content["entries"]["AAPL"]["value"] == 101.5

        status = _json(await session.read_resource("rxagent://status"))
        ticks = status["pipelines"]["ticks"]
        assert ticks["state"] == "running"
        assert ticks["stages"]["state:prices"]["in"] == 3
        assert "in_flight" in ticks["flow"]
        assert status["stores"]["prices"]["keys"] == 3
        assert status["tools"]["place_order"] == {
            "calls": 1, "ok": 1, "failed": 0, "invalid": 1, "running": 0
        }  # fmt: skip


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_resources_subscribe_flow(tmp_path: Path, feed: Feed) -> None:
    """2025-11-25: ``resources/subscribe``, then ``notifications/resources/updated``."""
    app = write_app(tmp_path, feed.url)
    updates = Updates()
    async with stdio_session(tmp_path, app, updates) as session:
        await session.initialize()
        await session.subscribe_resource(STORE)
        await session.subscribe_resource(AAPL)
        with pytest.raises(MCPError, match="no state store 'nope'"):
            await session.subscribe_resource("rxagent://state/nope")

        await feed.send({"sym": "AAPL", "px": 100.0})
        await updates.wait_for(STORE)
        await updates.wait_for(AAPL)
        assert _json(await session.read_resource(AAPL))["value"] == 100.0

        # a change of another key notifies the store, not AAPL
        await feed.send({"sym": "MSFT", "px": 400.0})
        await updates.wait_for(STORE, 2)
        assert _json(await session.read_resource(STORE))["entries"]["MSFT"] == 400.0
        assert updates.uris.count(AAPL) == 1

        await session.unsubscribe_resource(STORE)
        await feed.send({"sym": "AAPL", "px": 99.0})
        await updates.wait_for(AAPL, 2)
        assert updates.uris.count(STORE) == 2


async def test_subscriptions_listen_flow(tmp_path: Path, feed: Feed) -> None:
    """2026-07-28: ``server/discover``, then a ``subscriptions/listen`` stream."""
    app = write_app(tmp_path, feed.url)
    async with stdio_session(tmp_path, app) as session:
        discovered = await session.discover()
        assert session.protocol_version == "2026-07-28"
        assert discovered.capabilities.resources is not None
        assert discovered.capabilities.resources.subscribe is True
        async with listen(session, resource_subscriptions=[STORE, AAPL]) as subscription:
            assert subscription.honored.resource_subscriptions == [STORE, AAPL]
            await feed.send({"sym": "AAPL", "px": 123.0})
            seen: set[str] = set()
            async with asyncio.timeout(WAIT):
                async for event in subscription:
                    assert isinstance(event, ResourceUpdated)
                    seen.add(event.uri)
                    if seen == {STORE, AAPL}:
                        break
            assert _json(await session.read_resource(AAPL))["value"] == 123.0
            status = _json(await session.read_resource("rxagent://status"))
            assert status["notifications"]["subscribed"] == [STORE, AAPL]
        tools = await session.list_tools()
        assert "changes_since" in {t.name for t in tools.tools}
        result = await session.call_tool("place_order", {"symbol": "", "qty": 1})
        assert result.is_error
        assert "symbol" in _text(result)


def test_sigint_stops_a_stdio_server_whose_client_keeps_stdin_open(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM end the server (the pipelines drained) even while the client
    still holds stdin open: stdin is read on the loop, not in an uncancellable thread."""
    import signal
    import subprocess
    import time

    app = tmp_path / "app.yaml"
    app.write_text(
        "state: {prices: {}}\n"
        "pipelines:\n  p:\n    source: {memory: [{sym: A, px: 1}]}\n"
        "    steps: [{key_by: sym}]\n"
        "    sinks: [{state: {store: prices, value: px}}, {record: out.jsonl}]\n",
        encoding="utf-8",
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / "out.jsonl"
        out.unlink(missing_ok=True)
        process = subprocess.Popen(
            server_command(app),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=server_env(),
        )
        try:
            deadline = time.monotonic() + WAIT
            while not (out.exists() and len(out.read_bytes().splitlines()) >= 2):
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the server never ran its pipeline"
                time.sleep(0.05)
            process.send_signal(sig)
            code = process.wait(timeout=WAIT)
        finally:
            if process.poll() is None:
                process.kill()
            assert process.stdin is not None
            process.stdin.close()
        assert code == 0, process.stderr.read() if process.stderr else ""
        assert len(out.read_bytes().splitlines()) == 2  # header and the one event
