"""WebSocket at a moderate rate: latency and client CPU at 10,000 msg/s (issue 16).

A server in its own process paces a feed of JSON ticks at ``RATE`` messages per
second, each stamped with ``time.monotonic_ns()`` as it is written (the
monotonic clock is system-wide on Linux, so client and server share it). Two
clients read the same feed, one after the other, in alternating rounds:

* the plain loop: ``websockets`` ``recv()`` + ``orjson.loads`` + a dict write;
  latency is taken after the dict write;
* rxagent with the defaults a user gets: ``websocket(url)`` -> ``key_by("sym")``
  -> ``store.sink()``; latency is taken when the state sink returns from a
  batch, its values written (a wrapper of the sink's ``on_batch``; a subscriber
  of ``store.updates`` would cost more, as the store then builds a
  ``StateChange`` per key, which a user without one does not pay for).

Latency is from the server's send stamp to that moment; the first second of
each run is left out (connection set-up, warm-up). CPU per message is the
client process's CPU time (``time.process_time``) over the run divided by the
messages. Each figure is the median of the rounds; the ratios are taken per
round (rxagent / plain of the same round), then their median.

Target (issue 16): rxagent's p50 <= 1.3x and CPU per message <= 1.3x the plain
loop's. ``python -m bench websocket_latency`` runs ``ROUNDS`` rounds of
``SECONDS`` s each; the environment variables ``WS_LAT_SECONDS``,
``WS_LAT_ROUNDS`` and ``WS_LAT_RATE`` change them. A third client,
rxagent with ``batch_wait=1 ms`` (``WS_LAT_BATCH_WAIT_MS``; 0 leaves it out),
shows the knob that trades latency for CPU per message. ``WS_LAT_SPLIT=1`` adds
two more, to show where the cost goes: the same source into a sink that only ends
its batches, without and with ``key_by`` (the probe wraps that sink's
``on_batch`` as it wraps the state sink's).

Before the first round the client process allocates and frees 2 MiB once. asyncio
reads a plain protocol's data with ``sock.recv(256 KiB)``, a new 256 KiB ``bytes``
per read; until the process has freed one mapped block that large, glibc maps and
unmaps each of them (two page faults, ~13 us a read), after that it serves them
from the heap. Which of the two the plain loop met depended on what the process did
before (the rxagent source, which reads into a buffer of its own, frees one when
its connection closes); the warm-up gives every round the cheaper one.

The server writes each message with one ``send`` as soon as it is due (it
sleeps between messages, so a late wake-up sends the messages due meanwhile
together, as a real server would); it costs a few percent of a core at 10k/s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import time
from array import array
from typing import Any

import orjson
from websockets.asyncio.client import connect

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.events import Batch
from rxagent.sinks import Sink
from rxagent.sources import websocket

RATE = int(os.environ.get("WS_LAT_RATE", "10000"))
SECONDS = float(os.environ.get("WS_LAT_SECONDS", "30"))
ROUNDS = int(os.environ.get("WS_LAT_ROUNDS", "5"))
#: A third client: rxagent with this ``batch_wait`` (ms; 0: leave it out).
BATCH_WAIT_MS = float(os.environ.get("WS_LAT_BATCH_WAIT_MS", "1"))
#: Two more clients: into a sink that only ends its batches, without and with key_by.
SPLIT = os.environ.get("WS_LAT_SPLIT", "0") not in ("", "0")
#: The messages of the first second are left out of the latency figures.
WARMUP_SECONDS = 1.0
TARGET_P50 = 1.3
TARGET_CPU = 1.3
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CLOSE_TIMEOUT = 0.1


# -- the server (its own process) ----------------------------------------------------------------


def _handshake(conn: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("the client went away during the handshake")
        request += chunk
    key = ""
    for line in request.decode().split("\r\n"):
        if line.lower().startswith("sec-websocket-key:"):
            key = line.split(":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def _send_paced(conn: socket.socket, rate: int, n: int) -> None:
    """Send ``n`` ticks at ``rate`` per second, each stamped when it is written."""
    prices = [b"%.2f" % (100 + (i * 37 % 1000) / 100) for i in range(997)]
    now_ns = time.monotonic_ns
    sleep = time.sleep
    sendall = conn.sendall
    start = now_ns()
    sent = 0
    while sent < n:
        now = now_ns()
        due = min(n, (now - start) * rate // 1_000_000_000 + 1)
        if due > sent:
            frames = []
            for seq in range(sent, due):
                payload = b'{"seq":%d,"sym":"S%d","px":%s,"ts":%d}' % (
                    seq,
                    seq % 10,
                    prices[seq % 997],
                    now,
                )
                frames.append(b"\x81" + bytes((len(payload),)) + payload)
            sendall(b"".join(frames))
            sent = due
        else:
            sleep((start + sent * 1_000_000_000 // rate - now) / 1e9)


def _serve(rate: int, n: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                _handshake(conn)
                _send_paced(conn, rate, n)
                # then wait for the client to go (its close frame, then EOF)
                conn.settimeout(60)
                while conn.recv(4096):
                    pass
            except OSError:
                pass


# -- the two clients -------------------------------------------------------------------------------


class Run:
    """One client's run: latencies (ns) of the messages after the warm-up, CPU seconds."""

    def __init__(self, latencies: array[int], cpu: float, n: int) -> None:
        self.latencies = sorted(latencies)
        self.cpu = cpu
        self.n = n

    def pct(self, p: float) -> float:
        """The ``p``-th percentile latency in microseconds."""
        lat = self.latencies
        return lat[min(len(lat) - 1, int(len(lat) * p / 100))] / 1000

    @property
    def cpu_per_msg(self) -> float:
        """Client CPU per message, microseconds."""
        return self.cpu / self.n * 1e6


async def plain_loop(url: str, n: int, warmup: int) -> Run:
    state: dict[str, Any] = {}
    loads = orjson.loads
    now_ns = time.monotonic_ns
    latencies = array("q")
    record = latencies.append
    cpu0 = time.process_time()
    async with connect(
        url, proxy=None, compression=None, max_size=None, close_timeout=_CLOSE_TIMEOUT
    ) as ws:
        for _ in range(n):
            tick = loads(await ws.recv())
            state[tick["sym"]] = tick
            if tick["seq"] >= warmup:
                record(now_ns() - tick["ts"])
        cpu = time.process_time() - cpu0
    assert len(state) == 10
    return Run(latencies, cpu, n)


class EndSink(Sink):
    """Ends every batch and keeps nothing: what the pipeline costs without a state write."""

    kind = "end"

    def on_batch(self, batch: Batch) -> None:
        batch.end_all()


async def rxagent_pipeline(
    url: str, n: int, warmup: int, *, to: str = "state", key_by: bool = True, **options: Any
) -> Run:
    store = StateStore("ticks")
    source = websocket(url, close_timeout=_CLOSE_TIMEOUT, **options)
    sink: Sink = store.sink() if to == "state" else EndSink()
    pipeline = Pipeline("ws", source)
    if key_by:
        pipeline.pipe(ops.key_by("sym"))
    pipeline.to(sink)
    now_ns = time.monotonic_ns
    latencies = array("q")
    record = latencies.append
    done = asyncio.get_running_loop().create_future()
    last = n - 1
    write = sink.on_batch

    def written(batch: Batch) -> None:
        # the probe: the batch's values are in the store once the sink returns
        # (cheaper than a subscriber of store.updates, which makes the store build
        # a StateChange per key that a user without one does not pay for)
        write(batch)
        now = now_ns()
        for tick in batch.values:
            if tick["seq"] >= warmup:
                record(now - tick["ts"])
            if tick["seq"] == last and not done.done():
                done.set_result(None)

    sink.on_batch = written  # type: ignore[method-assign]
    cpu0 = time.process_time()
    await pipeline.start()
    await asyncio.wait_for(done, SECONDS * 4 + 60)
    cpu = time.process_time() - cpu0
    await pipeline.stop()
    if to == "state":
        assert store.get("S9")["seq"] // 10 == last // 10
    return Run(latencies, cpu, n)


def _row(name: str, runs: list[Run]) -> str:
    p50 = statistics.median(r.pct(50) for r in runs)
    p99 = statistics.median(r.pct(99) for r in runs)
    p999 = statistics.median(r.pct(99.9) for r in runs)
    cpu = statistics.median(r.cpu_per_msg for r in runs)
    return (
        f"{name:<44}: p50 {p50:7.1f}  p99 {p99:8.1f}  p99.9 {p999:8.1f} us   CPU {cpu:6.1f} us/msg"
    )


def _ratio(ours: list[Run], plain: list[Run], figure: Any) -> float:
    return statistics.median(figure(o) / figure(p) for o, p in zip(ours, plain, strict=True))


def _warm_malloc() -> None:
    """Free one 2 MiB mapped block, so glibc serves 256 KiB blocks from the heap
    from now on (see the module docstring)."""
    block = bytearray(2 << 20)
    del block


def main() -> None:
    _warm_malloc()
    n = int(RATE * SECONDS)
    warmup = int(RATE * WARMUP_SECONDS)
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_websocket_latency", "serve", str(RATE), str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    clients: list[tuple[str, Any]] = [
        ("plain websockets recv + orjson + dict", plain_loop),
        ("rxagent websocket -> key_by -> state", rxagent_pipeline),
    ]
    if BATCH_WAIT_MS:
        clients.append(
            (
                f"  the same with batch_wait={BATCH_WAIT_MS:g} ms",
                functools.partial(rxagent_pipeline, batch_wait=BATCH_WAIT_MS / 1000),
            )
        )
    if SPLIT:
        clients += [
            (
                "  rxagent websocket -> end sink",
                functools.partial(rxagent_pipeline, to="end", key_by=False),
            ),
            (
                "  rxagent websocket -> key_by -> end sink",
                functools.partial(rxagent_pipeline, to="end"),
            ),
        ]
    runs: dict[str, list[Run]] = {name: [] for name, _ in clients}
    try:
        assert server.stdout is not None
        url = f"ws://127.0.0.1:{int(server.stdout.readline())}/ticks"
        for i in range(ROUNDS):
            # alternate which goes first
            for name, client in clients if i % 2 == 0 else clients[::-1]:
                runs[name].append(asyncio.run(client(url, n, warmup)))
    finally:
        server.terminate()
        server.wait()
    print(
        f"{RATE:,} msg/s for {SECONDS:g} s, {ROUNDS} alternating rounds (medians); "
        "latency = server send stamp -> value in the state"
    )
    for name, _ in clients:
        print(_row(name, runs[name]))
    plain = runs[clients[0][0]]
    for name, _ in clients[1:]:
        ours = runs[name]
        ratios = {
            "p50": _ratio(ours, plain, lambda r: r.pct(50)),
            "p99": _ratio(ours, plain, lambda r: r.pct(99)),
            "p99.9": _ratio(ours, plain, lambda r: r.pct(99.9)),
            "CPU/msg": _ratio(ours, plain, lambda r: r.cpu_per_msg),
        }
        print(
            f"ratios {name.strip()} / plain: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        )
        met = {
            k: "met" if ratios[k] <= target else "NOT met"
            for k, target in (("p50", TARGET_P50), ("CPU/msg", TARGET_CPU))
        }
        print(
            f"  targets: p50 <= {TARGET_P50}x ({met['p50']}), "
            f"CPU/msg <= {TARGET_CPU}x ({met['CPU/msg']})"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        with contextlib.suppress(KeyboardInterrupt):
            _serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
