"""The live dashboard in a real headless Chromium (Debian's ``chromium``), driven by
Playwright for Python pointed at that executable (never ``playwright install``).

A real WebSocket server on 127.0.0.1 feeds trades to ``rxagent run FILE --http``
in a subprocess: a filter drops some, a map dead-letters those without a price,
a state sink keeps the last trade per symbol, and a second pipeline reads the
store's changes into a tool with a cooldown (activations and suppressions). The
page must show the graph, counters that move, state rows (and search them), a dead
letter with its reason, the held-back table and the activation timeline, and its
screenshot must not be blank.

``python tests/observe/test_dashboard_browser.py docs/dashboard.png`` takes the
screenshot in docs/operations.md the same way, of ``pipelines/market_feed.yaml``
fed by the simulated market feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _browser import chromium_page, needs_chromium, png_summary

EXE = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"
ROOT = Path(__file__).resolve().parents[2]
TIME_SCALE = float(os.environ.get("RXAGENT_TEST_TIME_SCALE", "1"))
#: How long the page gets to show something (ms, for Playwright's expect).
WAIT_MS = 20_000 * TIME_SCALE

SYMBOLS = ("AAPL", "MSFT", "NVDA", "BTC", "ETH")

PIPELINE_FILE = """\
version: 1
state:
  trades: {description: "the last trade per symbol"}
tools:
  alert: rxagent.demo:alert
pipelines:
  trades:
    description: trades -> positive quantities -> notional -> the last per symbol
    source:
      websocket: {url: "ws://127.0.0.1:${FEED_PORT}/trades", name: feed}
    steps:
      - filter: value.qty > 0
      - map: '{"sym": value.sym, "px": value.px, "notional": value.px * value.qty}'
      - key_by: sym
    sinks:
      - state: {store: trades}
  alerts:
    description: every change of a symbol asks for an alert, at most one per 30 s
    source: {state: trades}
    sinks:
      - tool:
          name: alerts
          tool: alert
          args: {symbol: sym, move_pct: "value.px / 1000"}
          key: sym
          cooldown: 30s
"""


def trade(seq: int) -> dict[str, Any]:
    """Trade ``seq``: every 7th has no quantity (filtered out), every 9th no price
    (the map fails on it: a dead letter); each symbol has both kinds and good ones."""
    sym = SYMBOLS[seq % len(SYMBOLS)]
    out: dict[str, Any] = {"seq": seq, "sym": sym, "px": round(100 + (seq % 97) * 0.25, 2)}
    out["qty"] = 0 if seq % 7 == 3 else 1 + seq % 4
    if seq % 9 == 0:
        del out["px"]
    return out


@contextlib.asynccontextmanager
async def trade_feed(rate: float = 400.0) -> AsyncIterator[int]:
    """A WebSocket server on a free port of 127.0.0.1 sending ``rate`` trades a
    second to each client until it leaves; yields the port."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    numbers = itertools.count(1)

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                for _ in range(max(1, int(rate / 50))):
                    await ws.send(json.dumps(trade(next(numbers))))
                await asyncio.sleep(0.02)

    async with serve(handler, "127.0.0.1", 0) as server:
        yield server.sockets[0].getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def rxagent_run(file: Path, env: dict[str, str], *, cwd: Path) -> AsyncIterator[str]:
    """``rxagent run FILE --http 127.0.0.1:PORT`` in a subprocess; yields the
    dashboard's url once the server listens, and stops it with SIGINT after."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        EXE,
        "run",
        str(file),
        "--no-live",
        "--http",
        f"127.0.0.1:{port}",
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []

    async def drain() -> None:  # its log lines, kept for the failure messages
        assert proc.stdout is not None
        async for line in proc.stdout:
            output.append(line.decode(errors="replace"))

    reading = asyncio.ensure_future(drain())
    try:
        deadline = time.monotonic() + 30 * TIME_SCALE
        while True:
            assert proc.returncode is None, "rxagent run exited:\n" + "".join(output)
            assert time.monotonic() < deadline, f"no server on {port}:\n" + "".join(output)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield f"http://127.0.0.1:{port}/"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await reading


def number(text: str) -> float:
    return float(text.replace(",", "").split("/")[0] or 0)


@pytest.mark.slow
async def test_the_dashboard_shows_a_live_pipeline_in_chromium(tmp_path: Path) -> None:
    needs_chromium()
    from playwright.async_api import expect

    (tmp_path / "trades.yaml").write_text(PIPELINE_FILE)
    async with (
        trade_feed() as feed_port,
        rxagent_run(
            tmp_path / "trades.yaml",
            {"FEED_PORT": str(feed_port)},
            cwd=tmp_path,
        ) as url,
        chromium_page() as page,
    ):
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        await page.goto(url)
        await expect(page.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
        await expect(page.get_by_test_id("app-name")).to_have_text("trades")

        # the graph: feed -> filter -> map -> key_by -> the state sink
        trades = page.locator('[data-testid=pipeline][data-pipeline="trades"]')
        nodes = trades.get_by_test_id("graph-node")
        await expect(nodes).to_have_count(5, timeout=WAIT_MS)
        roles = [await n.get_attribute("data-role") for n in await nodes.all()]
        assert roles == ["source", "operator", "operator", "operator", "sink"]
        ids = [await n.get_attribute("data-node") for n in await nodes.all()]
        assert ids[:4] == ["feed", "filter", "map", "key_by"], ids
        await expect(trades.get_by_test_id("graph-edge")).to_have_count(4)
        edge = trades.locator('[data-testid=graph-edge][data-from="feed"]')
        assert await edge.get_attribute("data-to") == "filter"

        # counters, and that they move
        filter_in = trades.locator('[data-testid=stage-row][data-key="filter"] [data-col=in]')
        await expect(filter_in).not_to_have_text("0", timeout=WAIT_MS)
        first = number(await filter_in.text_content() or "")
        await expect(filter_in).not_to_have_text(f"{first:,.0f}", timeout=WAIT_MS)
        assert number(await filter_in.text_content() or "") > first
        feed_rate = trades.locator(
            '[data-testid=graph-node][data-node="feed"] [data-testid=node-rate]'
        )
        await expect(feed_rate).not_to_have_text("0.0/s", timeout=WAIT_MS)
        assert number((await feed_rate.text_content() or "").removesuffix("/s")) > 0
        await expect(trades.get_by_test_id("pipeline-state")).to_have_text("running")
        await expect(trades.get_by_test_id("source-health")).to_have_text("connected")

        # drops and dead letters, on the stages and on the graph's edges
        dropped = trades.locator('[data-testid=stage-row][data-key="filter"] [data-col=dropped]')
        await expect(dropped).not_to_have_text("0", timeout=WAIT_MS)
        dead = trades.locator('[data-testid=stage-row][data-key="map"] [data-col=dead_lettered]')
        await expect(dead).not_to_have_text("0", timeout=WAIT_MS)
        filter_drops = trades.locator('[data-node="filter"] [data-testid=edge-drops]')
        await expect(filter_drops).to_have_attribute("visibility", "visible")
        await expect(filter_drops).to_contain_text("dropped")
        await expect(trades.locator('[data-node="map"] [data-testid=edge-drops]')).to_contain_text(
            "dead"
        )

        # a dead letter with its reason
        letter = page.get_by_test_id("dead-letter-row").first
        await expect(letter).to_be_visible(timeout=WAIT_MS)
        await expect(letter.locator("[data-col=stage]")).to_have_text("map")
        await expect(letter.locator("[data-col=reason]")).to_contain_text("no field 'px'")
        await expect(letter.locator("[data-col=value]")).to_contain_text('"qty"')

        # state rows: one per symbol, their versions moving; search narrows them
        rows = page.get_by_test_id("state-row")
        await expect(rows).to_have_count(len(SYMBOLS), timeout=WAIT_MS)
        await expect(page.get_by_test_id("store-picker")).to_have_value("trades")
        nvda = page.locator('[data-testid=state-row][data-key="NVDA"]')
        await expect(nvda.locator("[data-col=value]")).to_contain_text('"sym":"NVDA"')
        version = await nvda.locator("[data-col=version]").text_content()
        await expect(nvda.locator("[data-col=version]")).not_to_have_text(
            version or "", timeout=WAIT_MS
        )
        await page.get_by_test_id("state-search").fill("NVDA")
        await expect(rows).to_have_count(1, timeout=WAIT_MS)
        await expect(rows.first.locator("[data-col=key]")).to_have_text("NVDA")
        await expect(page.get_by_test_id("state-count")).to_contain_text("matching")
        await page.get_by_test_id("state-search").fill("")
        await expect(rows).to_have_count(len(SYMBOLS), timeout=WAIT_MS)

        # the tool: activations on the timeline, the cooldown in the held-back table
        alerts = page.locator('[data-testid=pipeline][data-pipeline="alerts"]')
        await expect(page.get_by_test_id("activation").first).to_be_attached(timeout=WAIT_MS)
        held = alerts.get_by_test_id("suppression-row").first
        await expect(held).to_be_visible(timeout=WAIT_MS)
        await expect(held.locator("[data-col=reason]")).to_have_text("cooldown")
        await expect(page.get_by_test_id("tool-row")).to_have_count(1)

        # it rendered at most once per frame, cheaply, and drew something
        stats = await page.evaluate("window.rxagentDashboard")
        assert stats["snapshots"] >= 3
        assert stats["renders"] <= stats["snapshots"] + 2
        assert stats["maxRenderMs"] < 250, stats
        box = await trades.get_by_test_id("graph").bounding_box()
        assert box is not None
        assert box["width"] > 500
        assert box["height"] > 60
        await page.evaluate("window.scrollTo(0, 0)")
        shot = await page.screenshot(full_page=True)
        (tmp_path / "dashboard.png").write_bytes(shot)
        width, height, distinct, nonzero = png_summary(shot)
        assert (width, height >= 1000) == (1400, True)
        assert distinct > 64, distinct
        assert nonzero > 0.01, nonzero
        assert page.problems == []
        # it works offline: nothing fetched but the server's own page, files and api/
        assert requests
        assert [r for r in requests if not r.startswith(url)] == []
        assert {r.removeprefix(url).split("?")[0] for r in requests} >= {
            "",
            "static/dashboard.js",
            "static/dashboard.css",
            "api/events",
        }


def test_a_blank_screenshot_is_told_apart() -> None:
    """png_summary's measure against a real blank page and a drawn one."""
    needs_chromium()

    async def shots() -> tuple[bytes, bytes]:
        async with chromium_page(400, 300) as page:
            await page.set_content("<body style='margin:0;background:#fff'></body>")
            blank = await page.screenshot()
            await page.set_content(
                "<body><h1>rxagent</h1><svg width=300 height=80><rect width=200 height=40"
                " fill=teal /><text x=10 y=70>12.3/s</text></svg></body>"
            )
            return blank, await page.screenshot()

    blank, drawn = asyncio.run(shots())
    _, _, blank_distinct, blank_nonzero = png_summary(blank)
    _, _, distinct, nonzero = png_summary(drawn)
    assert blank_distinct < 16
    assert blank_nonzero < 0.01
    assert distinct > 64
    assert nonzero > 0.01


async def docs_screenshot(target: Path, *, seconds: float = 40.0) -> None:
    """The screenshot of docs/operations.md: ``pipelines/market_feed.yaml`` fed by the
    simulated market feed, served by ``rxagent run --http``, after ``seconds``."""
    from rxagent.demo import MarketFeedServer

    async with MarketFeedServer(rate=2000) as feed:
        port = feed.url.split(":")[2].split("/")[0]
        async with (
            rxagent_run(
                ROOT / "pipelines" / "market_feed.yaml",
                {"MARKET_PORT": port},
                cwd=ROOT,
            ) as url,
            chromium_page(1400, 900) as page,
        ):
            await page.goto(url)
            await asyncio.sleep(seconds)
            shot = await page.screenshot(full_page=True)
            await asyncio.to_thread(target.write_bytes, shot)
            assert page.problems == [], page.problems


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")
    asyncio.run(docs_screenshot(out))
    print(f"wrote {out}: {png_summary(out.read_bytes())[:2]}")
