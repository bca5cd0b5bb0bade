"""Kafka messages are charged against the flow's byte credit (issue 12)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

from _helpers import Stall, until

from rxagent import Pipeline
from rxagent.kafka import KafkaSource


async def test_a_stalled_sink_holds_at_most_the_byte_credit_of_large_kafka_messages(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Callable[..., None]
) -> None:
    total, pad, limit = 300, 100_000, 1 << 20  # 30 MB on the topic, 1 MiB in flight
    topic = kafka_topic()
    body = "x" * pad
    kafka_produce(topic, [json.dumps({"i": i, "pad": body}).encode() for i in range(total)])
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        assign=True,
        until_eof=True,
        credit=4096,
    )
    source.credit_bytes = limit
    sink = Stall()
    pipeline = Pipeline("k", source).to(sink)
    await pipeline.start()
    try:
        await until(lambda: sink.count > 0, 20)
        await asyncio.sleep(1.0)  # the source stalls on bytes, far below 4,096 events
        flow = pipeline.status().flow
        assert sink.count < 40, sink.count
        # reading one hop ahead, the source may hold a second batch beyond the limit
        assert flow["bytes_in_flight"] <= 2 * limit + pad + 100
        sink.release()
        await until(lambda: sink.count == total, 20)
    finally:
        status = await pipeline.stop()
        await source.wait_closed()
    assert status.flow["peak_bytes_in_flight"] <= 2 * limit + pad + 100
    assert status.flow["bytes_in_flight"] == 0
