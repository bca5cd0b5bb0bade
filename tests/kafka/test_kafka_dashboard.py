"""The dashboard's Kafka lag per partition, in Debian's headless Chromium (tests/_browser.py),
against a KafkaSource on the suite's broker served by ``rxagent.observe.serve``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from _browser import chromium_page, needs_chromium
from _helpers import TIME_SCALE, Stall

from rxagent import App, Pipeline
from rxagent.kafka.source import KafkaSource
from rxagent.observe import serve as serve_http

WAIT_MS = 20_000 * TIME_SCALE


@pytest.mark.slow
async def test_the_dashboard_shows_the_lag_of_each_partition(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Callable[..., None]
) -> None:
    needs_chromium()
    from playwright.async_api import expect

    topic = kafka_topic(3)
    kafka_produce(topic, [(f"k{i}".encode(), json.dumps({"i": i}).encode()) for i in range(600)])
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        credit=30,
        batch_size=10,
    )
    stall = Stall()  # holds the credit: the source stops reading, the messages wait behind it
    app = App([Pipeline("orders", source).to(stall)], name="kafka-lag")
    async with serve_http(app, "127.0.0.1", 0) as server:
        await app.start()
        try:
            async with chromium_page() as page:
                await page.goto(server.url + "/")
                panel = page.locator('[data-testid=pipeline][data-pipeline="orders"]')
                await expect(panel.get_by_test_id("source-health")).to_have_text(
                    "connected", timeout=WAIT_MS
                )
                rows = panel.get_by_test_id("lag-row")
                await expect(rows).to_have_count(3, timeout=WAIT_MS)
                keys = [await row.get_attribute("data-key") for row in await rows.all()]
                assert sorted(keys) == [f"{topic}/{p}" for p in range(3)]
                lags = panel.locator("[data-testid=lag-row] [data-col=lag]")
                await page.wait_for_function(  # a partition with messages behind the source
                    """() => [...document.querySelectorAll(
                        '[data-pipeline="orders"] [data-testid=lag-row] [data-col=lag]')]
                        .some((cell) => /^[1-9]/.test(cell.textContent))""",
                    timeout=WAIT_MS,
                )
                # credit returns: the source reads to the end and every partition's lag is 0
                stall.release()
                for cell in await lags.all():
                    await expect(cell).to_have_text("0", timeout=WAIT_MS)
                assert page.problems == []
        finally:
            await app.drain(2.0)
