"""The demo: a simulated market feed through a real pipeline into live state.

The feed is embedded (no network): random-walk prices for a few symbols as JSON
text, with a few garbage frames that land in dead letters. The pipeline parses,
filters, keys by symbol, folds count windows into VWAP and last price, and
keeps per-symbol state with the move since the first window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import operators as ops
from ._signals import sleep_or_stop, stop_on_signals
from .backoff import Backoff
from .events import Event
from .runtime import Pipeline, PipelineStatus
from .sinks.deadletters import MemoryDeadLetters
from .sinks.tools import ToolSink
from .sources.memory import PushSource
from .state import StateChange, StateStore
from .tools import tool
from .websocket.source import websocket

__all__ = [
    "MarketFeedServer",
    "alert",
    "build_alert_pipeline",
    "build_demo_pipeline",
    "market_feed",
    "paced",
    "run_demo",
]

SYMBOLS = ("AAPL", "MSFT", "NVDA", "BTC", "ETH")


def market_feed(seed: int = 7, garbage_every: int = 500) -> Iterator[str]:
    """Endless JSON ticks ``{"sym", "px", "qty", "seq", "ts"}``; every
    ``garbage_every``-th frame is not JSON."""
    rnd = random.Random(seed)
    prices = {sym: 100.0 + 50 * i for i, sym in enumerate(SYMBOLS)}
    seq = 0
    while True:
        seq += 1
        if garbage_every and seq % garbage_every == 0:
            yield "}garbage{"
            continue
        sym = rnd.choice(SYMBOLS)
        prices[sym] *= 1 + rnd.gauss(0, 0.0002)
        yield json.dumps(
            {
                "sym": sym,
                "px": round(prices[sym], 4),
                "qty": rnd.randint(1, 100),
                "seq": seq,
                "ts": time.time(),
            }
        )


async def paced(items: Iterator[str], rate: float) -> AsyncIterator[str]:
    """Yield ``items`` at about ``rate`` per second (in bursts every 10 ms)."""
    burst = max(1, int(rate / 100))
    start = time.monotonic()
    for sent, item in enumerate(items, 1):
        yield item
        if sent % burst == 0:
            delay = start + sent / rate - time.monotonic()
            await asyncio.sleep(max(0.0, delay))


def _vwap(ticks: list[dict[str, Any]]) -> float:
    qty = sum(t["qty"] for t in ticks)
    return sum(t["px"] * t["qty"] for t in ticks) / qty if qty else 0.0


def _fold(old: dict[str, Any] | None, event: Event) -> dict[str, Any]:
    window = event.value
    ticks = window.value
    vwap = _vwap(ticks)
    first = vwap if old is None else old["first_vwap"]
    return {
        "last": ticks[-1]["px"],
        "vwap": round(vwap, 4),
        "move_pct": round(100 * (vwap - first) / first, 3),
        "ticks": (0 if old is None else old["ticks"]) + window.count,
        "first_vwap": first,
    }


class MarketFeedServer:
    """A simulated market feed served over WebSocket on 127.0.0.1 (no network).

    Ticks ``{"sym", "px", "qty", "seq", "ts"}`` are generated at ``rate`` per
    second into a bounded history. A client subscribes with ``{"from": last_seq}``
    and gets every tick after it, then the live ones. Like real feeds it
    misbehaves: some ticks are sent twice, some pairs swapped, a garbage frame
    now and then, and each connection is dropped after ``disconnect_every`` frames.
    """

    def __init__(
        self,
        *,
        rate: float = 2000.0,
        seed: int = 7,
        disconnect_every: int = 2500,
        history: int = 50_000,
    ) -> None:
        self.rate = rate
        self.seed = seed
        self.disconnect_every = disconnect_every
        self.frames: deque[str] = deque(maxlen=history)
        self.first_seq = 1
        self.next_seq = 1
        self.url = ""
        self._new = asyncio.Event()
        self._server: Any = None
        self._producer: asyncio.Task[None] | None = None
        self.connections = 0
        self._closing = False

    async def __aenter__(self) -> MarketFeedServer:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ticks"
        self._producer = asyncio.create_task(self._produce(), name="rxagent-demo-feed")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
        # wake handlers parked waiting for new ticks, so wait_closed() can return
        self._closing = True
        self._new.set()
        self._server.close()
        await self._server.wait_closed()

    async def _produce(self) -> None:
        ticks = (t for t in market_feed(self.seed, garbage_every=0))
        async for frame in paced(ticks, self.rate):
            if len(self.frames) == self.frames.maxlen:
                self.first_seq += 1
            self.frames.append(frame)
            self.next_seq += 1
            self._new.set()

    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections += 1
        with contextlib.suppress(ConnectionClosed):  # the client left: nothing to do
            await self._serve(ws)

    async def _serve(self, ws: Any) -> None:
        try:
            request = json.loads(await ws.recv())
            last = request.get("from")
        except Exception:
            await ws.close(1008, "expected a subscription")
            return
        seq = max(self.first_seq, 1 if last is None else int(last) + 1)
        sent = 0
        while sent < self.disconnect_every:
            if self._closing:
                return
            if seq >= self.next_seq:
                self._new.clear()
                await self._new.wait()
                continue
            seq = max(seq, self.first_seq)
            frame = self.frames[seq - self.first_seq]
            if seq % 149 == 0 and seq + 1 < self.next_seq:  # a swapped pair
                await ws.send(self.frames[seq + 1 - self.first_seq])
                await ws.send(frame)
                seq += 2
                sent += 2
                continue
            await ws.send(frame)
            if seq % 211 == 0:  # sent twice
                await ws.send(frame)
            if seq % 500 == 0:  # a garbage frame
                await ws.send("}garbage{")
            seq += 1
            sent += 1
        await ws.close(1001, "feed rotating connections")


@tool
async def alert(symbol: str, move_pct: float) -> str:
    """Alert a trader that a symbol moved by ``move_pct`` percent since the first window."""
    return f"ALERT {symbol} moved {move_pct:+.2f}%"


def build_demo_pipeline(
    url: str,
    store: StateStore,
    dead_letters: MemoryDeadLetters,
    *,
    window: float = 5.0,
    throttle: float = 0.05,
) -> Pipeline:
    """websocket -> decode -> dedup -> reorder -> key_by -> throttle -> windows -> state."""
    feed = websocket(
        url,
        subscribe=lambda last_seq: [{"op": "subscribe", "from": last_seq}],
        sequence=lambda tick: tick["seq"],
        backoff=Backoff(initial=0.05, max_delay=1.0, max_attempts=None, jitter="full"),
        stable_after=1.0,
        name="feed",
        credit=2048,
    )
    return (
        Pipeline("market", feed, dead_letters=dead_letters)
        .pipe(
            ops.dedup("seq", horizon=10_000),
            ops.reorder("seq", max_delay=0.05),
            ops.key_by("sym"),
            ops.throttle_latest(throttle),
            ops.tumbling_window(window, name="windows"),
        )
        .to(store.sink(reducer=_fold))
    )


def build_alert_pipeline(
    store: StateStore, threshold: float, cooldown: float
) -> tuple[Pipeline, ToolSink, PushSource]:
    """State changes whose move passes ``threshold`` percent activate the alert tool."""
    moves = PushSource(name="moves")

    def on_changes(changes: list[StateChange]) -> None:
        for change in changes:
            new = change.new
            if isinstance(new, dict) and abs(new["move_pct"]) >= threshold:
                with contextlib.suppress(BufferError):  # alerts are advisory
                    moves.push({"symbol": change.key, "move_pct": new["move_pct"]})

    store.updates.subscribe(on_changes)
    alerts = ToolSink(alert, args=lambda v: v, key="symbol", policy="latest", cooldown=cooldown)
    return Pipeline("alerts", moves).to(alerts), alerts, moves


def _table(
    store: StateStore,
    status: PipelineStatus,
    dead: MemoryDeadLetters,
    alerts: ToolSink,
    fired: list[str],
) -> Any:
    from rich.table import Table

    table = Table(title=f"rxagent demo - state {store.name!r} v{store.version}")
    for col in ("symbol", "last", "vwap", "move %", "ticks"):
        table.add_column(col, justify="right" if col != "symbol" else "left")
    for sym, row in sorted(store.snapshot.to_dict().items()):
        table.add_row(
            str(sym),
            f"{row['last']:.2f}",
            f"{row['vwap']:.2f}",
            f"{row['move_pct']:+.3f}",
            str(row["ticks"]),
        )
    stages = status.stages
    flow = status.flow

    def stat(stage: str, field: str) -> int:
        return int(stages.get(stage, {}).get(field, 0))

    table.caption = (
        f"{status.state} | events {flow.get('emitted', 0)} | in flight "
        f"{flow.get('in_flight', 0)}/{flow.get('capacity', 0)} | reconnects "
        f"{status.source.get('reconnects', 0)} | duplicates {stat('dedup', 'dropped')} | "
        f"reordered-late {stat('reorder', 'dropped')} | "
        f"throttled {stat('throttle_latest', 'dropped')}"
        f" | dead letters {dead.total} | alerts {len(fired)}"
        + (f" (last: {fired[-1]})" if fired else "")
    )
    return table


async def run_demo(
    *,
    duration: float,
    rate: float,
    seed: int,
    live: bool,
    window: float = 5.0,
    threshold: float = 0.3,
    http: str | None = None,
) -> PipelineStatus:
    """Run the demo; ``http`` (``HOST:PORT``) also serves its metrics, health and
    dashboard there (docs/operations.md)."""
    import contextlib

    from rich.console import Console
    from rich.live import Live

    console = Console()
    store = StateStore("prices")
    dead = MemoryDeadLetters()
    fired: list[str] = []
    async with MarketFeedServer(rate=rate, seed=seed) as server:
        pipeline = build_demo_pipeline(server.url, store, dead, window=window)
        alerts_pipeline, alerts, moves = build_alert_pipeline(store, threshold, cooldown=window)
        alerts.results.subscribe(lambda r: fired.append(str(r.value)) if r.ok else None)
        serving = contextlib.AsyncExitStack()
        if http is not None:
            from .observe import parse_listen, serve
            from .runtime import App

            host, port = parse_listen(http)
            observed = await serving.enter_async_context(
                serve(App([pipeline, alerts_pipeline], name="demo"), host, port)
            )
            console.print(f"dashboard: {observed.url}/  metrics: {observed.url}/metrics")
        await alerts_pipeline.start()
        await pipeline.start()
        deadline = time.monotonic() + duration
        stop = stop_on_signals()

        def running() -> bool:
            return time.monotonic() < deadline and not stop.is_set()

        def view() -> Any:
            return _table(store, pipeline.status(), dead, alerts, fired)

        if live:
            with Live(view(), console=console, refresh_per_second=8) as screen:
                while running():
                    await sleep_or_stop(stop, 0.125)
                    screen.update(view())
        else:
            while running():
                await sleep_or_stop(stop, min(1.0, max(0.0, deadline - time.monotonic())))
                console.print(
                    f"[{time.strftime('%H:%M:%S')}] " + store.context(400).replace("\n", " | "),
                    soft_wrap=True,
                    markup=False,
                )
        status = await pipeline.drain(timeout=5)
        moves.complete()
        await alerts_pipeline.drain(timeout=5)
        await serving.aclose()
    console.print(_table(store, status, dead, alerts, fired))
    console.print("LLM context:\n" + store.context(600), soft_wrap=True, markup=False)
    if dead.total:
        first = dead.letters[0]
        console.print(
            f"{dead.total} dead letters, e.g. stage {first.stage!r}: "
            f"{first.error_type}: {first.message}",
            markup=False,
        )
    for line in fired[-3:]:
        console.print(line, markup=False)
    return status
