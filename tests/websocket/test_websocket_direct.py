"""The WebSocket source's reads from the connection's own callback (issue 16): while
the reader holds credit and waits, the messages ``websockets`` queued are emitted in
the loop callback that read them, and everything that callback cannot do (no credit,
a fragmented message, text that is not UTF-8, the connection's end, an error) goes
through the reader and ``recv()`` as before."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from _helpers import until
from test_websocket_source import FAST, Gate, recorder, serving
from websockets.asyncio.server import ServerConnection

from rxagent import Pipeline, PipelineError
from rxagent.events import Batch
from rxagent.sinks import ListSink, Sink
from rxagent.websocket.source import WebSocketSource


class Batches(Sink):
    """Ends every batch; records its values and whether a task emitted it."""

    kind = "batches"

    def __init__(self) -> None:
        super().__init__()
        self.values: list[Any] = []
        self.in_task: list[bool] = []

    def on_batch(self, batch: Batch) -> None:
        self.values.extend(batch.values)
        self.in_task.append(asyncio.current_task() is not None)
        batch.end_all()


async def test_a_trickle_is_emitted_from_the_connections_callback_not_a_task() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(20):
            await ws.send(json.dumps({"seq": i}))
            await asyncio.sleep(0.005)
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        sink = Batches()
        pipeline = Pipeline("ws", WebSocketSource(url, subscribe=["hi"])).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) == 20)
        status = await pipeline.stop()
    assert sink.values == [{"seq": i} for i in range(20)]
    # the reader parks once it holds credit and nothing is queued; from then on the
    # connection's data_received emits (no task is running there)
    assert sink.in_task.count(False) >= 15, sink.in_task
    assert status.flow["in_flight"] == 0


async def test_text_binary_and_fragmented_messages_arrive_whole_and_in_order() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await asyncio.sleep(0.05)  # the reader is parked: the callback reads
        await ws.send("a")
        await ws.send(b"\x00\x01")
        await ws.send(["he", "llo"])  # one text message in two frames
        await asyncio.sleep(0.01)
        await ws.send([b"x", b"y", b"z"])  # one binary message in three frames
        await ws.send("é")
        await asyncio.sleep(0.01)
        await ws.send(b"end")
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        sink = ListSink()
        source = WebSocketSource(url, subscribe=["hi"], decode="raw")
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) == 6)
        status = await pipeline.stop()
    assert sink.values == ["a", b"\x00\x01", "hello", b"xyz", "é", b"end"]
    assert [type(v) for v in sink.values] == [str, bytes, str, bytes, str, bytes]
    assert status.source["connects"] == 1


async def test_text_that_is_not_utf8_closes_with_1007_and_the_source_reconnects() -> None:
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ws.recv()
        await asyncio.sleep(0.05)  # the reader is parked: the callback meets it first
        if connections == 1:
            await ws.send(json.dumps({"seq": 0}))
            # a hostile peer: a text frame that is not UTF-8
            async with ws.send_context():
                ws.protocol.send_text(b"\xff\xfe")
        else:
            await ws.send(json.dumps({"seq": 1}))
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=["go"], backoff=FAST)
        events = recorder(source)
        sink = ListSink()
        pipeline = Pipeline("ws", source).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) == 2)
        status = await pipeline.stop()
    assert sink.values == [{"seq": 0}, {"seq": 1}]
    closed = next(e for e in events if e.kind == "closed")
    assert closed.code == 1007
    assert status.source["reconnects"] >= 1


async def test_a_burst_beyond_the_credit_waits_for_credit_and_loses_nothing() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await asyncio.sleep(0.05)
        for i in range(30):
            await ws.send(json.dumps({"seq": i}))
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        source = WebSocketSource(url, subscribe=["hi"], credit=4, batch_size=4)
        gate = Gate()
        pipeline = Pipeline("ws", source).to(gate)
        await pipeline.start()
        await until(lambda: len(gate.values) == 4)
        await asyncio.sleep(0.05)  # more is queued, but no credit is free
        assert len(gate.values) == 4
        assert pipeline.flow is not None
        assert pipeline.flow.in_flight == 4
        gate.open()
        await until(lambda: len(gate.values) == 30)
        status = await pipeline.stop()
    assert gate.values == [{"seq": i} for i in range(30)]
    assert status.flow["peak_in_flight"] <= 4


@pytest.mark.parametrize("binary", [False, True])
async def test_an_error_of_an_emission_from_the_callback_reaches_the_pipeline(
    binary: bool,
) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"seq": 0}))
        await asyncio.sleep(0.05)  # the reader is parked: the callback emits
        async with ws.send_context():
            bad = b"not json{"
            if binary:
                ws.protocol.send_binary(bad)
            else:
                ws.protocol.send_text(bad)
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        sink = ListSink()
        source = WebSocketSource(url, subscribe=["hi"])
        pipeline = Pipeline("ws", source, fail_fast=True).to(sink)
        with pytest.raises(PipelineError, match="cannot decode"):
            await pipeline.run(timeout=5)
    assert sink.values == [{"seq": 0}]


async def test_a_sink_that_raises_in_the_callback_fails_the_pipeline_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Sink):
        kind = "broken"

        def on_batch(self, batch: Batch) -> None:
            raise RuntimeError("sink broke")

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await asyncio.sleep(0.05)  # the reader is parked: the callback emits
        async with ws.send_context():  # in one write: a message, then one in two frames
            ws.protocol.send_text(b'{"seq": 0}')
            ws.protocol.send_text(b'{"seq"', fin=False)
            ws.protocol.send_continuation(b": 1}", fin=True)
        await ws.wait_closed()

    async with serving(handler) as (url, _):
        pipeline = Pipeline("ws", WebSocketSource(url, subscribe=["hi"])).to(Broken())
        with pytest.raises(PipelineError, match="sink broke"):
            await pipeline.run(timeout=5)
    # the failure cancelled the reader from inside the connection's callback: nothing
    # reached asyncio's or websockets' error handlers
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]
    assert not [r for r in caplog.records if r.name.startswith(("asyncio", "websockets"))]
