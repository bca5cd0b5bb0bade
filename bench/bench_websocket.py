"""WebSocket source -> parse (JSON) -> state, against a raw ``websockets`` recv + decode loop.

All read the same feed from the same local server in the same run: 200,000 JSON
ticks (10 symbols). Target: rxagent >= 0.9x the raw loop's rate. Also printed:
the source alone (decoding into a no-op sink that ends each batch at once), which
is the part this source owns; the rest of the gap is the state store's own cost
per event (compare ``memory -> key_by -> state`` in the pipeline benchmark).
(``CallbackSink`` would not do as the no-op: it ends its rows one by one, which
costs more per event here than the state store.)

On a shared 2-core machine the rates vary by 10-20 % from run to run; each
figure is the best of ``ROUNDS``.

The server must not be the bottleneck (a Python ``websockets`` server costs
7-11 us per message to send here), so it runs in a separate process, speaks
the handshake itself and writes pre-encoded frames in large chunks: one
connection costs it a few milliseconds of ``write``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.events import Batch
from rxagent.sinks import Sink
from rxagent.sources import websocket

N = 200_000
ROUNDS = 3
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The server never answers a close frame (it waits for EOF): without a short
#: close timeout each client would wait 5-10 s (untimed) before dropping the connection.
_CLOSE_TIMEOUT = 0.1


# -- the server (its own process) ----------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    """One unmasked text frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def _feed(n: int) -> bytes:
    rnd = random.Random(7)
    syms = [f"S{i}" for i in range(10)]
    frames = [
        _frame(
            json.dumps(
                {"seq": i, "sym": syms[i % 10], "px": round(100 + rnd.random() * 10, 2)}
            ).encode()
        )
        for i in range(n)
    ]
    return b"".join(frames)


async def _serve(n: int) -> None:
    blob = _feed(n)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = ""
        for line in request.decode().split("\r\n"):
            if line.lower().startswith("sec-websocket-key:"):
                key = line.split(":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        view = memoryview(blob)
        for start in range(0, len(blob), 1 << 20):
            writer.write(view[start : start + (1 << 20)])
            await writer.drain()
        # then wait for the client to go (its close frame or EOF)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(), 60)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class _NoOp(Sink):
    """Ends every batch at once, doing nothing with it."""

    kind = "noop"

    def on_batch(self, batch: Batch) -> None:
        batch.end_all()


# -- the two clients -------------------------------------------------------------------------------


async def _until(condition: Callable[[], bool], pause: float = 0.0005) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the feed stalled")
        await asyncio.sleep(pause)


async def raw_loop(url: str, n: int) -> float:
    state: dict[str, Any] = {}
    loads = json.loads
    async with connect(
        url, proxy=None, compression=None, max_size=None, close_timeout=_CLOSE_TIMEOUT
    ) as ws:
        start = time.perf_counter()
        for _ in range(n):
            tick = loads(await ws.recv())
            state[tick["sym"]] = tick
        elapsed = time.perf_counter() - start
    assert len(state) == 10
    return n / elapsed


async def rxagent_pipeline(url: str, n: int, *, state: bool = True) -> float:
    store = StateStore("ticks")
    source = websocket(url, decode="json", ping_interval=None, close_timeout=_CLOSE_TIMEOUT)
    sink = store.sink() if state else _NoOp()
    pipeline = Pipeline("ws", source).pipe(ops.key_by("sym")).to(sink)
    await pipeline.start()
    flow = pipeline.flow
    assert flow is not None
    await _until(lambda: source.received > 0, pause=0)
    start = time.perf_counter()
    await _until(lambda: source.received >= n and not flow.pending)
    elapsed = time.perf_counter() - start
    await pipeline.stop()
    if state:
        assert store.snapshot.get("S9")["seq"] == n - 1
    return n / elapsed


def main() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_websocket", "serve", str(N)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = f"ws://127.0.0.1:{int(server.stdout.readline())}/ticks"
        raw: list[float] = []
        ours: list[float] = []
        alone: list[float] = []
        for _ in range(ROUNDS):
            raw.append(asyncio.run(raw_loop(url, N)))
            ours.append(asyncio.run(rxagent_pipeline(url, N)))
            alone.append(asyncio.run(rxagent_pipeline(url, N, state=False)))
    finally:
        server.terminate()
        server.wait()
    best_raw, best_ours, best_alone = max(raw), max(ours), max(alone)
    print(f"raw websockets recv + json.loads + dict  : {best_raw:>10,.0f} msg/s")
    print(f"rxagent websocket -> key_by -> state     : {best_ours:>10,.0f} msg/s")
    print(f"rxagent websocket -> key_by -> no-op sink: {best_alone:>10,.0f} msg/s")
    print(f"ratio rxagent / raw: {best_ours / best_raw:.2f}x (target >= 0.9x)")
    print(f"ratio source alone / raw: {best_alone / best_raw:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(_serve(int(sys.argv[2])))
    else:
        main()
