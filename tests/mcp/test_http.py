"""The MCP server over streamable HTTP on 127.0.0.1 with a bearer token, with the
official client (``mcp`` SDK ``ClientSession``) against a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
import pytest
import pytest_asyncio
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated, listen
from mcp_helpers import WAIT, Feed, http_server, write_app
from websockets.asyncio.server import serve

TOKEN = "test-token-3f9a"
STORE = "rxagent://state/prices"
AAPL = "rxagent://state/prices/AAPL"

_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


# one server (and feed) for the module: starting a server costs a second or two
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_feed() -> AsyncIterator[Feed]:
    result = Feed()
    async with serve(result._handler, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        result.url = f"ws://127.0.0.1:{port}"
        yield result


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory, http_feed: Feed) -> AsyncIterator[str]:
    app = write_app(tmp_path_factory.mktemp("http"), http_feed.url)
    async with http_server(app, TOKEN, "--min-interval", "0.05") as url:
        yield url


@contextlib.asynccontextmanager
async def http_session(url: str, handler: Any = None) -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(WAIT, read=300)
    )
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, message_handler=handler, read_timeout_seconds=WAIT) as session,
    ):
        yield session


def _json(result: types.ReadResourceResult) -> Any:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return json.loads(content.text)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
    ids=["missing", "wrong", "longer", "no-scheme", "basic"],
)
async def test_token_refused(server: str, headers: dict[str, str]) -> None:
    async with httpx2.AsyncClient(timeout=WAIT) as client:
        response = await client.post(server, json=_INIT, headers={**_HEADERS, **headers})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get(server, headers=headers)).status_code == 401


async def test_token_accepted(server: str) -> None:
    async with httpx2.AsyncClient(timeout=WAIT) as client:
        headers = {**_HEADERS, "Authorization": f"Bearer {TOKEN}"}
        response = await client.post(server, json=_INIT, headers=headers)
        assert response.status_code == 200


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_http_subscribe_read_and_tools(server: str, http_feed: Feed) -> None:
    """2025-11-25 over HTTP: subscribe, updates as data flows, tools, status."""
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def handler(message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.put_nowait(message.params.uri)

    async with http_session(server, handler) as session:
        init = await session.initialize()
        assert init.protocol_version == "2025-11-25"
        assert {r.uri for r in (await session.list_resources()).resources} == {
            "rxagent://status",
            STORE,
        }
        await session.subscribe_resource(AAPL)
        await http_feed.send({"sym": "AAPL", "px": 7.5})
        async with asyncio.timeout(WAIT):
            assert await updated.get() == AAPL
        assert _json(await session.read_resource(AAPL))["value"] == 7.5

        ok = await session.call_tool("place_order", {"symbol": "MSFT", "qty": 2})
        assert ok.structured_content == {"placed": "MSFT", "qty": 2}
        bad = await session.call_tool("place_order", {"symbol": "MSFT"})
        assert bad.is_error
        content = bad.content[0]
        assert isinstance(content, types.TextContent)
        assert "qty" in content.text

        status = _json(await session.read_resource("rxagent://status"))
        assert status["pipelines"]["ticks"]["stages"]["state:prices"]["in"] >= 1
        assert status["notifications"]["subscribed"] == [AAPL]


async def test_http_subscriptions_listen(server: str, http_feed: Feed) -> None:
    """2026-07-28 over HTTP: a ``subscriptions/listen`` stream."""
    async with http_session(server) as session:
        await session.discover()
        assert session.protocol_version == "2026-07-28"
        async with listen(session, resource_subscriptions=[STORE]) as subscription:
            await http_feed.send({"sym": "IBM", "px": 150.0})
            async with asyncio.timeout(WAIT):
                event = await anext(subscription)
            assert event == ResourceUpdated(uri=STORE)
        data = _json(await session.read_resource(STORE))
        assert data["entries"]["IBM"] == 150.0
        since = data["version"] - 1
        result = await session.call_tool("changes_since", {"store": "prices", "version": since})
        assert result.structured_content is not None
        assert result.structured_content["changed"] == {"IBM": 150.0}
