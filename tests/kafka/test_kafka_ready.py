"""``/ready`` of the operations server for a Kafka source on the suite's broker: not
ready until the group assigned its partitions, then ready; the lag per partition is
exported as ``rxagent_kafka_lag``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from _helpers import TIME_SCALE
from prometheus_client.parser import text_string_to_metric_families

from rxagent import App, Pipeline, StateStore
from rxagent.kafka import KafkaSource
from rxagent.observe import serve


async def test_ready_waits_for_the_kafka_assignment(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Callable[..., None]
) -> None:
    topic = kafka_topic(2)
    kafka_produce(topic, [json.dumps({"i": i}).encode() for i in range(10)])
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    store = StateStore("seen")
    app = App([Pipeline("orders", source).to(store.sink(key=lambda v: v["i"]))])
    async with serve(app, "127.0.0.1", 0) as server, httpx.AsyncClient(base_url=server.url) as c:
        first = await c.get("/ready")
        assert first.status_code == 503
        await app.start()
        try:
            seen: list[Any] = []
            deadline = time.monotonic() + 30 * TIME_SCALE
            while True:
                response = await c.get("/ready")
                seen.append(response.json()["waiting"])
                if response.status_code == 200:
                    break
                assert time.monotonic() < deadline, seen[-1]
                await asyncio.sleep(0.05)
            assert any("pipeline orders" in w for w in seen)  # it waited, and said for what
            assert response.json() == {"ready": True, "waiting": {}}
            while len(store) < 10:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            families = {
                f.name: f for f in text_string_to_metric_families((await c.get("/metrics")).text)
            }
            lags = families["rxagent_kafka_lag"].samples
            assert {s.labels["partition"] for s in lags} <= {"0", "1"}
            assert all(s.labels["topic"] == topic for s in lags)
            connected = families["rxagent_source_connected"].samples
            assert [s.value for s in connected] == [1.0]
        finally:
            await app.drain(2.0)
