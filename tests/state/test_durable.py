"""Durable stores on local disk: restore, checkpoints, codecs and the errors users see."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rxagent import DELETE, Event, Pipeline, StateError, StateStore
from rxagent import operators as ops
from rxagent.kafka import KafkaPartition
from rxagent.sources import memory


def add(old: Any, event: Event) -> int:
    return (old or 0) + event.value["n"]


def events(n: int) -> list[dict[str, Any]]:
    return [{"k": f"k{i % 5}", "n": i} for i in range(n)]


async def fold(store: StateStore, data: list[dict[str, Any]]) -> None:
    await Pipeline("fold", memory(data)).pipe(ops.key_by("k")).to(store.sink(reducer=add)).run()


async def test_a_durable_store_is_restored_by_a_new_process_s_store(tmp_path: Path) -> None:
    store = StateStore("sums", state_dir=tmp_path)
    await fold(store, events(100))
    assert store.durability()["checkpoints"] >= 1
    again = StateStore("sums", state_dir=tmp_path)
    assert len(again) == 0  # nothing is read before open()
    await again.open()
    assert again.snapshot.to_dict() == store.snapshot.to_dict()
    assert again.version == store.version
    assert again.snapshot.entry("k1") == store.snapshot.entry("k1")
    assert again.durability()["restored"] == 5


async def test_replaying_the_same_events_after_a_restore_changes_nothing(tmp_path: Path) -> None:
    store = StateStore("sums", state_dir=tmp_path)
    await fold(store, events(100))
    again = StateStore("sums", state_dir=tmp_path)
    await fold(again, events(100))  # the pipeline opens the store before reading
    assert again.snapshot.to_dict() == store.snapshot.to_dict()
    assert again.ignored == 100


async def test_deletes_and_tuple_keys_survive_a_restart(tmp_path: Path) -> None:
    store = StateStore("s", state_dir=tmp_path)
    await store.open()
    store.set(("a", 1), {"x": 1})
    store.set("gone", 1)
    await store.checkpoint()
    store.delete("gone")
    assert await store.checkpoint()
    assert not await store.checkpoint()  # nothing changed since
    again = StateStore("s", state_dir=tmp_path)
    await again.open()
    assert again.snapshot.to_dict() == {("a", 1): {"x": 1}}


async def test_the_json_codec_keeps_json_values_and_refuses_others_loudly(tmp_path: Path) -> None:
    store = StateStore("j", state_dir=tmp_path, codec="json")
    await store.open()
    position = None
    store.set(("sym", 2), {"px": 1.5, "tags": ["a"]}, position=position)
    await store.checkpoint()
    again = StateStore("j", state_dir=tmp_path, codec="json")
    await again.open()
    assert again.snapshot.to_dict() == {("sym", 2): {"px": 1.5, "tags": ["a"]}}
    store.set("bad", {1, 2})
    with pytest.raises(StateError, match=r"state 'j': cannot store key 'bad'.*codec='pickle'"):
        await store.checkpoint()
    # not lost: the key is still to be written once it can be
    store.set("bad", [1, 2])
    assert await store.checkpoint()


async def test_positions_with_kafka_partitions_survive_the_json_codec(tmp_path: Path) -> None:
    from rxagent import Position

    store = StateStore("p", state_dir=tmp_path, codec="json")
    await store.open()
    store.set("k", 1, position=Position("src", KafkaPartition("t", 3), 41))
    await store.checkpoint()
    again = StateStore("p", state_dir=tmp_path, codec="json")
    await again.open()
    # the same partition, so a replay of offset 41 is skipped
    assert not again.set("k", 2, position=Position("src", KafkaPartition("t", 3), 41))
    assert again.set("k", 3, position=Position("src", KafkaPartition("t", 3), 42))


async def test_a_file_written_with_another_codec_is_refused_by_name(tmp_path: Path) -> None:
    store = StateStore("c", state_dir=tmp_path)
    await store.open()
    other = StateStore("c", state_dir=tmp_path, codec="json")
    with pytest.raises(StateError, match=r"c\.sqlite3 was written with codec 'pickle'"):
        await other.open()


async def test_a_corrupt_state_file_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.sqlite3").write_bytes(b"this is not a database" * 100)
    store = StateStore("c", state_dir=tmp_path)
    with pytest.raises(StateError, match=r"c\.sqlite3 is not a usable state file"):
        await store.open()
    assert len(store) == 0


async def test_a_pipeline_writing_a_store_it_cannot_open_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "c.sqlite3").write_bytes(b"garbage" * 1000)
    store = StateStore("c", state_dir=tmp_path)
    pipeline = Pipeline("p", memory(events(3))).pipe(ops.key_by("k")).to(store.sink(reducer=add))
    with pytest.raises(StateError, match="not a usable state file"):
        await pipeline.start()
    assert pipeline.status().state == "failed"


async def test_a_failing_checkpoint_fails_the_pipeline_loudly(tmp_path: Path) -> None:
    store = StateStore("x", state_dir=tmp_path, codec="json")
    data = [{"k": "a", "v": {1, 2}}]  # a set is no JSON value
    pipeline = (
        Pipeline("p", memory(data)).pipe(ops.key_by("k")).to(store.sink(value=lambda v: v["v"]))
    )
    await pipeline.start()
    status = await pipeline.wait()
    assert status.state == "failed"
    assert "cannot store key 'a'" in (status.last_error or "")


async def test_an_entry_deleted_by_a_reducer_is_gone_after_a_restart(tmp_path: Path) -> None:
    store = StateStore("d", state_dir=tmp_path)
    data = [{"k": "a", "n": 1}, {"k": "b", "n": 2}, {"k": "a", "n": -1}]

    def reducer(old: Any, event: Event) -> Any:
        return DELETE if event.value["n"] < 0 else event.value["n"]

    await Pipeline("p", memory(data)).pipe(ops.key_by("k")).to(store.sink(reducer=reducer)).run()
    again = StateStore("d", state_dir=tmp_path)
    await again.open()
    assert again.snapshot.to_dict() == {"b": 2}


async def test_memory_only_stores_write_nothing(tmp_path: Path) -> None:
    store = StateStore("m")
    await fold(store, events(10))
    assert not store.durable
    assert store.path is None
    assert store.durability() == {}
    assert not await store.checkpoint()


async def test_the_state_file_is_sqlite_with_one_row_per_key(tmp_path: Path) -> None:
    store = StateStore("rows", state_dir=tmp_path)
    await fold(store, events(50))
    assert store.path == tmp_path / "rows.sqlite3"
    with sqlite3.connect(store.path) as db:
        (count,) = db.execute("SELECT count(*) FROM entries").fetchone()
    assert count == 5
