"""Hostile MCP clients and careless operators (issue 12): non-loopback binds, the printed
address, subscription caps, NaN and infinity as tool arguments. Real servers on 127.0.0.1
(``rxagent mcp`` and ``python -m rxagent.mcp`` as subprocesses), the SDK's client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import listen
from mcp.shared.exceptions import MCPError
from mcp_helpers import WAIT, server_env, serving
from pydantic import BaseModel, ConfigDict

from rxagent.exceptions import ConfigurationError, ToolArgumentsError
from rxagent.mcp import RxAgentMCP
from rxagent.tools import Tool, tool

TOKEN = "hostile-token-7c1e"
EXE = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"
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
_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "Authorization": f"Bearer {TOKEN}",
}


def _app(tmp_path: Path) -> Path:
    """A pipeline file with a store fed from memory and a tool taking a float."""
    (tmp_path / "hostile_tools.py").write_text(
        "def set_price(symbol: str, price: float) -> dict:\n"
        "    '''Set a price.'''\n"
        "    return {'symbol': symbol, 'price': price}\n",
        encoding="utf-8",
    )
    path = tmp_path / "app.yaml"
    path.write_text(
        """\
version: 1
state:
  prices: {description: last price per symbol}
tools:
  set_price: hostile_tools:set_price
pipelines:
  ticks:
    source: {memory: {items: [{sym: AAPL, px: 1.5}, {sym: MSFT, px: 2.5}]}}
    sinks:
      - state: {store: prices, key: sym, value: px}
""",
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def _serve(command: list[str], tmp_path: Path) -> AsyncIterator[str]:
    """Start a server subprocess (the test's tools importable); yield its URL."""
    env = server_env(TEST_MCP_TOKEN=TOKEN)
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    async with serving(command, env) as url:
        yield url


async def _run(command: list[str], tmp_path: Path) -> tuple[int, str]:
    env = server_env(TEST_MCP_TOKEN=TOKEN)
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT):
        _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


def _local(url: str) -> str:
    """The URL of a server bound to 0.0.0.0, reached on 127.0.0.1."""
    return url.replace("://0.0.0.0:", "://127.0.0.1:")


@contextlib.asynccontextmanager
async def _session(url: str) -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(WAIT, read=300)
    )
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, read_timeout_seconds=WAIT) as session,
    ):
        yield session


# -- binding a non-loopback address -------------------------------------------------------


@pytest.mark.parametrize("entry", ["rxagent", "module"])
async def test_non_loopback_bind_without_allowed_hosts_refuses_to_start(
    tmp_path: Path, entry: str
) -> None:
    app = _app(tmp_path)
    args = [str(app), "--http", "--host", "0.0.0.0", "--port", "0", "--token-env", "TEST_MCP_TOKEN"]
    command = (
        [EXE, "mcp", *args] if entry == "rxagent" else [sys.executable, "-m", "rxagent.mcp", *args]
    )
    code, err = await _run(command, tmp_path)
    assert code in (1, 2), err
    assert "'0.0.0.0'" in err
    assert "not a loopback address" in err
    assert "--allow-host" in err
    assert "listening on" not in err


async def test_non_loopback_bind_checks_host_and_origin(tmp_path: Path) -> None:
    """Bound to 0.0.0.0 the Host and Origin checks stay on: only the allowed names pass."""
    app = _app(tmp_path)
    command = [
        EXE, "mcp", str(app), "--http", "--host", "0.0.0.0", "--port", "0",
        "--token-env", "TEST_MCP_TOKEN",
        "--allow-host", "agents.example.test:*", "--allow-origin", "https://ui.example.test",
    ]  # fmt: skip
    async with _serve(command, tmp_path) as url:
        assert url.startswith("http://0.0.0.0:")
        assert not url.startswith("http://0.0.0.0:0/")
        port = url.split(":")[2].split("/")[0]
        target = _local(url)
        async with httpx2.AsyncClient(timeout=WAIT) as client:
            evil = await client.post(
                target,
                json=_INIT,
                headers={**_HEADERS, "Host": "evil.example:1", "Origin": "http://evil.example"},
            )
            assert evil.status_code == 421
            local = await client.post(target, json=_INIT, headers=_HEADERS)  # Host 127.0.0.1:port
            assert local.status_code == 421  # not named: bound to 0.0.0.0 only names pass
            named = {**_HEADERS, "Host": f"agents.example.test:{port}"}
            bad_origin = await client.post(
                target, json=_INIT, headers={**named, "Origin": "http://evil.example"}
            )
            assert bad_origin.status_code == 403
            ok = await client.post(target, json=_INIT, headers=named)
            assert ok.status_code == 200
            ok = await client.post(
                target, json=_INIT, headers={**named, "Origin": "https://ui.example.test"}
            )
            assert ok.status_code == 200


def test_transport_security_loopback_and_refusals() -> None:
    from rxagent.mcp.server import transport_security

    local = transport_security("127.0.0.1")
    assert local.enable_dns_rebinding_protection
    assert "127.0.0.1:*" in local.allowed_hosts
    other_loopback = transport_security("127.0.0.2", ["extra.test:*"])
    assert other_loopback.enable_dns_rebinding_protection
    assert {"127.0.0.2:*", "extra.test:*"} <= set(other_loopback.allowed_hosts)
    assert "[::1]:*" in transport_security("::1").allowed_hosts
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.test"):
        with pytest.raises(ConfigurationError, match="not a loopback address"):
            transport_security(host)
    with pytest.raises(ConfigurationError, match="not a value clients send"):
        transport_security("0.0.0.0", ["*"])


# -- the printed address ------------------------------------------------------------------


async def test_rxagent_mcp_port_0_prints_the_port_it_picked(tmp_path: Path) -> None:
    app = _app(tmp_path)
    command = [EXE, "mcp", str(app), "--http", "--port", "0", "--token-env", "TEST_MCP_TOKEN"]
    async with _serve(command, tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/mcp")
        assert int(url.split(":")[2].split("/")[0]) > 0
        async with httpx2.AsyncClient(timeout=WAIT) as client:
            assert (await client.post(url, json=_INIT, headers=_HEADERS)).status_code == 200


# -- subscriptions --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_subscriptions_capped_per_session_and_unknown_refused(tmp_path: Path) -> None:
    app = _app(tmp_path)
    command = [EXE, "mcp", str(app), "--http", "--port", "0", "--token-env", "TEST_MCP_TOKEN"]
    async with _serve(command, tmp_path) as url, _session(url) as session:
        await session.initialize()
        for bad in ("rxagent://state/nope", "rxagent://elsewhere", "file:///etc/passwd"):
            with pytest.raises(MCPError, match=r"unknown|no state store"):
                await session.subscribe_resource(bad)
        for i in range(100):  # the default cap: keys that may appear later count too
            await session.subscribe_resource(f"rxagent://state/prices/k{i}")
        await session.subscribe_resource("rxagent://state/prices/k0")  # again: not a new one
        with pytest.raises(MCPError, match=r"more than the 100 allowed per session"):
            await session.subscribe_resource("rxagent://state/prices/k100")
        await session.unsubscribe_resource("rxagent://state/prices/k0")
        await session.subscribe_resource("rxagent://state/prices")  # room again
        status = json.loads(_text(await session.read_resource("rxagent://status")))
        assert status["notifications"]["subscribed_count"] == 100
        assert len(status["notifications"]["subscribed"]) <= 100
        # another session has a cap of its own
        async with _session(url) as other:
            await other.initialize()
            await other.subscribe_resource("rxagent://state/prices/k100")


async def test_listen_stream_capped_and_unknown_refused(tmp_path: Path) -> None:
    app = _app(tmp_path)
    command = [EXE, "mcp", str(app), "--http", "--port", "0", "--token-env", "TEST_MCP_TOKEN"]
    async with _serve(command, tmp_path) as url, _session(url) as session:
        await session.discover()
        with pytest.raises(MCPError, match="unknown resource"):
            async with listen(session, resource_subscriptions=["rxagent://nothing"]):
                pass
        with pytest.raises(MCPError, match="no state store 'nope'"):
            async with listen(session, resource_subscriptions=["rxagent://state/nope"]):
                pass
        many = [f"rxagent://state/prices/k{i}" for i in range(101)]
        with pytest.raises(MCPError, match=r"101 resources, more than the 100 allowed"):
            async with listen(session, resource_subscriptions=many):
                pass
        status = json.loads(_text(await session.read_resource("rxagent://status")))
        assert status["notifications"]["subscribed_count"] == 0


def test_max_subscriptions_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_subscriptions"):
        RxAgentMCP(max_subscriptions=0)


def _text(result: types.ReadResourceResult) -> str:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return content.text


# -- NaN and infinity as tool arguments -----------------------------------------------------


async def test_http_tool_call_refuses_infinity(tmp_path: Path) -> None:
    """``1e999`` is valid JSON and parses as infinity: refused as a tool error."""
    app = _app(tmp_path)
    command = [EXE, "mcp", str(app), "--http", "--port", "0", "--token-env", "TEST_MCP_TOKEN"]
    async with _serve(command, tmp_path) as url, httpx2.AsyncClient(timeout=WAIT) as client:
        init = await client.post(url, json=_INIT, headers=_HEADERS)
        headers = {**_HEADERS, "mcp-session-id": init.headers.get("mcp-session-id", "")}
        headers = {k: v for k, v in headers.items() if v}
        await client.post(
            url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        for number in ("1e999", "-1e999"):
            body = (
                '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"set_price",'
                f'"arguments":{{"symbol":"AAPL","price":{number}}}}}}}'
            )
            response = await client.post(url, content=body, headers=headers)
            assert response.status_code == 200, response.text
            result = _rpc_result(response)
            assert result["isError"] is True, result
            text = result["content"][0]["text"]
            assert "price: " in text
            assert "finite number" in text
        ok = (
            '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"set_price",'
            '"arguments":{"symbol":"AAPL","price":1e3}}}'
        )
        result = _rpc_result(await client.post(url, content=ok, headers=headers))
        assert not result.get("isError"), result
        assert result["structuredContent"] == {"symbol": "AAPL", "price": 1000.0}


def _rpc_result(response: Any) -> dict[str, Any]:
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(
            line[5:].strip()
            for line in text.splitlines()
            if line.startswith("data:") and "{" in line
        )
    message = json.loads(text)
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    return result


class _Nested(BaseModel):
    values: list[float]


class _Args(BaseModel):
    price: float
    series: dict[str, float] = {}
    nested: _Nested | None = None
    anything: Any = None


class _OptIn(BaseModel):
    model_config = ConfigDict(allow_inf_nan=True)
    price: float


async def _echo(args: _Args) -> str:
    return "ok"


async def _echo_opt(args: _OptIn) -> float:
    return args.price


@pytest.mark.parametrize(
    "args",
    [
        {"price": math.nan},
        {"price": math.inf},
        {"price": 1.0, "series": {"a": -math.inf}},
        {"price": 1.0, "nested": {"values": [1.0, math.nan]}},
        {"price": 1.0, "anything": [{"x": math.inf}]},
        '{"price": NaN}',
        '{"price": 1e999}',
        '{"price": "Infinity"}',
    ],
)
def test_tool_refuses_nan_and_infinity(args: Any) -> None:
    checked = Tool(_echo, args_model=_Args)
    with pytest.raises(ToolArgumentsError, match="finite number"):
        checked.validate(args)
    assert checked.stats.invalid == 1


def test_signature_tools_refuse_nan_and_tools_may_opt_in() -> None:
    @tool
    def scale(factor: float, by: list[float]) -> float:
        """Scale."""
        return factor

    with pytest.raises(ToolArgumentsError, match=r"factor: .*finite number"):
        scale.validate({"factor": math.nan, "by": []})
    with pytest.raises(ToolArgumentsError, match=r"by\.1: .*finite number"):
        scale.validate({"factor": 1.0, "by": [1.0, math.inf]})
    assert scale.validate({"factor": 2.0, "by": [1.0]}).model_dump() == {
        "factor": 2.0,
        "by": [1.0],
    }

    @tool(allow_inf_nan=True)
    def loose(factor: float, extra: Any = None) -> float:
        """Loose."""
        return factor

    assert math.isnan(loose.validate({"factor": math.nan}).model_dump()["factor"])
    assert loose.validate({"factor": 1.0, "extra": [math.inf]}).model_dump()["extra"] == [math.inf]
    opted = Tool(_echo_opt, args_model=_OptIn)
    assert opted.allow_inf_nan
    assert math.isinf(opted.validate({"price": math.inf}).model_dump()["price"])
