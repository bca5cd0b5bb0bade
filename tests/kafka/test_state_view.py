"""The changelog view: the whole state of a store that several worker processes write,
read from its changelog topic (real broker, real workers, SIGKILL), in Python and
served over MCP by ``rxagent mcp FILE --from-changelog``.

The workers (``state_worker.py``) fold per-key counts and sums into a durable store
``totals`` and write, at stop, the state they held; each keeps its entries, with the
version, times and source position they recorded, in its state file. The view must
hold exactly those entries: the keys, the values and the bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from test_kafka_state import Worker, produce_events, truth

from rxagent.config import load
from rxagent.exceptions import ConfigurationError, StateError
from rxagent.kafka import StateView, state_view
from rxagent.kafka.changelog import KafkaChangelog
from rxagent.mcp import changelog_views
from rxagent.state import Entry, StateChange
from rxagent.state.durable import PickleCodec, SQLiteBackend, store_path
from rxagent.state.render import iso_time
from rxagent.state.snapshot import entry_from_record, entry_record

Produce = Callable[..., None]
EXE = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"
#: a generous bound of one wait (the machine is shared)
WAIT = 60.0


def worker_args(bootstrap: str, topic: str, gid: str, tmp_path: Path, name: str) -> list[str]:
    return [bootstrap, topic, gid, str(tmp_path / name), str(tmp_path / f"{name}.json")]


def file_entries(*state_dirs: Path) -> dict[Hashable, Entry]:
    """The entries the workers checkpointed in their state files; of a key in two
    files (its partition moved), the one from the later event of its partition."""
    entries: dict[Hashable, Entry] = {}
    for state_dir in state_dirs:
        backend = SQLiteBackend(
            store_path(state_dir, "totals"), store="totals", codec=PickleCodec()
        )
        backend.open()
        try:
            for key, _part, record in backend.rows():
                entry = entry_from_record(key, record)
                old = entries.get(key)
                assert entry.position is not None
                if old is None or (old.position and old.position.offset < entry.position.offset):
                    entries[key] = entry
        finally:
            backend.close()
    return entries


def assert_same_state(
    view: StateView, held: dict[str, Any], entries: dict[Hashable, Entry]
) -> None:
    """The view holds the workers' state: the same keys, values and recorded entries."""
    snap = view.snapshot
    assert set(snap) == set(held), (
        f"keys: only in view {set(snap) - set(held)}, missing {set(held) - set(snap)}"
    )
    wrong = {k: (snap[k], v) for k, v in held.items() if snap[k] != v}
    assert not wrong, f"{len(wrong)} values differ (view, worker): {wrong}"
    assert set(entries) == set(held)
    for key, entry in entries.items():
        assert snap.entry(key) == entry, f"{key}: view {snap.entry(key)}, worker {entry}"
        assert snap.as_of(key)["wall_time"] == iso_time(entry.wall_time)
    assert max(e.version for e in snap.entries()) <= snap.version


def assert_caught_up(view: StateView, partitions: int) -> None:
    info = view.describe()
    assert info["state"] == "live"
    assert view.caught_up
    assert info["lag"] == 0
    assert view.lag() == {p: 0 for p in range(partitions)}
    assert len(info["partitions"]) == partitions
    assert all(p["at_end"] for p in info["partitions"].values())
    assert info["newest_record_at"] is not None
    assert info["newest_record_at"] <= time.time() + 1
    assert info["records"] >= info["keys"]
    assert info["error"] is None


async def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> float:
    """Wait (without blocking the loop) until ``condition()``; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def fold_with_two_workers(args: Callable[[str], list[str]], n: int) -> None:
    """Two workers fold every event between them, then stop together."""
    a, b = Worker(args("a")), Worker(args("b"))
    try:
        for w in (a, b):
            w.until(lambda p: len(p["partitions"]) == 2, WAIT)
        deadline = time.monotonic() + WAIT
        while a.poll()["folded"] + b.poll()["folded"] < n:
            assert time.monotonic() < deadline, f"a: {a.last}, b: {b.last}"
            time.sleep(0.02)
        stop_together(a, b)
    finally:
        a.kill()
        b.kill()


def survive_a_kill(args: Callable[[str], list[str]], n: int) -> None:
    """Two workers; b is killed mid-run and a takes its partitions over, to the end."""
    a, b = Worker(args("a")), Worker(args("b"))
    try:
        for w in (a, b):
            w.until(lambda p: len(p["partitions"]) == 2, WAIT)
        b.until(lambda p: p["folded"] >= 1_000)
        b.kill()  # mid-run: changes not yet checkpointed, events in flight
        # a takes b's partitions over with their state and reads on to the end
        a.until(lambda p: len(p["partitions"]) == 4 and p["folded"] == n, 90)
        stop_together(a)
    finally:
        a.kill()
        b.kill()


def stop_together(*workers: Worker) -> None:
    """SIGTERM at once: each writes out what it holds (no rebalance in between)."""
    for w in workers:
        w.process.send_signal(signal.SIGTERM)
    for w in workers:
        assert w.process.wait(60) == 0


async def test_the_view_serves_what_two_workers_held_entry_by_entry(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n, keys = 20_000, 40
    topic = kafka_topic(4)
    produce_events(kafka_produce, topic, n, keys)
    gid = f"g-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(
        fold_with_two_workers, lambda w: worker_args(kafka_bootstrap, topic, gid, tmp_path, w), n
    )
    held = {
        **json.loads((tmp_path / "a.json").read_text()),
        **json.loads((tmp_path / "b.json").read_text()),
    }
    assert held == truth(n, keys)
    entries = file_entries(tmp_path / "a", tmp_path / "b")

    started = time.monotonic()
    async with state_view("totals", group_id=gid, bootstrap_servers=kafka_bootstrap) as view:
        print(
            f"view of {len(view)} keys from {view.records} changelog records, "
            f"caught up in {time.monotonic() - started:.2f}s"
        )
        assert_same_state(view, held, entries)
        assert_caught_up(view, 4)
        assert view.changes_since(0).changed.keys() == held.keys()
        assert "'totals'" in view.context(max_chars=300)
    assert view.describe()["state"] == "stopped"
    assert len(view) == keys, "closing keeps the entries readable"


@pytest.mark.slow
async def test_the_view_equals_the_survivor_after_a_worker_was_killed(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    n, keys = 20_000, 40
    topic = kafka_topic(4)
    produce_events(kafka_produce, topic, n, keys)
    gid = f"g-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(
        survive_a_kill, lambda w: worker_args(kafka_bootstrap, topic, gid, tmp_path, w), n
    )
    held = json.loads((tmp_path / "a.json").read_text())
    assert held == truth(n, keys)
    # b's changelog records come first in each partition it wrote, a's after them
    async with state_view("totals", group_id=gid, bootstrap_servers=kafka_bootstrap) as view:
        assert_same_state(view, held, file_entries(tmp_path / "a"))
        assert_caught_up(view, 4)


async def test_the_view_follows_a_running_worker_live(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    first, more, keys = 4_000, 4_000, 20
    topic = kafka_topic(2)
    produce_events(kafka_produce, topic, first, keys)
    gid = f"g-{uuid.uuid4().hex[:8]}"
    worker = Worker(worker_args(kafka_bootstrap, topic, gid, tmp_path, "w"))
    view = state_view("totals", group_id=gid, bootstrap_servers=kafka_bootstrap)

    def folded() -> int:
        return sum(v["count"] for v in view.snapshot.values())

    try:
        await asyncio.to_thread(worker.until, lambda p: p["folded"] == first, WAIT)
        await view.start()
        # the worker's last checkpoint may come after the view read to the end
        await eventually(lambda: folded() == first, "the first events")
        seen: list[list[StateChange]] = []
        subscription = view.updates.subscribe(seen.append)
        since = view.version
        produced = time.time()
        await asyncio.to_thread(kafka_produce, topic, more_events(first, more, keys))
        waited = await eventually(lambda: folded() == first + more, "the new events")
        print(f"the view had every new event {waited:.2f}s after they were produced")
        subscription.dispose()
        assert seen, "no change arrived"
        assert all(c.version > since for changes in seen for c in changes)
        changed = view.changes_since(since)
        assert set(changed.changed) == {f"k{i}" for i in range(keys)}
        assert not changed.deleted
        assert view.newest_record_at is not None
        assert view.newest_record_at >= produced - 1
        for key in changed.changed:
            assert view.snapshot.entry(key).wall_time >= produced - 1  # as_of: the writer's time
        await asyncio.to_thread(stop_together, worker)
        held = json.loads((tmp_path / "w.json").read_text())
        assert held == truth(first + more, keys)
        await eventually(lambda: view.snapshot.to_dict() == held, "the final state")
        await eventually(lambda: view.caught_up, "the end")
        assert_same_state(view, held, file_entries(tmp_path / "w"))
        assert_caught_up(view, 2)
    finally:
        worker.kill()
        await view.aclose()


def more_events(start: int, count: int, keys: int) -> list[tuple[str, bytes]]:
    return [
        (f"k{i % keys}", json.dumps({"id": i, "n": i % 97}).encode())
        for i in range(start, start + count)
    ]


async def test_deletes_apply_and_writes_are_refused(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    """Tombstones delete keys, while catching up and live; changes_since names them."""
    topic = kafka_topic(2)
    config = {"bootstrap.servers": kafka_bootstrap}
    writer = KafkaChangelog(topic=topic, input_topic="in", config=config, owner="test")
    codec = PickleCodec()
    version = iter(range(1, 1000))

    def put(partition: int, key: str, value: Any) -> tuple[int, bytes, bytes | None]:
        entry = Entry(key, value, next(version), 1, None, time.time())
        return (partition, codec.dumps(key), codec.dumps(entry_record(entry)))

    def delete(partition: int, key: str) -> tuple[int, bytes, bytes | None]:
        return (partition, codec.dumps(key), None)

    await asyncio.to_thread(
        writer.produce, [put(0, "a", 1), put(1, "b", 2), put(0, "c", 3), delete(1, "b")]
    )
    view = StateView("s", topic=topic, config=config)
    try:
        await view.start()
        assert view.snapshot.to_dict() == {"a": 1, "c": 3}
        assert view.lag() == {0: 0, 1: 0}
        since = view.version
        seen: list[list[StateChange]] = []
        view.updates.subscribe(seen.append)
        await asyncio.to_thread(writer.produce, [delete(0, "a"), put(1, "d", 4), delete(1, "x")])
        await eventually(lambda: view.snapshot.to_dict() == {"c": 3, "d": 4}, "the live changes")
        changes = view.changes_since(since)
        assert list(changes.changed) == ["d"]
        assert changes.deleted == ["a"]
        # two partitions: no order between them
        assert sorted((c.key, c.deleted) for batch in seen for c in batch) == [
            ("a", True),
            ("d", False),
        ]
        for write in (
            lambda: view.set("e", 5),
            lambda: view.delete("c"),
            view.sink,
            # the state sink's lean writes too
            lambda: view.write_values(["e"], [5], None, "src", 0, [1]),
            lambda: view.write_value("e", 5, None, "src", 0, 1),
        ):
            with pytest.raises(StateError, match="read-only view"):
                write()
    finally:
        await view.aclose()
        await asyncio.to_thread(writer.close)


async def test_a_missing_topic_or_the_wrong_codec_is_a_clear_error(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    with pytest.raises(StateError, match="does not exist: no worker of that group"):
        async with state_view("totals", group_id="nobody", bootstrap_servers=kafka_bootstrap):
            pass
    topic = kafka_topic(1)
    config = {"bootstrap.servers": kafka_bootstrap}
    writer = KafkaChangelog(topic=topic, input_topic="in", config=config, owner="test")
    entry = Entry("k", {1, 2}, 1, 1, None, time.time())
    await asyncio.to_thread(
        writer.produce, [(0, PickleCodec().dumps("k"), PickleCodec().dumps(entry_record(entry)))]
    )
    await asyncio.to_thread(writer.close)
    view = StateView("s", topic=topic, config=config, codec="json")
    with pytest.raises(StateError, match="partition 0 offset 0 cannot be read with codec 'json'"):
        await view.start()
    assert view.describe()["state"] == "failed"
    await view.aclose()


def test_from_changelog_needs_a_kafka_sourced_writer(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(
        """\
state:
  totals: {}
  prices: {}
pipelines:
  orders:
    source: {kafka: {topics: orders, bootstrap_servers: "127.0.0.1:1", group_id: g1}}
    sink: {state: totals}
  ticks:
    source: {websocket: {url: "ws://127.0.0.1:1"}}
    sink: {state: prices}
""",
        encoding="utf-8",
    )
    config = load(path)
    with pytest.raises(
        ConfigurationError, match="'prices' is written by ticks \\(websocket\\), not with"
    ):
        changelog_views(config)
    views = changelog_views(config, pipelines=["orders"])
    assert list(views) == ["totals"]
    assert views["totals"].topic == "rxagent-changelog.g1.totals"
    assert views["totals"].describe()["state"] == "not started"
    proc = subprocess.run(
        [EXE, "mcp", str(path), "--from-changelog"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert "'prices' is written by ticks (websocket), not with a changelog" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- rxagent mcp FILE --from-changelog --------------------------------------------------------


class Updates:
    """``notifications/resources/updated`` received, per URI."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self.changed = asyncio.Condition()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            async with self.changed:
                self.uris.append(message.params.uri)
                self.changed.notify_all()


@contextlib.asynccontextmanager
async def mcp_session(tmp_path: Path, app: Path, handler: Updates) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=EXE,
        args=["mcp", str(app), "--from-changelog", "--min-interval", "0.05"],
        cwd=str(tmp_path),
    )
    with (tmp_path / "server.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, message_handler=handler, read_timeout_seconds=WAIT) as s,
        ):
            yield s


def read_json(result: types.ReadResourceResult) -> Any:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return json.loads(content.text)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_rxagent_mcp_from_changelog_serves_the_whole_state_live(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_produce: Produce, tmp_path: Path
) -> None:
    first, more, keys = 3_000, 3_000, 20
    topic = kafka_topic(2)
    produce_events(kafka_produce, topic, first, keys)
    gid = f"g-{uuid.uuid4().hex[:8]}"
    app = tmp_path / "totals.yaml"
    app.write_text(
        f"""\
state:
  totals: {{description: per-key count and sum}}
pipelines:
  totals:
    source: {{kafka: {{topics: {topic}, bootstrap_servers: "{kafka_bootstrap}", group_id: {gid}}}}}
    sink: {{state: totals}}
""",
        encoding="utf-8",
    )
    store = "rxagent://state/totals"
    worker = Worker(worker_args(kafka_bootstrap, topic, gid, tmp_path, "w"))
    started = time.monotonic()
    try:
        await asyncio.to_thread(worker.until, lambda p: p["folded"] == first, WAIT)
        updates = Updates()
        async with mcp_session(tmp_path, app, updates) as session:
            await session.initialize()
            listed = await session.list_resources()
            assert store in {r.uri for r in listed.resources}
            await session.subscribe_resource(store)

            async def read_until(done: Callable[[Any], bool]) -> Any:
                deadline = time.monotonic() + WAIT
                while not done(data := read_json(await session.read_resource(store))):
                    assert time.monotonic() < deadline, f"timed out; last read: {data}"
                    await asyncio.sleep(0.05)
                return data

            def total(count: int) -> Callable[[Any], bool]:
                return lambda data: sum(v["count"] for v in data["entries"].values()) == count

            data = await read_until(total(first))
            assert data["keys"] == keys
            assert data["changelog"]["changelog"] == f"rxagent-changelog.{gid}.totals"
            assert data["changelog"]["state"] == "live"
            assert data["as_of"].endswith("Z")
            notified = updates.uris.count(store)
            await asyncio.to_thread(kafka_produce, topic, more_events(first, more, keys))
            async with asyncio.timeout(WAIT), updates.changed:
                await updates.changed.wait_for(lambda: updates.uris.count(store) > notified)
            data = await read_until(total(first + more))
            tool = await session.call_tool("changes_since", {"store": "totals", "version": 0})
            assert tool.structured_content is not None
            assert len(tool.structured_content["changed"]) == keys
            status = read_json(await session.read_resource("rxagent://status"))
            view = status["stores"]["totals"]["changelog"]
            assert view["group_id"] == gid
            assert set(view["partitions"]) == {"0", "1"}
            assert status["pipelines"] == {}
            await asyncio.to_thread(stop_together, worker)
            held = json.loads((tmp_path / "w.json").read_text())
            data = await read_until(lambda data: data["entries"] == held)
            assert data["changelog"]["lag"] == 0
    finally:
        worker.kill()
    print(f"rxagent mcp --from-changelog test: {time.monotonic() - started:.1f}s")
