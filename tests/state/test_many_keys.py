"""Reads that cost what they return (issue 16): ``context()`` and ``changes_since()``
read the store's change log instead of scanning every entry, and its entries live
in :class:`~rxagent.state.levels.Levels`. Each is checked against the full-scan
implementation it replaced (kept here, tiny) for random update sequences, with
the log and the levels made small so that compaction, trimming (the floor rising)
and merges between levels all happen."""

from __future__ import annotations

import gc
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rxagent.state.levels as levels_module
import rxagent.state.store as store_module
from rxagent import DELETE, Position, StateStore
from rxagent.state import Snapshot
from rxagent.state.levels import GONE, Levels
from rxagent.state.render import context_header, context_line, fit, key_text, omitted_line
from rxagent.state.snapshot import ChangeSet, Entry, StateChange

# -- the full-scan reference ---------------------------------------------------------------


def reference_recent(snap: Snapshot) -> list[Entry]:
    entries = sorted(snap._entries.values(), key=lambda e: key_text(e.key))
    entries.sort(key=lambda e: e.version, reverse=True)
    return entries


def reference_changes(snap: Snapshot, version: int) -> ChangeSet:
    changed = {k: e for k, e in snap._entries.items() if e.version > version}
    deleted = [k for k, v in snap._tombstones.items() if v > version]
    return ChangeSet(snap.store, version, snap.version, changed, deleted)


def reference_context(snap: Snapshot, max_chars: int, now: float) -> str:
    entries = reference_recent(snap)
    lines = [context_header(snap.store, snap, now)]
    used = len(lines[0])
    omitted: list[Hashable] = []
    for i, entry in enumerate(entries):
        line = context_line(entry, now)
        remaining = len(entries) - i - 1
        reserve = len(omitted_line(len(entries))) + 1 if remaining else 0
        if used + 1 + len(line) + reserve > max_chars or omitted:
            omitted.append(entry.key)
            continue
        lines.append(line)
        used += 1 + len(line)
    if omitted:
        lines.append(omitted_line(len(omitted)))
    return fit("\n".join(lines), max_chars)


# the patch is the same for every example: safe to share across hypothesis inputs
@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "LOG_KEYS", 3)
    monkeypatch.setattr(store_module, "_LOG_MIN", 2)
    monkeypatch.setattr(levels_module, "BASE", 2)
    monkeypatch.setattr(levels_module, "RATIO", 2)
    monkeypatch.setattr(store_module, "_PENDING", 3)


KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f", 1, 2, ("t", 3)])
#: one batch: (key, value or None to delete)
BATCH = st.lists(st.tuples(KEYS, st.one_of(st.none(), st.integers(0, 999))), max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.tuples(BATCH, st.booleans()), max_size=25), budget=st.integers(0, 160))
def test_context_and_changes_since_match_the_full_scan(
    small: None, batches: list[tuple[list[tuple[Any, int | None]], bool]], budget: int
) -> None:
    """Read after some batches only: the versions between were held back, then
    published at once (versions are published when read)."""
    store = StateStore("s", clock=lambda: 1000.0)
    held: list[tuple[Snapshot, dict[Hashable, Any]]] = []
    for batch, read in batches:
        if len(batch) == 1 and batch[0][1] is not None:
            store.write_value(batch[0][0], batch[0][1], None, "src", 0, None)
        else:
            store.apply([(k, DELETE if v is None else v, None, None) for k, v in batch])
        if not read:
            continue
        snap = store.snapshot
        held.append((snap, snap.to_dict()))
        assert store.context(budget, now=1000.0) == reference_context(snap, budget, 1000.0)
        assert list(snap.iter_recent()) == reference_recent(snap)
        for since in range(snap.version + 1):
            got, want = store.changes_since(since), reference_changes(snap, since)
            assert (got.since, got.version, got.changed) == (want.since, want.version, want.changed)
            assert sorted(map(repr, got.deleted)) == sorted(map(repr, want.deleted))
    # snapshots readers held are the versions they were, whatever came after
    for snap, values in held:
        assert snap.to_dict() == values
        assert len(snap) == len(values)
        assert all(snap[k] == v for k, v in values.items())


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(BATCH, max_size=30))
def test_levels_are_a_persistent_dict(small: None, batches: list[list[tuple[Any, Any]]]) -> None:
    levels: Levels[Any] = Levels()
    plain: dict[Hashable, Any] = {}
    versions: list[tuple[Levels[Any], dict[Hashable, Any]]] = []
    for batch in batches:
        changes: dict[Hashable, Any] = {}
        for k, v in batch:
            if v is None:
                plain.pop(k, None)
                changes[k] = GONE
            else:
                plain[k] = v
                changes[k] = v
        levels = levels.updated(changes, len(plain))
        versions.append((levels, dict(plain)))
        assert levels.to_dict() == plain
    for version, values in versions:
        assert dict(version.items()) == values
        assert len(version) == len(values)
        assert all(version.get(k) == values.get(k) for k in ["a", "b", "c", "d", "e", "f", 1, 2])
        assert all((k in version) == (k in values) for k in ["a", "b", "c", 1, ("t", 3)])


def test_a_restored_store_and_released_keys_read_the_same(small: None) -> None:
    store = StateStore("s", clock=lambda: 1000.0)
    store._restore({k: Entry(k, i, i, 1, None, 999.0) for i, k in enumerate("abcdef", 1)}, 6)
    store.set("z", 0)
    store.set("a", 9)
    store._release(["b", "z"])
    snap = store.snapshot
    for budget in (0, 40, 80, 200):
        assert store.context(budget, now=1000.0) == reference_context(snap, budget, 1000.0)
    for since in range(snap.version + 1):
        assert store.changes_since(since).changed == reference_changes(snap, since).changed


# -- records: what a store keeps per key (issue 16) -------------------------------------------

#: one batch of the sink's fast path: distinct keys, (value or None to delete, offset or None)
ROWS = st.dictionaries(
    KEYS,
    st.tuples(st.one_of(st.none(), st.integers(0, 9)), st.one_of(st.none(), st.integers(0, 5))),
)


#: ``_FEW`` set so that every batch of two rows or more is written in columns, or row by row
PATHS = pytest.mark.parametrize("few", [0, 1000], ids=["columns", "row-by-row"])


@PATHS
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.tuples(st.sampled_from([0, 1]), ROWS), max_size=20))
def test_write_values_is_apply_without_its_objects(
    small: None,
    monkeypatch: pytest.MonkeyPatch,
    few: int,
    batches: list[tuple[int, dict[Any, tuple[int | None, int | None]]]],
) -> None:
    """``write_values`` (the state sink without a reducer) leaves the same entries and
    tombstones, skips the same replays and tells ``updates`` subscribers the same
    changes as ``apply`` with positions, whether it writes a batch in columns or row by
    row."""
    monkeypatch.setattr(store_module, "_FEW", few)
    lean, full = StateStore("s", clock=lambda: 1000.0), StateStore("s", clock=lambda: 1000.0)
    told: dict[str, list[StateChange]] = {"lean": [], "full": []}
    lean.updates.subscribe(told["lean"].extend)
    full.updates.subscribe(told["full"].extend)
    for partition, rows in batches:
        keys = list(rows)
        values = [DELETE if v is None else v for v, _ in rows.values()]
        offsets = [o for _, o in rows.values()]
        times = [float(i) for i in range(len(keys))]
        changed = lean.write_values(keys, values, times, "src", partition, offsets)
        applied = full.apply(
            [
                (k, v, t, None if o is None else Position("src", partition, o))
                for k, v, t, o in zip(keys, values, times, offsets, strict=True)
            ]
        )
        assert changed == len(applied)
        assert lean.ignored == full.ignored
        assert lean.version == full.version
        assert len(lean) == len(full)
    a, b = lean.snapshot, full.snapshot
    assert a.to_dict() == b.to_dict()
    assert {k: a.entry(k) for k in a} == {k: b.entry(k) for k in b}
    assert dict(a._tombstones) == dict(b._tombstones)
    assert told["lean"] == told["full"]
    for since in range(a.version + 1):
        x, y = lean.changes_since(since), full.changes_since(since)
        assert x.changed == y.changed
        assert sorted(map(repr, x.deleted)) == sorted(map(repr, y.deleted))


@PATHS
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.tuples(
            st.sampled_from([0, 1]),
            st.lists(
                st.tuples(
                    KEYS,
                    st.one_of(st.none(), st.integers(0, 9)),
                    st.one_of(st.none(), st.integers(0, 5)),
                ),
                min_size=1,
                max_size=12,
            ),
        ),
        max_size=12,
    )
)
def test_write_values_of_a_key_given_twice_keeps_its_last_row(
    small: None,
    monkeypatch: pytest.MonkeyPatch,
    few: int,
    batches: list[tuple[int, list[tuple[Any, int | None, int | None]]]],
) -> None:
    """A batch that gives a key more than once writes what the batch of each key's last
    row writes: the same entries, replays skipped and changes told, in either path."""
    monkeypatch.setattr(store_module, "_FEW", few)
    given_twice, last_rows = StateStore("s", clock=lambda: 5.0), StateStore("s", clock=lambda: 5.0)
    told: tuple[list[StateChange], list[StateChange]] = ([], [])
    given_twice.updates.subscribe(told[0].extend)
    last_rows.updates.subscribe(told[1].extend)
    for partition, rows in batches:
        values = [DELETE if v is None else v for _, v, _ in rows]
        offsets = [o for _, _, o in rows]
        times = [float(i) for i in range(len(rows))]
        keys = [k for k, _, _ in rows]
        changed = given_twice.write_values(keys, values, times, "src", partition, offsets)
        last = dict(zip(keys, range(len(keys)), strict=True))
        idx = list(last.values())
        assert changed == last_rows.write_values(
            list(last),
            [values[i] for i in idx],
            [times[i] for i in idx],
            "src",
            partition,
            [offsets[i] for i in idx],
        )
        assert given_twice.version == last_rows.version
        assert given_twice.ignored == last_rows.ignored
    a, b = given_twice.snapshot, last_rows.snapshot
    assert {k: a.entry(k) for k in a} == {k: b.entry(k) for k in b}
    assert dict(a._tombstones) == dict(b._tombstones)
    assert told[0] == told[1]


def test_stored_records_are_untracked_by_the_garbage_collector() -> None:
    """Entries of atomic values cost the collector nothing: the store keeps exact tuples
    (CPython untracks them), and builds the ``Entry`` (with its ``Position``) when read."""
    store = StateStore("s", clock=lambda: 1000.0)
    store.write_values([f"k{i}" for i in range(100)], list(range(100)), None, "src", 3, range(100))
    store.apply([(("t", 1), 2.5, 7.0, Position("src", ("topic", 0), 9))])
    gc.collect()
    records = store.snapshot._records
    assert records is not None
    assert len(records) == 101
    assert not any(gc.is_tracked(r) for r in records.values())
    assert store.snapshot.entry("k7") == Entry("k7", 7, 1, 1, None, 1000.0, Position("src", 3, 7))
    assert store.snapshot.entry(("t", 1)) == Entry(
        ("t", 1), 2.5, 2, 1, 7.0, 1000.0, Position("src", ("topic", 0), 9)
    )
    assert store.snapshot.value("k7") == store["k7"] == store.get("k7") == 7
    assert store.snapshot.value("nope", "-") == "-"


def test_a_few_keys_keep_a_short_change_log() -> None:
    """Ten keys written one version at a time: the log is compacted once it holds twice
    the store's keys (at least ``_LOG_MIN``), walking back only until every key was seen,
    so it never grows to 2 * LOG_KEYS versions to be compacted at once (a 160 ms pause
    every 262,144 writes); readers still get each key's last change."""
    store = StateStore("s", clock=lambda: 1000.0)
    for i in range(3 * store_module._LOG_MIN):
        store.set(f"k{i % 10}", i)
        assert store._log_keys <= 2 * store_module._LOG_MIN
    version = store.version
    assert store.changes_since(version - 10).changed.keys() == {f"k{i}" for i in range(10)}
    assert store.changes_since(0).changed == reference_changes(store.snapshot, 0).changed
    assert store.context(2000, now=1000.0) == reference_context(store.snapshot, 2000, 1000.0)
