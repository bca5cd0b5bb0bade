"""The Kafka source's columns: each message's value, key, time, headers and offset stay
together whatever fails to decode, and a batch's messages are let go as their values
are decoded (issue 16: half the collector's young collections)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from rxagent import Pipeline
from rxagent.kafka import KafkaPartition, KafkaSource
from rxagent.kafka.consumer import ConsumerStats, ConsumerThread, _decode_letting_go
from rxagent.sinks import ListSink, MemoryDeadLetters

BASE_MS = 1_700_000_000_000


def message(offset: int, value: bytes | None, key: bytes | None = None, **extra: Any) -> Any:
    """A real confluent-kafka message (the class librdkafka's messages have)."""
    return Message(topic="t", partition=0, offset=offset, key=key, value=value, **extra)


def test_values_are_decoded_as_the_messages_are_let_go() -> None:
    messages = [message(i, json.dumps(i).encode()) for i in range(5)]
    raws = [m.value() for m in messages]
    taken = list(messages)
    values: list[Any] = []
    _decode_letting_go(json.loads, raws, taken, values)
    assert values == [0, 1, 2, 3, 4]
    assert taken == []  # every message let go


def test_a_value_that_fails_keeps_its_message_and_those_after_it_in_order() -> None:
    raws = [b"0", b"1", b"{bad", b"3", b"4"]
    messages = [message(i, raw) for i, raw in enumerate(raws)]
    taken = list(messages)
    values: list[Any] = []
    with pytest.raises(json.JSONDecodeError, match="Expecting"):
        _decode_letting_go(json.loads, raws, taken, values)
    assert values == [0, 1]
    assert taken == messages[2:]


def test_tombstones_stay_none_and_a_failure_on_the_first_row_keeps_every_message() -> None:
    values: list[Any] = []
    taken = [message(0, None), message(1, b"7")]
    _decode_letting_go(json.loads, [None, b"7"], taken, values)
    assert (values, taken) == ([None, 7], [])
    messages = [message(0, b"x"), message(1, b"1")]
    taken, values = list(messages), []
    with pytest.raises(json.JSONDecodeError, match="Expecting"):
        _decode_letting_go(json.loads, [b"x", b"1"], taken, values)
    assert (values, taken) == ([], messages)


@pytest.fixture
def consumer_thread() -> Iterator[Callable[..., ConsumerThread]]:
    """A source's consumer thread object, for its ``_columns`` (no consumer is opened)."""
    loop = asyncio.new_event_loop()
    made: list[ConsumerThread] = []

    def make(**options: Any) -> ConsumerThread:
        source = KafkaSource(
            "t", bootstrap_servers="127.0.0.1:9", group_id="g", assign=True, **options
        )
        thread = ConsumerThread(source._settings(), ConsumerStats(), None, loop)  # type: ignore[arg-type]
        made.append(thread)
        return thread

    yield make
    for thread in made:
        thread.executor.shutdown()
    loop.close()


def test_every_column_stays_with_its_row_when_values_and_keys_fail(
    consumer_thread: Callable[..., ConsumerThread],
) -> None:
    values = [b"0", b"1", b"{bad", b"3", b"4", b"\xff", b"6", b"7"]
    keys = [b'"k0"', b'"k1"', b'"k2"', b'"k3"', b"{k4", b'"k5"', b'"k6"', b'"k7"']
    # offsets with a gap (compaction): positions are a list, not a range
    offsets = [10, 11, 12, 13, 14, 15, 20, 21]
    messages = [
        message(
            offsets[i],
            values[i],
            keys[i],
            timestamp=(1, BASE_MS + i * 1000),
            headers=[("i", str(i).encode())],
        )
        for i in range(8)
    ]
    batch = list(messages)
    rows = consumer_thread(key_decode="json")._columns(KafkaPartition("t", 0), batch)
    good = [0, 1, 3, 6, 7]
    assert rows.values == [int(values[i]) for i in good]
    assert rows.keys == [f"k{i}" for i in good]
    assert list(rows.positions) == [offsets[i] for i in good]
    assert rows.times == [(BASE_MS + i * 1000) / 1000 for i in good]
    assert rows.headers == [{"i": str(i).encode()} for i in good]
    # the bad ones keep their message (for the dead letter) and their place
    assert [(before, m.offset()) for before, m, _ in rows.bad] == [(2, 12), (3, 14), (3, 15)]
    assert rows.end == 22
    assert rows.nbytes == sum(map(len, values)) * 5 // 8


def test_a_clean_batch_is_a_range_of_offsets_and_lets_every_message_go(
    consumer_thread: Callable[..., ConsumerThread],
) -> None:
    messages = [
        message(100 + i, json.dumps({"n": i}).encode(), f"k{i}".encode(), timestamp=(1, BASE_MS))
        for i in range(4)
    ]
    batch = list(messages)
    rows = consumer_thread()._columns(KafkaPartition("t", 0), batch)
    assert batch == []
    assert rows.values == [{"n": i} for i in range(4)]
    assert rows.keys == ["k0", "k1", "k2", "k3"]
    assert rows.positions == range(100, 104)
    assert rows.times == [BASE_MS / 1000] * 4
    assert rows.headers is None  # no message has headers
    assert (rows.bad, rows.end) == ([], 104)


def test_metadata_not_asked_for_is_not_read(
    consumer_thread: Callable[..., ConsumerThread],
) -> None:
    batch = [message(0, b"1", b"k", timestamp=(1, BASE_MS), headers=[("h", b"v")])]
    rows = consumer_thread(key_decode=None, timestamps=False, headers=False)._columns(
        KafkaPartition("t", 0), batch
    )
    assert (rows.values, rows.keys, rows.times, rows.headers) == ([1], None, None, None)


async def test_events_and_dead_letters_carry_their_own_key_time_and_headers(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(1)
    values = [b"0", b"1", b"{bad", b"3", b"\xff", b"5"]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i, value in enumerate(values):
        producer.produce(
            topic,
            value,
            f"k{i}".encode(),
            timestamp=BASE_MS + i * 1000,
            headers=[("i", str(i).encode())],
        )
    assert producer.flush(10) == 0
    letters = MemoryDeadLetters()
    sink = ListSink()
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        assign=True,
        until_eof=True,
    )
    await asyncio.wait_for(Pipeline("cols", source, dead_letters=letters).to(sink).run(), 30)
    await source.wait_closed()
    got = [(e.value, e.key, e.time, e.headers, e.position.offset) for e in sink.events]
    assert got == [
        (int(values[i]), f"k{i}", (BASE_MS + i * 1000) / 1000, {"i": str(i).encode()}, i)
        for i in (0, 1, 3, 5)
    ]
    dead = [(d.event.position.offset, d.event.time, d.event.headers) for d in letters.letters]
    assert dead == [(i, (BASE_MS + i * 1000) / 1000, {"i": str(i).encode()}) for i in (2, 4)]
    # every credit taken for a read came back (the last read, after the end, too)
    assert source._consumer is not None
    flow = source._consumer.out.flow
    assert flow.free == flow.capacity


@pytest.mark.parametrize("where", [[0], [2], [4], [1, 2], [0, 3, 4], [0, 1, 2, 3, 4]])
def test_tombstones_found_by_a_decoder_that_refuses_none_stay_none(
    consumer_thread: Callable[..., ConsumerThread], where: list[int]
) -> None:
    """The source's own decoders raise for a tombstone's None, so no pass looks for
    tombstones first: the rows from one on are decoded again, tombstones kept."""
    raws: list[bytes | None] = [None if i in where else json.dumps(i).encode() for i in range(5)]
    batch = [message(10 + i, raw, timestamp=(1, BASE_MS)) for i, raw in enumerate(raws)]
    rows = consumer_thread()._columns(KafkaPartition("t", 0), batch)
    assert batch == []  # every message let go
    assert rows.values == [None if i in where else i for i in range(5)]
    assert (rows.bad, rows.positions) == ([], range(10, 15))
    assert rows.nbytes == sum(len(raw) for raw in raws if raw is not None)


def test_a_bad_value_after_a_tombstone_is_a_bad_row_in_its_place(
    consumer_thread: Callable[..., ConsumerThread],
) -> None:
    raws = [b"0", None, b"2", b"{bad", None, b"5"]
    batch = [message(i, raw) for i, raw in enumerate(raws)]
    rows = consumer_thread()._columns(KafkaPartition("t", 0), batch)
    assert rows.values == [0, None, 2, None, 5]
    assert [(before, m.offset()) for before, m, _ in rows.bad] == [(3, 3)]


def test_messages_without_a_timestamp_have_no_event_time(
    consumer_thread: Callable[..., ConsumerThread],
) -> None:
    # kind 0 (not available) comes with ms -1; kind 1 and 2 are create and log-append time
    stamps = [(1, BASE_MS), (0, -1), (2, BASE_MS + 500)]
    batch = [message(i, b"1", timestamp=stamp) for i, stamp in enumerate(stamps)]
    rows = consumer_thread()._columns(KafkaPartition("t", 0), batch)
    assert rows.times == [BASE_MS / 1000, None, (BASE_MS + 500) / 1000]
    batch = [message(i, b"1", timestamp=(0, -1)) for i in range(3)]
    assert consumer_thread()._columns(KafkaPartition("t", 0), batch).times is None
    batch = [message(0, b"1", timestamp=(1, -5000)), message(1, b"1", timestamp=(1, BASE_MS))]
    assert consumer_thread()._columns(KafkaPartition("t", 0), batch).times == [-5.0, BASE_MS / 1000]


@pytest.mark.parametrize(
    ("key_decode", "keys", "expected"),
    [
        ("text", [b"a", None, b"c"], ["a", None, "c"]),
        ("text", [None, None, None], None),
        ("text", [b"a", b"\xff", b"c"], ["a", b"\xff", "c"]),  # not UTF-8: stays bytes
        ("bytes", [b"a", None, b"\xff"], [b"a", None, b"\xff"]),
        ("bytes", [None, None, None], None),
        ("json", [b'"a"', None, b"[1, 2]"], ["a", None, (1, 2)]),
    ],
)
def test_keys_are_decoded_with_none_for_a_message_without_one(
    consumer_thread: Callable[..., ConsumerThread],
    key_decode: str,
    keys: list[bytes | None],
    expected: list[Any] | None,
) -> None:
    batch = [message(i, b"1", key) for i, key in enumerate(keys)]
    rows = consumer_thread(key_decode=key_decode)._columns(KafkaPartition("t", 0), batch)
    assert rows.keys == expected


def test_a_decoder_of_the_users_sees_no_tombstone(
    consumer_thread: Callable[..., ConsumerThread],
) -> None:
    """A decoder the source did not build may accept None: tombstones are looked for
    first, and stay None without reaching it."""
    seen: list[Any] = []

    def decode(raw: bytes) -> Any:
        seen.append(raw)
        return "decoded"

    batch = [message(0, b"x"), message(1, None), message(2, b"y")]
    rows = consumer_thread(decode=decode)._columns(KafkaPartition("t", 0), batch)
    assert (rows.values, seen) == (["decoded", None, "decoded"], [b"x", b"y"])
