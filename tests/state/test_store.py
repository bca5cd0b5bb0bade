"""The state store: snapshots, idempotence, change streams, prompt context."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from rxagent import DELETE, Event, Pipeline, Position, StateError, StateStore
from rxagent import operators as ops
from rxagent.sinks import MemoryDeadLetters, Snapshot
from rxagent.sources import memory


async def test_reducer_folds_events_per_key() -> None:
    store = StateStore("totals")

    def add(old: int | None, event: Event) -> int:
        return (old or 0) + event.value["n"]

    items = [{"k": k, "n": n} for k, n in [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)]]
    await Pipeline("p", memory(items, batch_size=2)).to(store.sink(key="k", reducer=add)).run()
    assert store.snapshot.to_dict() == {"a": 9, "b": 6}
    entry = store.snapshot.entry("a")
    assert entry is not None
    assert entry.updates == 3
    assert entry.position == Position("memory", None, 4)


def test_snapshots_are_immutable_versions() -> None:
    store = StateStore("s")
    before = store.snapshot
    store.set("x", 1)
    after = store.snapshot
    store.set("x", 2)
    assert before.to_dict() == {}
    assert after["x"] == 1
    assert store["x"] == 2
    assert (before.version, after.version, store.version) == (0, 1, 2)
    with pytest.raises(StateError, match="state 's' has no key 'nope'"):
        _ = store.snapshot["nope"]


def test_updates_not_newer_than_the_last_applied_position_are_ignored() -> None:
    store = StateStore("s")
    assert store.set("k", "v5", position=Position("src", 0, 5))
    assert not store.set("k", "v3", position=Position("src", 0, 3)), "older replay applied"
    assert not store.set("k", "v5b", position=Position("src", 0, 5)), "same position applied"
    assert store.set("k", "p1", position=Position("src", 1, 0)), "other partition ignored"
    assert store["k"] == "p1"
    assert store.ignored == 2


async def test_replaying_the_same_events_leaves_the_same_state() -> None:
    store = StateStore("s")
    items = [{"k": i % 4, "v": i} for i in range(40)]

    def build() -> Pipeline:
        return Pipeline("p", memory(items, batch_size=7)).to(store.sink(key="k", value="v"))

    await build().run()
    first, version = store.snapshot.to_dict(), store.version
    await build().run()
    assert store.snapshot.to_dict() == first
    assert store.version == version, "a replay created new versions"


def test_changes_since_returns_only_what_changed() -> None:
    store = StateStore("s")
    store.apply([("a", 1, None, None), ("b", 2, None, None)])
    seen = store.version
    store.set("b", 3)
    store.delete("a")
    changes = store.changes_since(seen)
    assert {k: e.value for k, e in changes.changed.items()} == {"b": 3}
    assert changes.deleted == ["a"]
    assert changes.version == store.version
    assert not store.changes_since(store.version)
    assert changes.to_json()["changed"] == {"b": 3}


def test_change_stream_gets_current_then_each_version() -> None:
    store = StateStore("s")
    store.set("a", 1)
    versions: list[int] = []
    updates: list[list[Any]] = []
    store.changes.subscribe(lambda snap: versions.append(snap.version))
    store.updates.subscribe(
        lambda changes: updates.append([(c.key, c.old, c.new) for c in changes])
    )
    store.set("a", 2)
    store.delete("a")
    assert versions == [1, 2, 3]
    assert updates == [[("a", 1, 2)], [("a", 2, None)]]


def test_reducer_can_delete() -> None:
    store = StateStore("s")
    store.set("a", 1)
    store.apply_updates([("a", lambda old: DELETE, None, None)])
    assert "a" not in store


def test_context_fits_the_budget_and_says_what_it_left_out() -> None:
    store = StateStore("prices", clock=lambda: 1000.0)
    for i in range(50):
        store.set(f"SYM{i:02d}", {"px": 100 + i, "vol": i * 10})
    text = store.context(max_chars=300, now=1002.0)
    assert len(text) <= 300
    assert text.startswith("state 'prices' v50, 50 keys")
    shown = [line for line in text.splitlines()[1:] if line.startswith("SYM")]
    assert shown, "nothing rendered"
    assert shown[0].startswith("SYM49:"), "most recent key not first"
    assert text.splitlines()[-1] == f"... {50 - len(shown)} more keys omitted"
    assert "(2.0s ago)" in shown[0]
    full = store.context(max_chars=100_000, now=1002.0)
    assert "omitted" not in full
    assert len(full.splitlines()) == 51


def test_context_of_chosen_keys() -> None:
    store = StateStore("s")
    store.set("a", 1)
    store.set("b", 2)
    assert store.context(keys=["b"]).splitlines()[1].startswith("b: 2")


async def test_missing_key_and_reducer_errors_go_to_dead_letters() -> None:
    store = StateStore("s")
    dead = MemoryDeadLetters()

    def strict(old: Any, event: Event) -> Any:
        if event.value["v"] < 0:
            raise ValueError("negative")
        return event.value["v"]

    items = [{"k": "a", "v": 1}, {"v": 2}, {"k": "b", "v": -1}, {"k": "b", "v": 3}]
    status = await (
        Pipeline("p", memory(items), dead_letters=dead)
        .pipe(ops.key_by(lambda v: v.get("k")))
        .to(store.sink(reducer=strict, name="fold"))
        .run()
    )
    assert store.snapshot.to_dict() == {"a": 1, "b": 3}
    assert sorted(d.message for d in dead.letters) == [
        "key of event for state 's' is None",
        "negative",
    ]
    assert status.flow["pending"] == 0


def test_readers_on_other_threads_never_see_half_an_update() -> None:
    """Each update moves 1 from one key to another in one version; the total is invariant."""
    store = StateStore("bank")
    store.apply([(f"acct{i}", 100, None, None) for i in range(10)])
    stop = threading.Event()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            snap: Snapshot = store.snapshot
            total = sum(snap.to_dict().values())
            if total != 1000:
                bad.append(total)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(3000):
            src, dst = f"acct{n % 10}", f"acct{(n * 7 + 3) % 10}"
            if src == dst:
                continue
            snap = store.snapshot
            store.apply([(src, snap[src] - 1, None, None), (dst, snap[dst] + 1, None, None)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad, f"readers saw torn states: {bad[:5]}"
    assert sum(store.snapshot.to_dict().values()) == 1000


def test_staleness_and_as_of() -> None:
    now = [100.0]
    store = StateStore("s", clock=lambda: now[0])
    store.set("a", 1, event_time=90.0)
    now[0] = 105.0
    assert store.snapshot.staleness("a", now=105.0) == pytest.approx(5.0)
    assert store.snapshot.staleness("zz") is None
    as_of = store.snapshot.as_of("a")
    assert as_of["event_time"] == "1970-01-01T00:01:30.000Z"
    assert as_of["version"] == 1
