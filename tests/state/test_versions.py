"""Versions published when read (issue 16): a write holds its version back until
something reads the store, subscribes to ``changes`` or many keys are waiting, so
a one-row batch costs about a dict write; every promise of the versions still holds
(one version per applied batch, immutable snapshots from any thread, ``changes``
subscribers told each version, ``updates`` each batch's changes, replays skipped)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from reactivex.subject import BehaviorSubject

import rxagent.state.store as store_module
from rxagent import DELETE, Position, StateStore
from rxagent.state import Snapshot
from rxagent.state.snapshot import StateChange


def test_one_row_writes_are_versions_held_back_until_read() -> None:
    store = StateStore("s", clock=lambda: 1000.0)
    first = store.snapshot
    for i in range(1, 11):
        assert store.write_values([f"k{i % 3}"], [i], [float(i)], "src", 0, [i]) == 1
    assert store._pending  # nothing read: no snapshot was made for those versions
    assert store._snapshot is first
    assert store.version == 10
    assert store.get("k1") == 10  # a key read through what is held back
    assert store.get("nope", "-") == "-"
    assert store._snapshot is first  # ... without publishing a version
    snap = store.snapshot
    assert snap.version == 10
    assert snap.to_dict() == {"k1": 10, "k2": 8, "k0": 9}
    assert snap.entry("k1").version == 10  # type: ignore[union-attr]
    assert snap.entry("k1").updates == 4  # type: ignore[union-attr]
    assert snap.entry("k1").position == Position("src", 0, 10)  # type: ignore[union-attr]
    assert store.snapshot is snap  # nothing new: the same snapshot
    # what a reader held stays as it was
    assert first.version == 0
    assert len(first) == 0
    changes = store.changes_since(8)
    assert changes.changed.keys() == {"k1", "k0"}
    assert [e.key for e in snap.iter_recent()] == ["k1", "k0", "k2"]


def test_one_row_replays_deletes_and_tombstones() -> None:
    store = StateStore("s", clock=lambda: 1000.0)
    write = store.write_value
    assert write("a", 1, None, "src", 0, 5) == 1
    assert write("a", 2, None, "src", 0, 5) == 0  # a replay: skipped, no version
    assert write("a", 2, None, "src", 0, 4) == 0
    assert store.ignored == 2
    assert store.version == 1
    assert write("a", 2, None, "src", 1, 4) == 1  # another partition's position
    assert write("a", DELETE, 7.0, "src", 1, 6) == 1
    assert write("a", DELETE, 7.0, "src", 1, 7) == 0  # not there: nothing to delete
    assert "a" not in store
    assert store.get("a") is None
    assert len(store) == 0
    assert store.changes_since(2).deleted == ["a"]
    assert write("a", 3, None, "src", 1, 8) == 1  # back: its tombstone goes
    assert store.changes_since(2).deleted == []
    assert store.snapshot._tombstones.get("a") is None
    assert store["a"] == 3
    assert store.version == 4
    assert store.snapshot.entry("a").updates == 1  # type: ignore[union-attr]


def test_a_changes_subscriber_gets_the_newest_version_then_each_one() -> None:
    store = StateStore("s")
    store.set("a", 1)
    store.write_value("a", 2, None, "src", 0, None)  # held back: nobody is reading
    seen: list[tuple[int, Any]] = []
    subscription = store.changes.subscribe(lambda snap: seen.append((snap.version, snap["a"])))
    assert seen == [(2, 2)]  # the newest version, published for the subscriber
    store.write_value("a", 3, None, "src", 0, None)
    store.write_values(["a", "b"], [4, 5], None, "src", 0, None)
    store.apply([("a", 5, None, None)])
    store.delete("b")
    assert [v for v, _ in seen] == [2, 3, 4, 5, 6]  # each version, in order
    assert [a for _, a in seen] == [2, 3, 4, 5, 5]
    subscription.dispose()
    store.write_value("a", 6, None, "src", 0, None)  # nobody listening: held back again
    assert store._pending
    later: list[int] = []
    store.changes.subscribe(lambda snap: later.append(snap.version))
    assert later == [7]
    # a version a reader published (nobody subscribed then) is still the current value
    store.write_value("a", 7, None, "src", 0, None)
    store.write_value("a", 8, None, "src", 0, None)
    assert later == [7, 8, 9]


def test_a_subscriber_after_a_reader_published_gets_that_version() -> None:
    store = StateStore("s")
    store.write_value("a", 1, None, "src", 0, None)
    assert store.snapshot.version == 1  # published for the reader, told to nobody
    seen: list[int] = []
    store.changes.subscribe(lambda snap: seen.append(snap.version))
    assert seen == [1]


def test_updates_subscribers_get_each_one_row_batch() -> None:
    store = StateStore("s", clock=lambda: 5.0)
    told: list[list[StateChange]] = []
    store.updates.subscribe(told.append)
    store.write_value("a", 1, 1.0, "src", 0, 1)
    store.write_value("a", 2, 2.0, "src", 0, 2)
    store.write_value("a", 2, 2.0, "src", 0, 2)  # a replay: nothing told
    store.write_value("a", DELETE, 3.0, "src", 0, 3)
    assert told == [
        [StateChange("a", None, 1, 1, 1.0, 5.0)],
        [StateChange("a", 1, 2, 2, 2.0, 5.0)],
        [StateChange("a", 2, None, 3, 3.0, 5.0, True)],
    ]


def test_many_keys_held_back_are_published_by_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_PENDING", 8)
    store = StateStore("s")
    first = store._snapshot
    for i in range(9):
        store.write_value(f"k{i}", i, None, "src", 0, None)
    assert store._snapshot is not first  # published at the 9th key
    assert not store._pending
    assert store._snapshot.version == 9
    assert len(store._snapshot) == 9


def test_a_reducer_may_read_the_store_it_writes() -> None:
    store = StateStore("s")
    store.write_value("base", 10, None, "src", 0, None)  # held back
    # the reducer runs while the store is being written: reading publishes what was
    # held back (re-entrant), not the batch being applied
    store.apply_updates([("x", lambda old: store.snapshot["base"] + len(store), None, None)])
    assert store["x"] == 11
    assert store.snapshot.version == 2


def test_readers_on_other_threads_see_whole_versions() -> None:
    """A writer applies one-row and two-row batches; readers on other threads take
    snapshots (publishing what was held back) and keys: every snapshot is one version
    whole (each key's value is the version that wrote it, the newest is the snapshot's
    version, two keys written together agree) and versions never go back."""
    store = StateStore("s")
    stop = threading.Event()
    problems: list[str] = []
    reads = [0, 0]

    def read(me: int) -> None:
        last = 0
        while not stop.is_set():
            snap = store.snapshot
            version = snap.version
            if version < last:
                problems.append(f"version went back: {version} < {last}")
            last = version
            if version:
                # the newest write is in, nothing newer is
                key = "pair-a" if version % 10 == 0 else f"k{version % 10}"
                if snap.value(key) != version:
                    problems.append(f"snapshot {version}: {key} = {snap.value(key)}")
            if reads[me] % 64 == 0:
                values = snap.to_dict()
                if values and max(values.values()) != version:
                    problems.append(f"snapshot {version} holds {max(values.values())}")
                if any(snap.entry(k).version != v for k, v in values.items()):  # type: ignore[union-attr]
                    problems.append(f"an entry of snapshot {version} is not of its version")
                if values.get("pair-a") != values.get("pair-b"):
                    problems.append(f"pair split in {version}")
            got = store.get("k3")
            if got is not None and got % 10 != 3:
                problems.append(f"k3 = {got}")
            reads[me] += 1

    readers = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between a few bytecodes: races show
    for thread in readers:
        thread.start()
    try:
        version = 0
        # until both readers read often, amid writes (the interpreter switches threads
        # every few milliseconds)
        while version < 50_000 or min(reads) < 1000:
            version += 1
            if version % 10 == 0:
                store.write_values(["pair-a", "pair-b"], [version, version], None, "src", 0, None)
            else:
                store.write_value(f"k{version % 10}", version, None, "src", 0, None)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        sys.setswitchinterval(switch)
    assert not problems, problems[:5]
    assert store.snapshot.version == version


def test_a_durable_store_checkpoints_writes_held_back(tmp_path: Path) -> None:
    async def main() -> None:
        store = StateStore("s", state_dir=tmp_path)
        await store.open()
        for i in range(5):
            store.write_value(f"k{i % 2}", i, None, "src", 0, i)
        assert store._pending
        assert await store.checkpoint()
        await store.aclose()
        again = StateStore("s", state_dir=tmp_path)
        await again.open()
        assert again.snapshot.to_dict() == {"k0": 4, "k1": 3}
        assert again.version == 5
        assert again.write_value("k0", 9, None, "src", 0, 4) == 0  # replayed: skipped
        await again.aclose()

    asyncio.run(main())


def test_snapshots_held_by_readers_are_immutable_under_one_row_writes() -> None:
    store = StateStore("s")
    held: list[tuple[Snapshot, dict[str, Any]]] = []
    for i in range(300):
        store.write_value(f"k{i % 7}", i, None, "src", 0, None)
        if i % 13 == 0:
            snap = store.snapshot
            held.append((snap, dict(snap.to_dict())))
    for snap, values in held:
        assert snap.to_dict() == values


def test_the_changes_subjects_value_is_the_newest_version_while_nothing_observes() -> None:
    # versions are held back while nothing observes; a behavior subject's value is
    # its newest all the same
    store = StateStore("v")
    store.write_value("a", 1, None, "src", None, 1)
    store.write_value("b", 2, None, "src", None, 2)
    changes = store.changes
    assert isinstance(changes, BehaviorSubject)
    newest = changes.value
    assert newest.version == 2
    assert newest.to_dict() == {"a": 1, "b": 2}
    seen: list[int] = []
    subscription = changes.subscribe(lambda snap: seen.append(snap.version))
    store.write_value("a", 3, None, "src", None, 3)
    assert changes.value.version == 3
    assert seen == [2, 3]
    subscription.dispose()
