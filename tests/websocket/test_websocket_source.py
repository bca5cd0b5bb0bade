"""WebSocketSource against real ``websockets`` servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _helpers import until
from pydantic import BaseModel
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rxagent import ConfigurationError, Pipeline, PipelineError
from rxagent import operators as ops
from rxagent.backoff import Backoff
from rxagent.events import Batch, Event
from rxagent.operators.circuit import CircuitBreaker
from rxagent.sinks import ListSink, MemoryDeadLetters, Sink
from rxagent.sources import Overflow
from rxagent.websocket.source import WebSocketError, WebSocketLifecycle, WebSocketSource

Handler = Callable[[ServerConnection], Awaitable[None]]

#: Reconnect at once and forever: for tests about what arrives, not when.
FAST = Backoff(initial=0.005, factor=1.0, max_delay=0.005, jitter="none", max_attempts=None)

# the test servers log through their own logger, kept quiet: only the client's logs matter
server_log = logging.getLogger("tests.wsserver")
server_log.setLevel(logging.WARNING)


@asynccontextmanager
async def serving(handler: Handler, **options: Any) -> AsyncIterator[tuple[str, Server]]:
    """A websockets server on a free port of 127.0.0.1; yields its ws:// url and itself."""
    options.setdefault("logger", server_log)
    async with serve(handler, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        scheme = "wss" if options.get("ssl") else "ws"
        yield f"{scheme}://127.0.0.1:{port}/feed", server


def seq_feed(
    total: int, *, drop_every: int | None = None, pad: int = 0
) -> tuple[Handler, dict[str, Any]]:
    """A feed of ``{"seq": i}`` for i < total, resuming after the ``from`` of the
    client's subscription; closes the connection every ``drop_every`` messages;
    ``pad`` makes each message that many bytes longer."""
    stats: dict[str, Any] = {"connections": 0, "subscriptions": []}

    async def handler(ws: ServerConnection) -> None:
        stats["connections"] += 1
        subscription = json.loads(await ws.recv())
        stats["subscriptions"].append(subscription)
        last = subscription.get("from")
        start = 0 if last is None else last + 1
        for sent, i in enumerate(range(start, total), 1):
            await ws.send(json.dumps({"seq": i, "pad": "x" * pad} if pad else {"seq": i}))
            if drop_every is not None and sent == drop_every:
                await ws.close(1001, "going away")
                return
        await ws.wait_closed()

    return handler, stats


def resume(last_seq: Any) -> list[dict[str, Any]]:
    return [{"op": "subscribe", "from": last_seq}]


def recorder(source: WebSocketSource) -> list[WebSocketLifecycle]:
    events: list[WebSocketLifecycle] = []
    source.lifecycle.subscribe(events.append)
    return events


class Gate(Sink):
    """Holds every event (its credit too) until ``open()``; counts what arrived."""

    kind = "gate"

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Event] = []
        self.values: list[Any] = []
        self.is_open = False

    def on_batch(self, batch: Batch) -> None:
        self.values.extend(batch.values)
        if self.is_open:
            batch.end_all()
        else:
            self.held.extend(batch.events(take=True))

    def open(self) -> None:
        self.is_open = True
        for event in self.held:
            event.end()
        self.held.clear()


# -- normal flow ----------------------------------------------------------------------------


async def test_messages_flow_into_a_pipeline_in_batches() -> None:
    handler, stats = seq_feed(2000)
    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=resume, sequence=lambda v: v["seq"])
        sink = ListSink()
        pipeline = (
            Pipeline("ws", source)
            .pipe(ops.tap(lambda v: None), ops.map(lambda v: v["seq"]))
            .to(sink)
        )
        await pipeline.start()
        await until(lambda: len(sink.values) == 2000)
        status = await pipeline.stop()
    assert sink.values == list(range(2000))
    assert stats["subscriptions"] == [{"op": "subscribe", "from": None}]
    assert source.last_seq == 1999
    assert status.source["received"] == 2000
    assert status.source["connects"] == 1
    assert status.flow["peak_in_flight"] <= source.credit


async def test_queued_messages_leave_as_one_batch() -> None:
    release = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(40):
            await ws.send(json.dumps({"seq": i}))
        release.set()
        await ws.wait_closed()

    sizes: list[int] = []

    class Sizes(Sink):
        def on_batch(self, batch: Batch) -> None:
            sizes.append(len(batch))
            batch.end_all()

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=["hi"], max_queue=64)
        gate = asyncio.Event()

        original = source._read

        async def delayed_read(ws: Any, out: Any) -> None:
            await release.wait()
            await asyncio.sleep(0.05)  # every message is in the client's queue by now
            gate.set()
            await original(ws, out)

        source._read = delayed_read  # type: ignore[method-assign]
        pipeline = Pipeline("ws", source).to(Sizes())
        await pipeline.start()
        await until(lambda: sum(sizes) == 40)
        await pipeline.stop()
    assert gate.is_set()
    assert len(sizes) <= 2, sizes  # not one loop hop per message


async def test_other_tasks_run_between_batches_of_a_queued_burst() -> None:
    """A burst larger than ``batch_size`` leaves in several batches, and the loop
    runs other work between them (the source yields while messages remain queued;
    when none remain, its next ``recv()`` waits for the network, which yields)."""
    release = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(40):
            await ws.send(json.dumps({"seq": i}))
        release.set()
        await ws.wait_closed()

    sizes: list[int] = []
    seen: list[int] = []  # how many batches had arrived, at each turn of another task

    class Sizes(Sink):
        def on_batch(self, batch: Batch) -> None:
            sizes.append(len(batch))
            batch.end_all()

    async def other_task() -> None:
        while True:
            seen.append(len(sizes))
            await asyncio.sleep(0)

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=["hi"], max_queue=64, batch_size=5)
        original = source._read

        async def delayed_read(ws: Any, out: Any) -> None:
            await release.wait()
            await asyncio.sleep(0.05)  # every message is in the client's queue by now
            await original(ws, out)

        source._read = delayed_read  # type: ignore[method-assign]
        pipeline = Pipeline("ws", source).to(Sizes())
        await pipeline.start()
        other = asyncio.create_task(other_task())
        await until(lambda: sum(sizes) == 40)
        other.cancel()
        await pipeline.stop()
    assert sizes == [5] * 8
    # the other task ran after each batch but the last (and maybe after it too)
    assert set(range(1, 8)) <= set(seen), seen


async def test_batch_wait_gathers_a_trickle_into_few_batches() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(20):
            await ws.send(json.dumps({"seq": i}))
            await asyncio.sleep(0.002)
        await ws.wait_closed()

    sizes: list[int] = []
    values: list[Any] = []

    class Sizes(Sink):
        def on_batch(self, batch: Batch) -> None:
            sizes.append(len(batch))
            values.extend(batch.values)
            batch.end_all()

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=["hi"], batch_wait=0.2)
        pipeline = Pipeline("ws", source).to(Sizes())
        await pipeline.start()
        await until(lambda: len(values) == 20)
        status = await pipeline.stop()
    assert values == [{"seq": i} for i in range(20)]
    # 20 messages over ~40 ms; each batch waits up to 200 ms for more after its first
    assert len(sizes) <= 2, sizes
    assert status.source["batch_wait"] == 0.2


async def test_a_stop_during_batch_wait_emits_what_was_received() -> None:
    sent = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"seq": 0}))
        sent.set()
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=["hi"], batch_wait=30.0)
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await sent.wait()
        await asyncio.sleep(0.1)  # received, and waiting (30 s) for more
        assert sink.values == []
        started = time.monotonic()
        status = await pipeline.stop()
    assert time.monotonic() - started < 5
    assert sink.values == [{"seq": 0}]
    assert status.source["received"] == 1


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf")])
def test_batch_wait_must_be_seconds_at_least_zero(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="websocket source 'websocket': batch_wait must"):
        WebSocketSource("ws://127.0.0.1:1/feed", batch_wait=bad)


# -- reconnects -----------------------------------------------------------------------------


async def test_no_message_lost_when_the_server_drops_every_n_and_resumes() -> None:
    handler, stats = seq_feed(600, drop_every=70)
    async with serving(handler) as (url, _):
        source = WebSocketSource(
            url, subscribe=resume, sequence=lambda v: v["seq"], backoff=FAST, stable_after=0
        )
        events = recorder(source)
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) >= 600)
        await pipeline.stop()
    assert [v["seq"] for v in sink.values] == list(range(600))
    assert stats["connections"] == 9  # 8 drops of 70, then the rest
    froms = [s["from"] for s in stats["subscriptions"]]
    assert froms == [None, *range(69, 600, 70)][: len(froms)]
    closes = [e for e in events if e.kind == "closed"]
    assert [(e.code, e.reason) for e in closes[:8]] == [(1001, "going away")] * 8


async def test_reconnect_delays_follow_the_backoff_schedule_then_give_up() -> None:
    connected: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        connected.append(time.monotonic())
        await ws.close(1011, "try later")

    policy = Backoff(initial=0.02, factor=2, max_delay=0.08, jitter="none", max_attempts=5)
    async with serving(handler) as (url, _):
        source = WebSocketSource(url, backoff=policy, stable_after=10)
        events = recorder(source)
        pipeline = Pipeline("ws", source).to(ListSink())
        with pytest.raises(PipelineError, match="gave up reconnecting"):
            await pipeline.run(timeout=5)
    scheduled = [(e.attempt, e.delay) for e in events if e.kind == "reconnect_scheduled"]
    assert scheduled == [(1, 0.02), (2, 0.04), (3, 0.08), (4, 0.08)]
    gaps = [b - a for a, b in itertools.pairwise(connected)]
    assert len(connected) == 5
    for gap, (_, delay) in zip(gaps, scheduled, strict=True):
        assert gap >= delay * 0.9
    assert isinstance(pipeline.error, WebSocketError)


async def test_a_server_that_accepts_and_closes_at_once_meets_growing_delays() -> None:
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1  # the handshake succeeded; close at once

    policy = Backoff(initial=0.01, factor=2, max_delay=0.2, jitter="none", max_attempts=None)
    async with serving(handler) as (url, _):
        source = WebSocketSource(url, backoff=policy, stable_after=1.0)
        events = recorder(source)
        pipeline = Pipeline("ws", source).to(ListSink())
        await pipeline.start()
        await asyncio.sleep(0.8)
        await pipeline.stop()
    # a tight loop would connect thousands of times; the attempt count never resets,
    # so the delays go 0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2: 8 connections at most
    assert 4 <= connections <= 8
    attempts = [e.attempt for e in events if e.kind == "reconnect_scheduled"]
    assert attempts == list(range(1, len(attempts) + 1))


async def test_refused_connections_are_retried_until_the_server_is_up() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler, _ = seq_feed(10)
    source = WebSocketSource(
        f"ws://127.0.0.1:{port}/feed",
        subscribe=resume,
        backoff=Backoff(initial=0.02, max_delay=0.02, jitter="none", max_attempts=None),
    )
    events = recorder(source)
    sink = ListSink()
    pipeline = Pipeline("ws", source).to(sink)
    await pipeline.start()
    await until(lambda: sum(e.kind == "error" for e in events) >= 2)
    async with serve(handler, "127.0.0.1", port, logger=server_log):
        await until(lambda: len(sink.values) == 10)
        await pipeline.stop()
    assert "ConnectionRefusedError" in (events[1].error or "")


async def test_a_server_that_stalls_in_the_handshake_times_out_and_is_retried() -> None:
    accepted = 0

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read()  # never answers the handshake
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        source = WebSocketSource(f"ws://127.0.0.1:{port}/", open_timeout=0.1, backoff=FAST)
        events = recorder(source)
        pipeline = Pipeline("ws", source).to(ListSink())
        await pipeline.start()
        await until(lambda: accepted >= 2)
        await pipeline.stop()
    errors = [e.error for e in events if e.kind == "error"]
    assert errors
    assert "TimeoutError" in (errors[0] or "")


async def test_compression_can_be_turned_on() -> None:
    handler, _ = seq_feed(100, pad=500)
    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=resume, compression="deflate")
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) == 100)
        await pipeline.stop()
    assert [v["seq"] for v in sink.values] == list(range(100))


async def test_an_open_circuit_holds_reconnects_back() -> None:
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1

    circuit = CircuitBreaker("feed", failure_threshold=2, reset_timeout=0.3)
    async with serving(handler) as (url, _):
        source = WebSocketSource(url, backoff=FAST, stable_after=1, circuit=circuit)
        pipeline = Pipeline("ws", source).to(ListSink())
        await pipeline.start()
        await asyncio.sleep(0.2)
        assert connections == 2  # then the circuit opened
        assert pipeline.status().source["circuit"] == "open"
        await asyncio.sleep(0.25)
        await pipeline.stop()
    assert connections == 3  # one trial after the reset timeout, which failed again


# -- bad input ------------------------------------------------------------------------------


class Tick(BaseModel):
    seq: int
    px: float


async def test_bad_frames_go_to_dead_letters_and_the_stream_goes_on() -> None:
    frames: list[str | bytes] = [
        '{"seq": 0, "px": 1.5}',
        "not json{",
        '{"seq": 2, "px": "high"}',
        b"\xff\xfe",
        '{"seq": 4, "px": 2}',
    ]

    async def handler(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, decode=Tick)
        letters = MemoryDeadLetters()
        sink = ListSink()
        pipeline = Pipeline("ws", source, dead_letters=letters).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) + len(letters.letters) == 5)
        status = await pipeline.stop()
    assert sink.values == [Tick(seq=0, px=1.5), Tick(seq=4, px=2.0)]
    assert [d.event.value for d in letters.letters] == frames[1:4]
    assert all(d.error_type == "DecodeError" for d in letters.letters)
    assert "px" in letters.letters[1].message
    assert [d.event.position.offset for d in letters.letters] == [1, 2, 3]  # type: ignore[union-attr]
    assert status.source["bad_messages"] == 3
    assert status.flow["in_flight"] == 0


async def test_invalid_frames_never_join_into_valid_values() -> None:
    frames = ['{"a":1', '"b":2}', "3,4"]  # joined into one JSON array they would parse

    async def handler(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    for decode in ("json", Any):
        async with serving(handler) as (url, _):
            letters = MemoryDeadLetters()
            sink = ListSink()
            pipeline = Pipeline("ws", WebSocketSource(url, decode=decode), dead_letters=letters)
            await pipeline.to(sink).start()
            await until(lambda letters=letters: len(letters.letters) == 3)
            await pipeline.stop()
        assert sink.values == []


async def test_in_fail_fast_mode_a_bad_frame_fails_the_pipeline() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("not json{")
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        pipeline = Pipeline("ws", WebSocketSource(url), fail_fast=True).to(ListSink())
        with pytest.raises(PipelineError, match="cannot decode"):
            await pipeline.run(timeout=5)


async def test_an_oversized_message_is_reported_and_the_source_reconnects() -> None:
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ws.recv()
        if connections == 1:
            await ws.send(json.dumps({"seq": 0}))
            await ws.send(json.dumps({"big": "x" * 5000}))
        else:
            await ws.send(json.dumps({"seq": 1}))
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=["go"], max_size=1000, backoff=FAST)
        events = recorder(source)
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) == 2)
        await pipeline.stop()
    assert sink.values == [{"seq": 0}, {"seq": 1}]
    closed = next(e for e in events if e.kind == "closed")
    assert closed.code == 1009
    assert any(e.kind == "error" and "too big" in (e.error or "") for e in events)


# -- auth and TLS ---------------------------------------------------------------------------


async def test_token_header_is_sent_on_every_connect_and_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    accepted = ["Bearer s3cret-token-1", "Bearer s3cret-token-2"]
    seen: list[str | None] = []

    def check(connection: ServerConnection, request: Request) -> Response | None:
        token = request.headers.get("Authorization")
        seen.append(token)
        if token not in accepted:
            return connection.respond(401, "no\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"n": len(seen)}))
        await ws.close()

    tokens = iter(["wrong-0", "s3cret-token-1", "s3cret-token-2"])

    async def provider() -> str:
        return next(tokens)

    async with serving(handler, process_request=check) as (url, _):
        source = WebSocketSource(
            url + "?api_key=s3cret-key",
            token_provider=provider,
            headers={"X-Api-Key": "s3cret-header"},
            backoff=FAST,
        )
        events = recorder(source)
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) == 2)
        status = await pipeline.stop()
    assert seen == ["Bearer wrong-0", *accepted]
    assert any(e.kind == "error" and "401" in (e.error or "") for e in events)
    shown = json.dumps(status.as_dict(), default=str) + repr(events)
    assert "s3cret" not in shown
    assert "Authorization" in status.source["headers"]
    client_logs = [r for r in caplog.records if not r.name.startswith("tests.")]
    assert any(r.name == "rxagent.websocket" for r in client_logs)  # the wire log ran
    assert not any("s3cret" in r.getMessage() for r in client_logs)


async def test_wss_with_a_throwaway_certificate() -> None:
    import trustme  # the dev extra; a hard import so TLS is never silently untested

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"secure": True}))
        await ws.wait_closed()

    async with serving(handler, ssl=server_ctx) as (url, _):
        assert url.startswith("wss://")
        source = WebSocketSource(url, ssl=client_ctx)
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: sink.values == [{"secure": True}])
        await pipeline.stop()

        # verification is on by default: the system's trust store does not know this CA
        untrusting = WebSocketSource(url, backoff=FAST)
        events = recorder(untrusting)
        pipeline = Pipeline("ws2", untrusting).to(ListSink())
        await pipeline.start()
        await until(lambda: any(e.kind == "error" for e in events))
        await pipeline.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in (next(e for e in events if e.kind == "error").error or "")


# -- TLS from files (configurations that cannot hold an SSLContext) ------------------------


@dataclass
class Pki:
    """A throwaway CA and the files a configuration names: the CA, the server's
    certificate for 127.0.0.1, and a client certificate (plain and encrypted key)."""

    ca: Any
    dir: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    encrypted_key_file: Path
    key_password: str

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    import trustme  # the dev extra; a hard import so TLS is never silently untested
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    client = ca.issue_cert("client.example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    password = "correct horse battery"
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )
    (tmp_path / "client-encrypted.key").write_bytes(encrypted)
    return Pki(
        ca,
        tmp_path,
        tmp_path / "ca.pem",
        tmp_path / "client.pem",
        tmp_path / "client.key",
        tmp_path / "client-encrypted.key",
        password,
    )


async def _first_value_or_error(source: WebSocketSource) -> tuple[list[Any], list[str]]:
    """Runs ``source`` until it delivers a value or reports an error and schedules
    a reconnect; returns the values and the lifecycle kinds."""
    events = recorder(source)
    sink = ListSink()
    pipeline = Pipeline("ws", source).to(sink)
    await pipeline.start()
    await until(lambda: bool(sink.values) or any(e.kind == "reconnect_scheduled" for e in events))
    await pipeline.stop()
    return sink.values, [e.kind for e in events]


async def _hello(ws: ServerConnection) -> None:
    await ws.send(json.dumps({"secure": True}))
    await ws.wait_closed()


async def test_ca_file_verifies_the_server_certificate(pki: Pki) -> None:
    async with serving(_hello, ssl=pki.server_context()) as (url, _):
        source = WebSocketSource(url, ca_file=str(pki.ca_file), backoff=FAST)
        values, kinds = await _first_value_or_error(source)
    assert values == [{"secure": True}]
    assert kinds[:2] == ["connecting", "opened"]
    assert source.describe()["tls"] == {
        "context": "files",
        "verify": True,
        "ca_file": str(pki.ca_file),
    }


async def test_mutual_tls_accepts_a_client_certificate_and_rejects_its_absence(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_ctx = pki.server_context(require_client_cert=True)
    async with serving(_hello, ssl=server_ctx) as (url, _):
        with_cert = WebSocketSource(
            url, ca_file=pki.ca_file, cert_file=pki.cert_file, key_file=pki.key_file
        )
        values, _ = await _first_value_or_error(with_cert)
        assert values == [{"secure": True}]

        # an encrypted key, its password read from the environment as a YAML config would
        monkeypatch.setenv("RXAGENT_TEST_KEY_PASSWORD", pki.key_password)
        encrypted = WebSocketSource(
            url,
            ca_file=pki.ca_file,
            cert_file=pki.cert_file,
            key_file=pki.encrypted_key_file,
            key_password="${RXAGENT_TEST_KEY_PASSWORD}",
        )
        values, _ = await _first_value_or_error(encrypted)
        assert values == [{"secure": True}]
        assert pki.key_password not in repr(encrypted.describe())

        # no client certificate: the server refuses, the source reports it and retries
        without = WebSocketSource(url, ca_file=pki.ca_file, backoff=FAST)
        values, kinds = await _first_value_or_error(without)
    assert values == []
    assert "opened" not in kinds
    assert kinds[:3] == ["connecting", "error", "reconnect_scheduled"]
    assert without.describe()["last_error"]
    assert without.describe()["connects"] == 0


async def test_verification_is_on_by_default_and_a_ca_file_trusts_only_its_cas(
    pki: Pki, tmp_path: Path
) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    async with serving(_hello, ssl=pki.server_context()) as (url, _):
        failures = []
        for options in ({}, {"ca_file": other_ca}):
            source = WebSocketSource(url, backoff=FAST, **options)
            values, kinds = await _first_value_or_error(source)
            assert values == []
            assert "opened" not in kinds
            failures.append(source.describe()["last_error"] or "")
    assert all("CERTIFICATE_VERIFY_FAILED" in failure for failure in failures), failures


def _garbage(pki: Pki) -> Path:
    path = pki.dir / "garbage.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return path


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (lambda p: {"ca_file": p.dir / "missing.pem"}, r"ca_file '.*missing\.pem' does not exist"),
        (lambda p: {"ca_file": p.dir}, r"ca_file '.*' is not a file"),
        (lambda p: {"ca_file": _garbage(p)}, r"ca_file '.*garbage\.pem' holds no usable PEM"),
        (
            lambda p: {"cert_file": p.dir / "nope.pem", "key_file": p.key_file},
            r"cert_file '.*nope\.pem' does not exist",
        ),
        (
            lambda p: {"cert_file": p.cert_file, "key_file": p.dir / "nope.key"},
            r"key_file '.*nope\.key' does not exist",
        ),
        (
            lambda p: {"cert_file": p.ca_file, "key_file": p.key_file},  # key of another cert
            r"cannot load the client certificate from cert_file '.*ca\.pem' and key_file",
        ),
        (
            lambda p: {
                "cert_file": p.cert_file,
                "key_file": p.encrypted_key_file,
                "key_password": "wrong",
            },
            r"cannot load the client certificate .* key_password",
        ),
        (lambda p: {"key_file": p.key_file}, r"key_file needs cert_file"),
        (
            lambda p: {"cert_file": p.cert_file, "key_password": "${RXAGENT_TEST_UNSET_VAR}"},
            r"key_password reads environment variable RXAGENT_TEST_UNSET_VAR, which is not set",
        ),
        (
            lambda p: {"ca_file": p.ca_file, "ssl": ssl.create_default_context()},
            r"pass either ssl= \(a ready SSLContext\) or ca_file, not both",
        ),
    ],
)
def test_bad_tls_options_are_configuration_errors_naming_the_option(
    pki: Pki, options: Callable[[Pki], dict[str, Any]], expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"websocket source 'feed': {expected}"):
        WebSocketSource("wss://127.0.0.1:1/feed", name="feed", **options(pki))


def test_tls_options_need_a_wss_url(pki: Pki) -> None:
    with pytest.raises(ConfigurationError, match=r"ca_file needs a wss:// url, got a ws:// url"):
        WebSocketSource("ws://127.0.0.1:1/feed", ca_file=pki.ca_file)
    with pytest.raises(ConfigurationError, match=r"ssl= needs a wss:// url"):
        WebSocketSource("ws://127.0.0.1:1/feed", ssl=ssl.create_default_context())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_ca_file_is_a_configuration_error(pki: Pki) -> None:
    pki.ca_file.chmod(0)
    with pytest.raises(ConfigurationError, match=r"ca_file '.*ca\.pem' cannot be read"):
        WebSocketSource("wss://127.0.0.1:1/feed", ca_file=pki.ca_file)


def test_the_key_password_never_appears_in_errors(pki: Pki) -> None:
    secret = "s3cret-but-wrong"
    with pytest.raises(ConfigurationError) as raised:
        WebSocketSource(
            "wss://127.0.0.1:1/feed",
            cert_file=pki.cert_file,
            key_file=pki.encrypted_key_file,
            key_password=lambda: secret,
        )
    text = f"{raised.value} {raised.value.__cause__!r} {raised.value.__context__!r}"
    assert secret not in text


# -- backpressure and keepalive -------------------------------------------------------------


async def test_a_slow_sink_blocks_the_servers_sends_and_memory_stays_bounded() -> None:
    total, payload = 4000, "x" * 4096
    sent = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal sent
        for i in range(total):
            await ws.send(json.dumps({"seq": i, "pad": payload}))
            sent = i + 1
        await ws.wait_closed()

    async with serving(handler, write_limit=16384) as (url, _):
        source = WebSocketSource(url, credit=32, batch_size=16, max_queue=16)
        gate = Gate()
        pipeline = Pipeline("ws", source).to(gate)
        await pipeline.start()
        await until(lambda: len(gate.values) == 32)
        await asyncio.sleep(0.3)
        stalled_at = sent
        await asyncio.sleep(0.2)
        # the server is blocked in send(): TCP pushed back
        assert sent == stalled_at < total
        assert len(gate.values) == 32  # nothing read without credit
        assert source.received == 32
        gate.open()
        await until(lambda: len(gate.values) == total, timeout=10)
        status = await pipeline.stop()
    assert [v["seq"] for v in gate.values] == list(range(total))
    assert status.flow["peak_in_flight"] <= 32


async def test_a_pause_longer_than_keepalive_reconnects_and_resumes_without_loss() -> None:
    # more than the client reads before it pauses: the rest is lost with the
    # connection, so only the resume brings it
    handler, stats = seq_feed(300, pad=4000)
    async with serving(handler, ping_interval=None) as (url, _):
        source = WebSocketSource(
            url,
            subscribe=resume,
            sequence=lambda v: v["seq"],
            ping_interval=0.05,
            ping_timeout=0.05,
            credit=50,
            batch_size=10,
            max_queue=8,
            close_timeout=0.1,  # reading is paused: the closing handshake cannot complete
            backoff=FAST,
        )
        events = recorder(source)
        gate = Gate()
        pipeline = Pipeline("ws", source).to(gate)
        await pipeline.start()
        await until(lambda: len(gate.values) >= 50)
        # paused past ping_interval + ping_timeout (+ close_timeout: reading is paused)
        await until(lambda: any(e.kind == "closed" for e in events))
        await asyncio.sleep(0.1)
        closes = [e for e in events if e.kind == "closed"]
        assert [(e.code, e.reason) for e in closes] == [(1011, "keepalive ping timeout")]
        # no reconnect while paused: the source waits for credit first
        assert stats["connections"] == 1
        gate.open()
        await until(lambda: len(gate.values) == 300)
        await pipeline.stop()
    assert [v["seq"] for v in gate.values] == list(range(300))
    assert stats["connections"] == 2
    # it resumed after the last message it had received before the close
    assert 49 <= stats["subscriptions"][1]["from"] < 299


async def test_a_lossy_latest_source_keeps_reading_and_delivers_the_newest_per_key() -> None:
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        for i in range(300):
            await ws.send(json.dumps({"sym": "ABC"[i % 3], "seq": i}))
        done.set()
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        source = WebSocketSource(
            url,
            overflow=Overflow("latest", capacity=8, key=lambda v: v["sym"]),
            credit=10,
            batch_size=10,
        )
        gate = Gate()
        pipeline = Pipeline("ws", source).to(gate)
        await pipeline.start()
        await asyncio.wait_for(done.wait(), 5)  # the server was never held back
        await until(lambda: source.received == 300)
        assert len(gate.values) == 10
        gate.open()
        await until(lambda: len(gate.values) == 13)
        status = await pipeline.stop()
    newest = {v["sym"]: v["seq"] for v in gate.values[10:]}
    assert newest == {"A": 297, "B": 298, "C": 299}
    assert status.source["dropped"] == 300 - 13


# -- lifecycle and clean close --------------------------------------------------------------


async def test_lifecycle_in_order_and_a_clean_close_without_leaks() -> None:
    close_codes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"seq": 0}))
        await ws.wait_closed()
        close_codes.append(ws.close_code)

    before = asyncio.all_tasks()
    async with serving(handler) as (url, server):
        source = WebSocketSource(url)
        events = recorder(source)
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: sink.values == [{"seq": 0}])
        assert pipeline.status().source["connected"] is True
        await pipeline.stop()
        await until(lambda: close_codes == [1000])
        assert not server.connections
    assert [e.kind for e in events] == ["connecting", "opened", "closed"]
    assert (events[-1].code, events[-1].reason) == (1000, "source stopped")
    assert all(e.url == url for e in events)
    assert pipeline.status().source["connected"] is False
    await asyncio.sleep(0)
    leaked = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert leaked == set()


async def test_headers_of_the_handshake_reach_the_server() -> None:
    seen: list[Headers] = []

    def record(connection: ServerConnection, request: Request) -> None:
        seen.append(request.headers)

    async def handler(ws: ServerConnection) -> None:
        await ws.close()

    async with serving(handler, process_request=record) as (url, _):
        source = WebSocketSource(url, headers={"X-Feed": "ticks"}, backoff=FAST)
        pipeline = Pipeline("ws", source).to(ListSink())
        await pipeline.start()
        await until(lambda: len(seen) >= 1)
        await pipeline.stop()
    assert seen[0]["X-Feed"] == "ticks"


async def test_mutual_tls_from_a_pipeline_file(pki: Pki) -> None:
    """The YAML kind passes the TLS files (relative to the file) and the key's
    password from the environment; a wrong password is a located load error."""
    from rxagent.config import ConfigFileError, loads

    server_ctx = pki.server_context(require_client_cert=True)
    async with serving(_hello, ssl=server_ctx) as (url, _):
        text = f"""\
pipelines:
  secure:
    source:
      websocket:
        url: "{url}"
        ca_file: ca.pem
        cert_file: client.pem
        key_file: client-encrypted.key
        key_password: "${{KEY_PASSWORD}}"
    sinks: [log]
"""
        with pytest.raises(ConfigFileError) as wrong:
            loads(text, file="p.yaml", base_dir=pki.dir, environ={"KEY_PASSWORD": "not it"})
        [problem] = wrong.value.problems
        assert str(problem).startswith("p.yaml:5:9: pipelines.secure.source.websocket:")
        assert "key_password" in str(problem)
        assert "not it" not in str(problem)

        config = loads(text, base_dir=pki.dir, environ={"KEY_PASSWORD": pki.key_password})
        source = config.build().pipelines["secure"].source
        assert isinstance(source, WebSocketSource)
        values, _ = await _first_value_or_error(source)
    assert values == [{"secure": True}]
