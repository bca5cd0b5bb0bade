"""The canary test: one secret in every secret-bearing option of one pipeline file, and
none of rxagent's outputs or files shows it (issue 12, "Secrets shown despite redaction").

The canary comes in three variants, each with a uuid of its own: a plain one, one with a
backslash and a quote (shown escaped by JSON and ``repr``, so matched escaped too), and
one longer than 80 characters (cut by every "..." shortening, so matched before it). Each
goes through ``${VAR}`` into WebSocket token, header and URL query options (against a real
WebSocket server on 127.0.0.1 that accepts the right token and refuses others), Kafka
SASL and SSL settings (a broker port on 127.0.0.1 where nothing listens), a TLS key
password (an encrypted client key) and an expression. Then ``rxagent validate``,
``graph``, ``run -vv`` and ``dry-run`` (text and JSON) run, the MCP status, resources and
a tool error are read (in process, with the canary as the HTTP bearer token), and the
dead-letter file and the recording are read: no uuid of a canary appears anywhere, and
those files are mode 0600.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

EXE = str(Path(sys.executable).with_name("rxagent"))
IDS = [uuid.uuid4().hex for _ in range(3)]
CANARY = f"CANARY-{IDS[0]}"
CANARY_BS = f'CANARY-{IDS[1]}\\back"slash'
CANARY_LONG = f"CANARY-{IDS[2]}-" + "L" * 80
ENV = {"CANARY": CANARY, "CANARY_BS": CANARY_BS, "CANARY_LONG": CANARY_LONG}


def _leaks(text: str) -> list[str]:
    return [i for i in IDS if i in text]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _key_files(directory: Path) -> tuple[Path, Path]:
    """A client certificate and its key encrypted with CANARY_BS."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    client = trustme.CA().issue_cert("client.example")
    cert = directory / "client.pem"
    client.cert_chain_pems[0].write_to_path(str(cert))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    encrypted = directory / "client.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(CANARY_BS.encode()),
        )
    )
    return cert, encrypted


PIPELINE = """\
settings:
  dead_letters: letters.jsonl
  drain_timeout: 2s
state:
  seen: {{description: values that passed}}
tools:
  ship: rxagent.examples:ship_order
pipelines:
  feed:
    source:
      websocket:
        url: "ws://127.0.0.1:{port}/feed?symbols=abc&token=${{CANARY_LONG}}"
        token: "${{CANARY}}"
        headers: {{X-Api-Key: "${{CANARY_BS}}", X-Note: "${{CANARY_LONG}}"}}
        subscribe: [{{op: subscribe, auth: "${{CANARY}}", long: "${{CANARY_LONG}}"}}]
    steps:
      - filter: >-
          value.n / value.zero > 0 or value.s == '${{CANARY}}' or value.s == '${{CANARY_LONG}}'

    sinks:
      - record: {{path: recording.jsonl}}
      - state: {{store: seen, key: s, value: n}}
      - tool: {{tool: ship, args: {{order_id: "'${{CANARY}}'", sku: "'${{CANARY_LONG}}'", qty: n}}}}
  refused:
    source:
      websocket:
        url: "ws://127.0.0.1:{port}/refuse?access_token=${{CANARY}}&sig=${{CANARY_LONG}}"
        headers: {{Authorization: "Bearer ${{CANARY_BS}}"}}
        backoff: {{initial: 0.2s, max_delay: 0.5s}}
    sinks:
      - websocket:
          url: "wss://127.0.0.1:{dead_port}/out?token=${{CANARY_LONG}}"
          cert_file: client.pem
          key_file: client.key
          key_password: "${{CANARY_BS}}"
  orders:
    source:
      kafka:
        topics: [orders]
        bootstrap_servers: "127.0.0.1:{dead_port}"
        group_id: canary
        config:
          security.protocol: SASL_PLAINTEXT
          sasl.mechanisms: PLAIN
          sasl.username: canary-user
          sasl.password: "${{CANARY}}"
          sasl.oauthbearer.config: "principal=${{CANARY_BS}}"
          ssl.key.password: "${{CANARY_BS}}"
          ssl.keystore.password: "${{CANARY_LONG}}"
          ssl.key.pem: "${{CANARY_LONG}}"
    sinks:
      - log: info
"""


@pytest.fixture
async def feed() -> AsyncIterator[int]:
    """A WebSocket server on 127.0.0.1: ``/feed`` with ``Authorization: Bearer CANARY``
    gets, after its subscribe message, one value passing the filter and one making it
    raise (a dead letter); anything else is refused with 401."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        if (
            request.path.startswith("/feed")
            and request.headers.get("Authorization") == f"Bearer {CANARY}"
        ):
            return None
        return Response(401, "Unauthorized", Headers(), b"no\n")

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the subscribe message
        await ws.send(json.dumps({"s": "x", "n": 1, "zero": 1}))
        await ws.send(json.dumps({"s": "y", "n": 1, "zero": 0}))  # ZeroDivisionError
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=check) as server:
        yield server.sockets[0].getsockname()[1]


async def _rxagent(*args: str, cwd: Path, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        EXE,
        *args,
        cwd=cwd,
        env={**os.environ, **ENV, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


@pytest.mark.slow
async def test_no_output_or_file_shows_the_canary(tmp_path: Path, feed: int) -> None:
    _key_files(tmp_path)
    path = tmp_path / "canary.yaml"
    path.write_text(PIPELINE.format(port=feed, dead_port=_free_port()), encoding="utf-8")
    bad = tmp_path / "bad.yaml"  # secrets where a duration belongs: shown in the errors
    bad.write_text(
        "pipelines:\n  p:\n    source:\n      websocket:\n        url: ws://127.0.0.1:1/\n"
        '        ping_interval: "${CANARY_LONG}"\n        ping_timeout: "${CANARY_BS}"\n'
        '        open_timeout: "x${CANARY}"\n'
        "    sinks: [{log: info}]\n",
        encoding="utf-8",
    )
    outputs: dict[str, str] = {}

    for name, args in {
        "validate bad": ["validate", str(bad)],
        "run bad": ["run", str(bad)],
        "validate": ["validate", str(path)],
        "graph": ["graph", str(path)],
        "run": ["-vv", "run", str(path), "--duration", "3", "--no-live"],
        "dry-run": ["dry-run", str(path), "--duration", "2"],
        "dry-run --json": ["dry-run", str(path), "--duration", "2", "--json"],
    }.items():
        _code, outputs[name] = await _rxagent(*args, cwd=tmp_path)

    # the runs did what the canary needs: connected with the token, refused, dead-lettered
    assert "ping_interval" in outputs["validate bad"], outputs["validate bad"]
    run = outputs["run"]
    assert "subscribe" in run, run[-3000:]
    assert "401" in run, run[-3000:]
    assert "division by zero" in run, run[-3000:]

    letters = tmp_path / "letters.jsonl"
    recording = tmp_path / "recording.jsonl"
    modes = {}
    for file in (letters, recording):
        outputs[file.name] = file.read_text(encoding="utf-8")
        mode = stat.S_IMODE(file.stat().st_mode)
        if mode != 0o600:
            modes[file.name] = oct(mode)
    assert "division by zero" in outputs["letters.jsonl"]
    assert outputs["recording.jsonl"].strip()

    outputs.update(await _mcp_outputs(path))

    leaked = [name for name, text in outputs.items() if _leaks(text)]
    lines = [
        f"{name}: {line[:300]}"
        for name in leaked
        for line in outputs[name].splitlines()
        if _leaks(line)
    ]
    assert not modes, f"files not 0600: {modes}"
    assert not leaked, f"a canary shown in {leaked}:\n" + "\n".join(lines)


async def _mcp_outputs(path: Path) -> dict[str, str]:
    """The MCP status and resources and a tool's error, in process, while the app runs."""
    from rxagent.config import load
    from rxagent.mcp.server import RxAgentMCP
    from rxagent.tools import Tool

    def leaky(text: str) -> str:
        raise ValueError(f"cannot use {text}")

    built = load(path, environ=ENV).build(pipelines=["feed", "refused"])
    out: dict[str, str] = {}
    async with RxAgentMCP(
        stores=built.stores,
        tools=[*built.tools, Tool(leaky)],
        app=built.app,
        dead_letters=built.dead_letters,
    ) as mcp:
        mcp.http_app(token=CANARY_LONG)
        await built.app.start()
        try:
            for _ in range(100):  # until the dead letter and a refusal are in the status
                status = mcp.read("rxagent://status")
                if "division by zero" in status and "401" in status:
                    break
                await asyncio.sleep(0.05)
            out["mcp status"] = mcp.read("rxagent://status")
            out["mcp store"] = mcp.read("rxagent://state/seen")
            result = await mcp.call_tool("leaky", {"text": f"{CANARY} {CANARY_BS} {CANARY_LONG}"})
            out["mcp tool error"] = json.dumps(result.model_dump(mode="json"))
        finally:
            await built.app.drain(2.0)
    assert "division by zero" in out["mcp status"], out["mcp status"]
    return out


def test_secrets_are_matched_escaped_and_before_truncation() -> None:
    from rxagent import _secrets

    ident = uuid.uuid4().hex
    backslash, long = f'S-{ident}\\back"slash', f"S-{ident}-" + "L" * 80
    owner = type("Owner", (), {})()
    _secrets.register(backslash, long, owner=owner)
    for text in (
        backslash,
        json.dumps(backslash),
        json.dumps(json.dumps(backslash)),
        json.dumps(backslash, ensure_ascii=False),
        repr(backslash),
        repr({"k": long}),
        f"ws://h/p?a=1&token={long}",
    ):
        assert ident not in _secrets.redact(text), text
    assert _secrets.redact(f"x {long} y") == "x *** y"
    assert _secrets.redact("ws://u:pw12@h/p?token=abc&n=1") == "ws://u:***@h/p?token=***&n=1"
    del owner  # forgotten with its owner
    gc.collect()
    assert _secrets.redact(f"x {long} y") == f"x {long} y"


@pytest.mark.parametrize(
    "name",
    [
        "sasl.password",
        "sasl.jaas.config",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "ssl.key.password",
        "ssl.keystore.password",
        "Authorization",
        "X-Api-Key",
        "access_token",
    ],
)
def test_credential_settings_are_hidden_by_name(name: str) -> None:
    from rxagent.kafka import redact

    assert redact({name: "opaque-value", "bootstrap.servers": "127.0.0.1:1"}) == {
        name: "***",
        "bootstrap.servers": "127.0.0.1:1",
    }


def test_state_files_are_created_owner_only(tmp_path: Path) -> None:
    from rxagent.state.durable import SQLiteBackend, codec_for, store_path

    path = store_path(tmp_path / "state", "orders")
    backend = SQLiteBackend(path, store="orders", codec=codec_for("json"))
    try:
        backend.open()
    finally:
        backend.close()
    created = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    assert created
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in created} == {
        p.name: oct(0o600) for p in created
    }
