"""The operations HTTP server (rxagent.observe) against a pipeline fed by a real
WebSocket server on 127.0.0.1: /metrics parsed by the Prometheus client's own parser,
/healthz with a reducer that blocks the loop, /ready until the source connects, the
dashboard's data API, and the Host / Origin / token refusals."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from _helpers import TIME_SCALE, until
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.server import ServerConnection, serve

from rxagent import App, Pipeline, StateStore
from rxagent import operators as ops
from rxagent.backoff import Backoff
from rxagent.observe import ObserveServer
from rxagent.observe import serve as serve_http
from rxagent.sinks import activate
from rxagent.tools import tool
from rxagent.websocket.source import WebSocketSource

FAST = Backoff(initial=0.02, factor=1.0, max_delay=0.02, jitter="none", max_attempts=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Feed:
    """A WebSocket server on 127.0.0.1 sending what the test puts in ``queue``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        closed = asyncio.ensure_future(ws.wait_closed())
        while True:
            item = asyncio.ensure_future(self.queue.get())
            await asyncio.wait({item, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                item.cancel()
                return
            await ws.send(json.dumps(item.result()))

    def send(self, *items: Any) -> None:
        for item in items:
            self.queue.put_nowait(item)


@asynccontextmanager
async def feed_on(port: int) -> AsyncIterator[Feed]:
    feed = Feed()
    async with serve(feed.handler, "127.0.0.1", port):
        yield feed


async def alert(sym: str, px: float) -> str:
    """Alert on a price."""
    if px < 0:
        raise ValueError("negative price")
    return f"{sym} {px}"


def _reducer(old: Any, event: Any) -> Any:
    tick = event.value
    if tick.get("sleep"):
        time.sleep(tick["sleep"] * TIME_SCALE)  # holds the event loop on purpose
    return tick["px"]


def _pipeline(url: str) -> tuple[App, StateStore]:
    prices = StateStore("prices")
    source = WebSocketSource(url, backoff=FAST, name="ticks")
    pipeline = (
        Pipeline("feed", source)
        .pipe(
            ops.filter(lambda t: t.get("sym") != "skip", name="only_real"),
            ops.map(lambda t: {**t, "px": 100.0 / t["div"]}, name="price"),
            ops.key_by("sym"),
        )
        .to(
            prices.sink(reducer=_reducer),
            activate(tool(alert), args=lambda t: {"sym": t["sym"], "px": t["px"]}, key="sym"),
        )
    )
    return App([pipeline], name="observed"), prices


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[ObserveServer, Feed, httpx.AsyncClient]]:
    """A pipeline on a local WebSocket feed, its HTTP server, and a client of it."""
    port = _free_port()
    app, _ = _pipeline(f"ws://127.0.0.1:{port}/feed")
    async with (
        serve_http(app, "127.0.0.1", 0, **options) as server,
        feed_on(port) as feed,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        await app.start()
        try:
            yield server, feed, client
        finally:
            await app.drain(1.0)


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    family_name = sample_name.removesuffix("_total").removesuffix("_bucket")
    family_name = family_name.removesuffix("_count").removesuffix("_sum")
    for sample in families[family_name].samples:
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no sample {sample_name} {labels}")


async def test_metrics_move_as_events_flow_with_documented_names() -> None:
    async with running() as (server, feed, client):
        await until(lambda: server.observer.ready().ready)
        feed.send(*[{"sym": "A", "div": 1, "i": i} for i in range(5)], {"sym": "skip", "div": 1})
        feed.send({"sym": "B", "div": 0})  # ZeroDivisionError: a dead letter of 'price'
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")

        async def scrape() -> dict[str, Any]:
            return _families((await client.get("/metrics")).text)

        deadline = time.monotonic() + 10 * TIME_SCALE
        while True:
            families = await scrape()
            try:
                moved = (
                    _value(families, "rxagent_stage_dead_letters_total", stage="price") == 1
                    and _value(families, "rxagent_tool_calls_total", tool="alert", outcome="ok")
                    == 5
                )
            except AssertionError:
                moved = False
            if moved:
                break
            assert time.monotonic() < deadline, "metrics never moved"
            await asyncio.sleep(0.05)
        first = _value(
            families,
            "rxagent_stage_events_total",
            pipeline="feed",
            stage="only_real",
            direction="in",
        )
        assert first == 7
        assert (
            _value(families, "rxagent_stage_dropped_total", pipeline="feed", stage="only_real") == 1
        )
        assert _value(families, "rxagent_source_connected", pipeline="feed", source="ticks") == 1
        assert _value(families, "rxagent_source_ready", pipeline="feed", source="ticks") == 1
        assert _value(families, "rxagent_state_entries", store="prices") == 1
        assert _value(families, "rxagent_state_version", store="prices") >= 1
        assert _value(families, "rxagent_flow_credit", pipeline="feed") > 0
        assert _value(families, "rxagent_flow_in_flight", pipeline="feed") >= 0
        assert _value(families, "rxagent_tool_duration_seconds_count", tool="alert") == 5
        assert (
            _value(families, "rxagent_tool_duration_seconds_bucket", tool="alert", le="+Inf") == 5
        )
        assert (
            _value(
                families,
                "rxagent_source_to_sink_seconds_count",
                pipeline="feed",
                sink="state:prices",
            )
            == 5
        )
        assert families["rxagent_source_to_sink_seconds"].type == "histogram"
        assert families["rxagent_stage_events"].type == "counter"
        assert families["rxagent_loop_lag_seconds"].type == "gauge"
        # counters move between two scrapes
        store = server.observer.stores["prices"]
        version = store.version
        feed.send(*[{"sym": "C", "div": 2, "i": i} for i in range(3)])
        await until(lambda: store.version >= version + 3)
        later = await scrape()
        assert (
            _value(
                later,
                "rxagent_stage_events_total",
                pipeline="feed",
                stage="only_real",
                direction="in",
            )
            == first + 3
        )
        # every documented name is served
        documented = {
            "rxagent_stage_events",
            "rxagent_stage_dropped",
            "rxagent_stage_dead_letters",
            "rxagent_stage_errors",
            "rxagent_suppressions",
            "rxagent_flow_in_flight",
            "rxagent_flow_credit",
            "rxagent_source_connected",
            "rxagent_source_reconnects",
            "rxagent_kafka_lag",
            "rxagent_state_entries",
            "rxagent_state_version",
            "rxagent_tool_calls",
            "rxagent_tool_duration_seconds",
            "rxagent_source_to_sink_seconds",
            "rxagent_loop_lag_seconds",
        }
        missing = documented - set(later)
        assert not missing, missing


async def test_ready_waits_for_the_websocket_source_to_connect() -> None:
    port = _free_port()
    app, _ = _pipeline(f"ws://127.0.0.1:{port}/feed")
    async with (
        serve_http(app, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        before = await client.get("/ready")
        assert before.status_code == 503
        assert before.json()["waiting"] == {"pipeline feed": "pipeline created"}
        await app.start()
        try:
            response = await client.get("/ready")
            assert response.status_code == 503
            waiting = response.json()["waiting"]["pipeline feed"]
            assert waiting["source"] == "ticks"
            assert waiting["state"] in ("connecting", "reconnecting")
            async with feed_on(port):
                deadline = time.monotonic() + 10 * TIME_SCALE
                while (await client.get("/ready")).status_code != 200:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                assert (await client.get("/ready")).json() == {"ready": True, "waiting": {}}
        finally:
            await app.drain(1.0)


async def test_healthz_fails_while_and_after_a_reducer_blocks_the_loop() -> None:
    async with running(health_threshold=0.5 * TIME_SCALE, health_window=30.0) as (
        server,
        feed,
        client,
    ):
        await until(lambda: server.observer.ready().ready)
        healthy = await client.get("/healthz")
        assert healthy.status_code == 200
        body = healthy.json()
        assert body["ok"] is True
        assert body["loop_lag"] < 0.5 * TIME_SCALE

        outcome: dict[str, Any] = {}

        def probe() -> None:  # a probe from outside the loop, as an orchestrator's
            time.sleep(0.2 * TIME_SCALE)
            try:
                outcome["status"] = httpx.get(server.url + "/healthz", timeout=0.4).status_code
            except httpx.TimeoutException:
                outcome["status"] = "timeout"

        thread = threading.Thread(target=probe)
        thread.start()
        feed.send({"sym": "A", "div": 1, "sleep": 1.5})  # the reducer sleeps 1.5 s
        await until(lambda: not thread.is_alive(), timeout=10)
        thread.join()
        assert outcome["status"] == "timeout"  # a blocked loop cannot answer at all
        after = await client.get("/healthz")
        assert after.status_code == 503
        assert after.json()["ok"] is False
        assert after.json()["max_loop_lag"] >= 1.0 * TIME_SCALE


async def test_snapshot_and_events_follow_the_contract() -> None:
    async with running(events_interval=0.2) as (server, feed, client):
        await until(lambda: server.observer.ready().ready)
        feed.send({"sym": "A", "div": 4}, {"sym": "B", "div": 0}, {"sym": "C", "div": -1})
        await until(lambda: len(server.observer.activations) >= 2)
        snap = (await client.get("/api/snapshot")).json()
        assert snap["app"] == "observed"
        assert isinstance(snap["time"], float)
        feed_status = snap["pipelines"]["feed"]
        assert feed_status["state"] == "running"
        assert {"stages", "flow", "source", "sinks", "suppressions"} <= set(feed_status)
        graph = feed_status["graph"]
        assert [n["id"] for n in graph["nodes"]] == [
            "ticks",
            "only_real",
            "price",
            "key_by",
            "state:prices",
            "tool:alert",
        ]
        assert [n["role"] for n in graph["nodes"]] == ["source"] + ["operator"] * 3 + ["sink"] * 2
        assert {"from": "key_by", "to": "tool:alert"} in graph["edges"]
        assert snap["stores"]["prices"]["entries"] == 2
        assert snap["stores"]["prices"]["version"] == 2
        assert isinstance(snap["stores"]["prices"]["staleness"], float)
        tools = snap["tools"]["alert"]
        assert tools["calls"] == 2
        assert tools["failures"] == 1
        assert {"retries", "busy", "cooldown", "p50", "p99"} <= set(tools)
        letters = snap["dead_letters"]
        assert sorted(d["stage"] for d in letters) == ["price", "tool:alert"]
        assert letters[0]["time"] >= letters[1]["time"]  # newest first
        [letter] = [d for d in letters if d["stage"] == "price"]
        assert letter["pipeline"] == "feed"
        assert letter["reason"].startswith("ZeroDivisionError")
        assert json.loads(letter["value"]) == {"sym": "B", "div": 0}
        activations = snap["activations"]
        assert [a["ok"] for a in activations] == [False, True]  # newest first
        assert "negative price" in activations[0]["error"]
        assert {"tool", "key", "started", "duration", "ok", "error"} <= set(activations[0])

        state = (await client.get("/api/state/prices", params={"q": "-100", "limit": 5})).json()
        assert state["store"] == "prices"
        assert state["total"] == 2
        assert [e["key"] for e in state["entries"]] == ["C"]
        assert {"key", "value", "version", "updated_at", "staleness"} <= set(state["entries"][0])
        assert (await client.get("/api/state/nope")).status_code == 404
        assert (await client.get("/api/state/prices", params={"limit": 5000})).status_code == 400

        seen: list[dict[str, Any]] = []
        async with client.stream("GET", "/api/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            started = time.monotonic()
            event = None
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    assert event == "snapshot"
                    seen.append(json.loads(line.removeprefix("data: ")))
                    if len(seen) == 1:
                        feed.send({"sym": "D", "div": 5})
                    if seen[-1]["stores"]["prices"]["entries"] == 3:
                        break
                assert time.monotonic() - started < 10 * TIME_SCALE
        assert seen[0]["stores"]["prices"]["entries"] == 2
        assert seen[-1]["stores"]["prices"]["entries"] == 3
        assert set(seen[0]) == set(snap)


async def test_host_origin_and_token_are_checked() -> None:
    token = "tok-" + "x" * 24
    async with running(token=token) as (server, _feed, client):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/api/snapshot")).status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/metrics", headers=good)).status_code == 200
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.get("/healthz", headers=wrong)).status_code == 401
        host = await client.get("/metrics", headers={**good, "Host": "evil.example:80"})
        assert host.status_code == 421
        origin = await client.get("/metrics", headers={**good, "Origin": "http://evil.example"})
        assert origin.status_code == 403
        local = await client.get("/metrics", headers={**good, "Origin": server.url})
        assert local.status_code == 200
        # a browser opens /?token=... once; the cookie carries it afterwards
        opened = await client.get("/", params={"token": token})
        assert opened.status_code == 303
        assert opened.headers["location"] == "/"
        assert "httponly" in opened.headers["set-cookie"].lower()
        assert token not in (await client.get("/api/snapshot", headers=good)).text
        cookie_client = httpx.AsyncClient(base_url=server.url, cookies={"rxagent_token": token})
        async with cookie_client:
            assert (await cookie_client.get("/api/snapshot")).status_code == 200


async def test_a_non_loopback_address_needs_allowed_hosts() -> None:
    from rxagent import ConfigurationError

    app, _ = _pipeline("ws://127.0.0.1:9/feed")
    with pytest.raises(ConfigurationError, match="allow-host"):
        async with serve_http(app, "0.0.0.0", 0):
            pass
