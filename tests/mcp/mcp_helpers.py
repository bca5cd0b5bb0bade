"""Helpers of the MCP tests: a WebSocket feed the test drives, pipeline files,
and the server run as a real subprocess (``python -m rxagent.mcp``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection

HERE = Path(__file__).parent
#: Generous bound of any single wait: the machine is shared and may be slow.
WAIT = 15.0


class Feed:
    """A WebSocket server on 127.0.0.1 the pipeline under test reads from."""

    def __init__(self) -> None:
        self.url = ""
        self._clients: set[ServerConnection] = set()
        self._connected = asyncio.Event()

    async def _handler(self, ws: ServerConnection) -> None:
        self._clients.add(ws)
        self._connected.set()
        try:
            await ws.wait_closed()
        finally:
            self._clients.discard(ws)

    async def send(self, *values: Any) -> None:
        """Send each value as a JSON frame to the connected pipeline (waits for it)."""
        async with asyncio.timeout(WAIT):
            await self._connected.wait()
        for ws in list(self._clients):
            for value in values:
                await ws.send(json.dumps(value))


def write_app(tmp_path: Path, feed_url: str) -> Path:
    """A pipeline file: the feed -> state store ``prices`` (key sym, value px), two tools."""
    path = tmp_path / "app.yaml"
    path.write_text(
        f"""\
version: 1
state:
  prices: {{description: last price per symbol}}
tools:
  place_order: mcp_test_tools:place_order
  explode: mcp_test_tools:explode
pipelines:
  ticks:
    source: {{websocket: {{url: "{feed_url}"}}}}
    sinks:
      - state: {{store: prices, key: sym, value: px}}
""",
        encoding="utf-8",
    )
    return path


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server subprocess: the test tools importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def server_command(app: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "rxagent.mcp", str(app), *args]


@contextlib.asynccontextmanager
async def http_server(app: Path, token: str, *args: str) -> AsyncIterator[str]:
    """``python -m rxagent.mcp APP --http --port 0``; yields the URL it prints."""
    command = server_command(app, "--http", "--port", "0", "--token-env", "TEST_MCP_TOKEN", *args)
    async with serving(command, server_env(TEST_MCP_TOKEN=token)) as url:
        yield url


@contextlib.asynccontextmanager
async def serving(command: list[str], env: dict[str, str]) -> AsyncIterator[str]:
    """Start a server subprocess; yield the URL it prints on stderr ("listening on
    URL"); terminate it at the end."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    drain: asyncio.Future[None] | None = None
    try:
        async with asyncio.timeout(WAIT):
            while True:
                raw = await process.stderr.readline()
                if not raw:
                    raise AssertionError("the server exited:\n" + "".join(lines))
                line = raw.decode()
                lines.append(line)
                if "listening on " in line:
                    url = line.rsplit("listening on ", 1)[1].strip()
                    break
        drain = asyncio.ensure_future(_drain(process.stderr))
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(WAIT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
