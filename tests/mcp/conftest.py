"""Fixtures of the MCP tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mcp_helpers import Feed
from websockets.asyncio.server import serve


@pytest.fixture
async def feed() -> AsyncIterator[Feed]:
    """A WebSocket feed on 127.0.0.1 that the test drives."""
    result = Feed()
    async with serve(result._handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        result.url = f"ws://127.0.0.1:{port}"
        yield result
