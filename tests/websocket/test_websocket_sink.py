"""WebSocketSink against real ``websockets`` servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _helpers import until
from websockets.asyncio.server import ServerConnection, serve

from rxagent import ConfigurationError, Pipeline, PipelineError, sources
from rxagent.backoff import Backoff
from rxagent.sinks import MemoryDeadLetters
from rxagent.websocket.sink import WebSocketSink

Handler = Callable[[ServerConnection], Awaitable[None]]
FAST = Backoff(initial=0.005, factor=1.0, max_delay=0.005, jitter="none", max_attempts=None)

server_log = logging.getLogger("tests.wsserver")
server_log.setLevel(logging.WARNING)


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, logger=server_log) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/out"


async def test_every_event_is_published_and_ends_when_sent() -> None:
    received: list[Any] = []
    close_codes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(json.loads(message))
        close_codes.append(ws.close_code)

    async with serving(handler) as url:
        sink = WebSocketSink(url)
        events: list[str] = []
        sink.lifecycle.subscribe(lambda e: events.append(e.kind))
        status = await Pipeline("out", sources.memory(range(500), batch_size=64)).to(sink).run()
        await asyncio.sleep(0.05)
    assert received == list(range(500))
    assert status.completed
    assert status.flow["in_flight"] == 0
    assert status.sinks["websocket"]["sent"] == 500
    assert close_codes == [1000]
    assert events == ["connecting", "opened"]


async def test_a_connection_closed_by_the_server_is_reopened_and_nothing_is_lost() -> None:
    received: list[int] = []
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        async for message in ws:
            received.append(json.loads(message)["n"])

    async with serving(handler) as url:
        sink = WebSocketSink(url, backoff=FAST)
        events: list[str] = []
        sink.lifecycle.subscribe(lambda e: events.append(e.kind))
        source = sources.push()
        pipeline = Pipeline("out", source).to(sink)
        await pipeline.start()
        for round_ in range(3):
            for i in range(50):
                source.push({"n": round_ * 50 + i})
            await until(lambda r=round_: len(received) == (r + 1) * 50)
            await connections[-1].close(1001, "restarting")
            await until(lambda r=round_: events.count("opened") == r + 2)
        source.complete()
        status = await pipeline.wait()
    assert received == list(range(150))
    assert len(connections) == 4
    assert events[:5] == ["connecting", "opened", "closed", "reconnect_scheduled", "connecting"]
    assert status.completed
    assert sink.reconnects == 3


async def test_encoders_and_bad_values() -> None:
    received: list[str | bytes] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)

    def encode(value: Any) -> bytes:
        if value == 2:
            raise ValueError("two is not welcome")
        return f"v{value}".encode()

    letters = MemoryDeadLetters()
    async with serving(handler) as url:
        await (
            Pipeline("out", sources.memory([1, 2, 3]), dead_letters=letters)
            .to(WebSocketSink(url, encode=encode))
            .run()
        )
        await Pipeline("text", sources.memory(["a", 5])).to(WebSocketSink(url, encode="text")).run()
        await asyncio.sleep(0.05)
    assert received == [b"v1", b"v3", "a", "5"]
    assert [d.event.value for d in letters.letters] == [2]
    assert "two is not welcome" in letters.letters[0].message
    with pytest.raises(ConfigurationError):
        WebSocketSink("http://example.invalid")


async def test_gives_up_after_the_backoff_and_dead_letters_what_is_left() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1011, "down")

    letters = MemoryDeadLetters()
    async with serving(handler) as url:
        sink = WebSocketSink(
            url, backoff=Backoff(initial=0.01, jitter="none", max_attempts=3), stable_after=10
        )
        pipeline = Pipeline("out", sources.memory(range(5)), dead_letters=letters).to(sink)
        with pytest.raises(PipelineError, match="gave up reconnecting"):
            await pipeline.run(timeout=5)
    assert len(letters.letters) == 5
    assert all(d.error_type == "WebSocketError" for d in letters.letters)


# -- TLS from files ---------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Any, dict[str, Path]]:
    """A throwaway CA; the files of its certificate and of a client certificate and key."""
    import trustme  # the dev extra; a hard import so TLS is never silently untested

    ca = trustme.CA()
    client = ca.issue_cert("client.example")
    files = {
        "ca_file": tmp_path / "ca.pem",
        "cert_file": tmp_path / "client.pem",
        "key_file": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca_file"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert_file"]))
    client.private_key_pem.write_to_path(str(files["key_file"]))
    return ca, files


async def test_publishes_over_mutual_tls_and_fails_without_a_client_certificate(
    pki: tuple[Any, dict[str, Path]],
) -> None:
    ca, files = pki
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: a client certificate is required
    ca.configure_trust(server_ctx)
    received: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(json.loads(message))

    async with serve(handler, "127.0.0.1", 0, logger=server_log, ssl=server_ctx) as server:
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/out"
        sink = WebSocketSink(url, **files)
        assert sink.describe()["tls"] == {
            "context": "files",
            "verify": True,
            **{name: str(path) for name, path in files.items()},
        }
        await Pipeline("out", sources.memory([{"n": 1}, {"n": 2}])).to(sink).run()
        await until(lambda: len(received) == 2)

        # only the CA: the server refuses the connection; the sink retries, then gives up
        letters = MemoryDeadLetters()
        lonely = WebSocketSink(
            url,
            ca_file=files["ca_file"],
            backoff=Backoff(initial=0.01, jitter="none", max_attempts=2),
        )
        kinds: list[str] = []
        lonely.lifecycle.subscribe(lambda e: kinds.append(e.kind))
        pipeline = Pipeline("lonely", sources.memory([{"n": 3}]), dead_letters=letters)
        with pytest.raises(PipelineError, match="gave up reconnecting"):
            await pipeline.to(lonely).run(timeout=5)
    assert received == [{"n": 1}, {"n": 2}]
    assert "opened" not in kinds
    assert kinds[:3] == ["connecting", "error", "reconnect_scheduled"]
    assert [d.event.value for d in letters.letters] == [{"n": 3}]


def test_bad_tls_options_are_configuration_errors(
    pki: tuple[Any, dict[str, Path]], tmp_path: Path
) -> None:
    _, files = pki
    url = "wss://127.0.0.1:1/out"
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match=r"websocket sink 'out': ca_file '.*missing"):
        WebSocketSink(url, name="out", ca_file=missing)
    with pytest.raises(ConfigurationError, match=r"cert_file '.*missing\.pem' does not exist"):
        WebSocketSink(url, cert_file=missing, key_file=files["key_file"])
    with pytest.raises(ConfigurationError, match=r"not both"):
        WebSocketSink(url, ssl=ssl.create_default_context(), ca_file=files["ca_file"])
    with pytest.raises(ConfigurationError, match=r"ca_file needs a wss:// url"):
        WebSocketSink("ws://127.0.0.1:1/out", ca_file=files["ca_file"])
