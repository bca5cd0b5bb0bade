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
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import operators as ops
from .events import Event
from .runtime import Pipeline, PipelineStatus
from .sinks.deadletters import MemoryDeadLetters
from .sinks.state import StateStore
from .sources.memory import memory

__all__ = ["build_demo_pipeline", "market_feed", "paced", "run_demo"]

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
        prices[sym] *= 1 + rnd.gauss(0, 0.002)
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


def build_demo_pipeline(
    feed: Any, store: StateStore, dead_letters: MemoryDeadLetters, *, window: int = 20
) -> Pipeline:
    return (
        Pipeline("market", memory(feed, name="feed", credit=2048), dead_letters=dead_letters)
        .pipe(
            ops.map(json.loads, name="parse"),
            ops.filter(lambda t: t["qty"] > 0, name="valid"),
            ops.key_by("sym"),
            ops.count_window(window, name="windows"),
        )
        .to(store.sink(reducer=_fold))
    )


def _table(store: StateStore, status: PipelineStatus, dead: MemoryDeadLetters) -> Any:
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
    flow = status.flow
    table.caption = (
        f"{status.state} | events {flow.get('emitted', 0)} | in flight "
        f"{flow.get('in_flight', 0)}/{flow.get('capacity', 0)} | dead letters {dead.total}"
    )
    return table


def _stop_on_signals() -> asyncio.Event:
    """SIGINT and SIGTERM end the demo cleanly (drain, final state) instead of a traceback."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_demo(*, duration: float, rate: float, seed: int, live: bool) -> PipelineStatus:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    store = StateStore("prices")
    dead = MemoryDeadLetters()
    pipeline = build_demo_pipeline(paced(market_feed(seed), rate), store, dead)
    await pipeline.start()
    deadline = time.monotonic() + duration
    stop = _stop_on_signals()

    def running() -> bool:
        return time.monotonic() < deadline and not stop.is_set()

    if live:
        with Live(
            _table(store, pipeline.status(), dead), console=console, refresh_per_second=8
        ) as view:
            while running():
                await _sleep_or_stop(stop, 0.125)
                view.update(_table(store, pipeline.status(), dead))
    else:
        while running():
            await _sleep_or_stop(stop, min(1.0, max(0.0, deadline - time.monotonic())))
            console.print(
                f"[{time.strftime('%H:%M:%S')}] " + store.context(400).replace("\n", " | "),
                soft_wrap=True,
                markup=False,
            )
    status = await pipeline.drain(timeout=5)
    console.print(_table(store, status, dead))
    console.print("LLM context:\n" + store.context(600), soft_wrap=True, markup=False)
    if dead.total:
        first = dead.letters[0]
        console.print(
            f"{dead.total} dead letters, e.g. stage {first.stage!r}: "
            f"{first.error_type}: {first.message}"
        )
    return status
