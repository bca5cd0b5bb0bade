"""Every pipeline file in pipelines/ loads, builds and runs against real local servers.

Each file has a runner in :data:`RUNNERS` that starts what it reads (the simulated
market feed, a sensor feed, the Kafka broker of the session), points the file at it
through ``${VAR}`` (the loader's ``environ=``), runs it and checks what it produced:
state, tool activations, dead letters. A file without a runner fails, so a new
example cannot be added without being run here, and none rots.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from rxagent.config import BuiltApp, load
from rxagent.config.graph import mermaid
from rxagent.config.testing import check_cases, run_cases
from rxagent.demo import MarketFeedServer
from rxagent.examples import SensorFeedServer
from rxagent.sinks.tools import ToolResult

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
FILES = sorted(PIPELINES.glob("*.yaml"))


# -- the broker ---------------------------------------------------------------------------


def _kafka_helpers() -> ModuleType:
    """tests/kafka/conftest.py, loaded by path (it is not importable as a module)."""
    path = ROOT / "tests" / "kafka" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_rxagent_kafka_helpers", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A Kafka broker's bootstrap address: RXAGENT_KAFKA_BOOTSTRAP's, or a Tansu of
    this module's own on 127.0.0.1 (the same way tests/kafka starts one)."""
    existing = os.environ.get("RXAGENT_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    process, bootstrap = _kafka_helpers()._start_tansu()
    try:
        yield bootstrap
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _topic(bootstrap: str, base: str, partitions: int = 1) -> str:
    name = f"{base}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=10)[name].result(10)
    deadline = time.monotonic() + 5
    while len(admin.list_topics(name, timeout=5).topics[name].partitions) < partitions:
        assert time.monotonic() < deadline, f"topic {name} has no partitions yet"
        time.sleep(0.02)
    return name


def _produce(bootstrap: str, topic: str, records: list[tuple[str | None, Any]]) -> None:
    """Produce ``(key, value)`` pairs as JSON (``None`` stays a null value) and wait."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in records:
        producer.produce(
            topic,
            None if value is None else json.dumps(value).encode(),
            None if key is None else key.encode(),
        )
    assert producer.flush(10) == 0, "not every record was delivered"


# -- running a file -------------------------------------------------------------------------


@dataclass
class Run:
    """What a runner needs: the file, and the broker on demand (started once per module)."""

    path: Path
    request: pytest.FixtureRequest

    def kafka(self) -> str:
        bootstrap: str = self.request.getfixturevalue("broker")
        return bootstrap

    def build(self, **environ: str) -> BuiltApp:
        return load(self.path, environ=environ).build()


def _results(built: BuiltApp, pipeline: str, sink: str) -> list[ToolResult]:
    """Collect the tool results of the named tool sink (subscribe before running)."""
    results: list[ToolResult] = []
    built.sinks[pipeline][sink].results.subscribe(results.append)
    return results


async def _run_until(
    built: BuiltApp, done: Callable[[], bool], timeout: float, *, linger: float = 0.0
) -> None:
    """Run the app until ``done()`` holds (checked every 50 ms) and ``linger`` seconds
    more, then stop it."""
    task = asyncio.create_task(built.app.run(duration=timeout + linger))
    for _ in range(int(timeout / 0.05)):  # a predicate of state: polled, not awaited
        if done() or task.done():
            break
        await asyncio.sleep(0.05)
    if done() and linger:
        await asyncio.sleep(linger)
    built.app.request_stop()
    await task
    assert done(), "the pipelines did not reach the expected state in time"


async def run_market_feed(run: Run) -> None:
    async with MarketFeedServer(rate=2000, seed=7) as feed:
        port = feed.url.split(":")[2].split("/")[0]
        built = run.build(MARKET_PORT=port)
        alerts = _results(built, "alerts", "alerts")
        prices = built.stores["prices"]

        def alerted() -> bool:
            return any(r.ok for r in alerts)

        await _run_until(built, alerted, timeout=8)
        # MarketFeedServer's exit hangs if a handler still waits for a tick when its
        # producer stops: let the handler see its client is gone first (it does on the
        # next tick, while the producer still runs)
        for _ in range(100):
            if not feed._server.connections:
                break
            await asyncio.sleep(0.02)
    rows = prices.snapshot.to_dict()
    assert set(rows) == {"AAPL", "MSFT", "NVDA", "BTC", "ETH"}
    assert all(row["n"] >= 1 and row["low"] <= row["avg"] <= row["high"] for row in rows.values())
    fired = [r for r in alerts if r.ok]
    assert fired
    assert all(r.value.startswith(f"ALERT {r.key} moved") for r in fired)
    # the file's rule: abs(value.move_pct) >= 0.2
    assert all(abs(r.event.value["move_pct"]) >= 0.2 for r in fired if r.event)
    # the feed's garbage frames (one per 500 ticks) are dead letters with the reason
    letters = built.dead_letters.letters  # type: ignore[attr-defined]
    assert letters, "the feed sent garbage frames: they should be dead letters"
    assert {(letter.pipeline, letter.stage, letter.error_type) for letter in letters} == {
        ("market", "feed", "DecodeError")
    }
    assert all("invalid JSON" in letter.message for letter in letters)


async def run_sensor_sessions(run: Run) -> None:
    sensors: dict[str, float | None] = {"boiler": None, "pump": 0.3, "fan": None}
    async with SensorFeedServer(sensors, interval=0.05) as feed:
        built = run.build(SENSOR_PORT=str(feed.port), SENSOR_QUIET_GAP="300ms")
        quiet = _results(built, "sensors", "quiet")
        started = time.monotonic()
        # until the pump's session closes, and 0.4 s more: the live sensors never do
        await _run_until(built, lambda: bool(quiet), timeout=5, linger=0.4)
    elapsed = time.monotonic() - started
    # only the sensor that stopped reporting went quiet: the live ones never closed a session
    assert [(r.key, r.ok) for r in quiet] == [("pump", True)]
    assert quiet[0].value.startswith("QUIET pump after ")
    session = built.stores["sessions"].snapshot.to_dict()
    assert list(session) == ["pump"]
    assert 3 <= session["pump"]["readings"] <= 8, session
    assert 20 < session["pump"]["avg"] < 30
    assert 20 < session["pump"]["last"] < 30
    assert elapsed < 5


async def run_event_sourcing_replay(run: Run) -> None:
    built = run.build()
    await built.app.run(duration=10)  # ends with the recording
    assert built.stores["accounts"].snapshot.to_dict() == {
        "acc-1": {"owner": "alice", "balance": 120, "events": 4},
        "acc-2": {"owner": "bob", "balance": 25, "events": 3},
    }
    letters = built.dead_letters.letters  # type: ignore[attr-defined]
    assert sorted(letter.message for letter in letters) == [
        "account 'acc-2': cannot withdraw 50 from 20",
        "account 'acc-4' is not open ('deposited' refused)",
    ]


async def run_kafka_orders(run: Run) -> None:
    bootstrap = run.kafka()
    topic = _topic(bootstrap, "orders", partitions=2)
    orders: list[dict[str, Any]] = [
        {"order_id": "o1", "sku": "apple", "qty": 3, "paid": True},
        {"order_id": "o2", "sku": "pear", "qty": 1, "paid": False},
        {"order_id": "o3", "sku": "plum", "qty": 7, "paid": True},
        {"order_id": "o1", "sku": "apple", "qty": 3, "paid": True},  # redelivered
        {"order_id": "o4", "sku": "fig", "qty": "many", "paid": True},  # not an int
        {"order_id": "o5", "sku": "kiwi", "qty": 0, "paid": True},  # the rule: no quantity
    ]
    _produce(bootstrap, topic, [(o["order_id"], o) for o in orders])
    built = run.build(
        RXAGENT_KAFKA_BOOTSTRAP=bootstrap,
        ORDERS_TOPIC=topic,
        ORDERS_GROUP=f"shipper-{uuid.uuid4().hex[:6]}",
        ORDERS_ASSIGN="true",
        ORDERS_UNTIL_EOF="true",
    )
    shipped = _results(built, "orders", "shipping")
    await built.app.run(duration=15)  # until_eof: ends at the end of the topic
    assert sorted(r.value for r in shipped if r.ok) == ["SHIP-o1-applex3", "SHIP-o3-plumx7"]
    assert set(built.stores["paid_orders"].snapshot.to_dict()) == {"o1", "o3", "o4"}
    [letter] = built.dead_letters.letters  # type: ignore[attr-defined]
    assert letter.event.value["order_id"] == "o4"
    assert "qty" in letter.message


async def run_cdc_read_model(run: Run) -> None:
    bootstrap = run.kafka()
    topic = _topic(bootstrap, "customers")

    def change(op: str, before: Any, after: Any, lsn: int) -> dict[str, Any]:
        payload = {
            "before": before,
            "after": after,
            "op": op,
            "source": {"connector": "postgresql", "table": "customers", "lsn": lsn},
            "ts_ms": 1764000000000 + lsn,
        }
        return {"schema": {"type": "struct", "name": "customers.Envelope"}, "payload": payload}

    ada = {"id": 1, "name": "Ada", "tier": "gold"}
    bob = {"id": 2, "name": "Bob", "tier": "silver"}
    cy = {"id": 3, "name": "Cy", "tier": "bronze"}
    _produce(
        bootstrap,
        topic,
        [
            ("1", change("r", None, ada, 10)),  # the connector's initial snapshot
            ("2", change("c", None, bob, 11)),
            ("3", change("c", None, cy, 12)),
            ("2", change("u", bob, {**bob, "tier": "gold"}, 13)),
            ("3", change("d", cy, None, 14)),
            ("3", None),  # the tombstone after a delete
            ("9", change("t", None, {"id": 9}, 15)),  # an operation it cannot apply
            ("8", {"op": "c", "before": None, "after": {"id": 8, "name": "Di"}}),  # no schema
        ],
    )
    built = run.build(
        RXAGENT_KAFKA_BOOTSTRAP=bootstrap,
        CDC_TOPIC=topic,
        CDC_GROUP=f"read-model-{uuid.uuid4().hex[:6]}",
        CDC_UNTIL_EOF="true",
    )
    await built.app.run(duration=15)
    assert built.stores["customers"].snapshot.to_dict() == {
        1: {**ada, "_op": "r", "_lsn": 10},
        2: {"id": 2, "name": "Bob", "tier": "gold", "_op": "u", "_lsn": 13},
        8: {"id": 8, "name": "Di", "_op": "c", "_lsn": None},
    }
    [letter] = built.dead_letters.letters  # type: ignore[attr-defined]
    assert "unknown change operation 't'" in letter.message


async def run_orchestrator_worker(run: Run) -> None:
    bootstrap = run.kafka()
    commands = _topic(bootstrap, "commands", partitions=2)
    results = _topic(bootstrap, "results")
    built = run.build(
        RXAGENT_KAFKA_BOOTSTRAP=bootstrap,
        COMMANDS_TOPIC=commands,
        RESULTS_TOPIC=results,
        JOBS_GROUP=f"workers-{uuid.uuid4().hex[:6]}",
        WORKERS_ASSIGN="true",
    )
    jobs = built.stores["jobs"]

    def finished() -> bool:
        rows = jobs.snapshot.to_dict()
        return sum(1 for row in rows.values() if row.get("status") == "done") == 3

    await _run_until(built, finished, timeout=15)
    rows = jobs.snapshot.to_dict()
    assert {job: row.get("result") for job, row in rows.items()} == {
        "j1": 6,
        "j2": 9,
        "j3": 30,
        "j4": None,
    }
    assert rows["j4"]["status"] == "dispatched"  # its command failed in the worker
    [letter] = built.dead_letters.letters  # type: ignore[attr-defined]
    assert letter.pipeline == "work"
    assert "unknown operation 'divide'" in letter.message


#: file name -> the runner that starts what it reads, runs it and checks what it did
RUNNERS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "market_feed.yaml": run_market_feed,  # the simulated market feed (WebSocket)
    "sensor_sessions.yaml": run_sensor_sessions,  # the simulated sensor feed (WebSocket)
    "event_sourcing_replay.yaml": run_event_sourcing_replay,  # the checked-in recording
    "kafka_orders.yaml": run_kafka_orders,  # the broker
    "cdc_read_model.yaml": run_cdc_read_model,  # the broker
    "orchestrator_worker.yaml": run_orchestrator_worker,  # the broker
}


def test_there_are_pipeline_files() -> None:
    assert len(FILES) >= 6, FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_is_valid_with_its_defaults(path: Path) -> None:
    """With no environment at all, every ``${VAR:-default}`` default makes a valid file,
    it says how to run it, its graph renders and its marble tests (if any) pass."""
    config = load(path, environ={})
    assert config.build() is not None  # builds without connecting to anything
    assert f"rxagent run pipelines/{path.name}" in path.read_text(encoding="utf-8")
    assert "flowchart" in mermaid(config)
    assert not check_cases(config)
    failed = [case.report() for case in run_cases(config) if not case.passed]
    assert not failed, "\n".join(failed)


#: the files whose runner needs the broker: their run is marked ``kafka``
KAFKA_FILES = {"kafka_orders.yaml", "cdc_read_model.yaml", "orchestrator_worker.yaml"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.name, marks=[pytest.mark.kafka] if p.name in KAFKA_FILES else [])
        for p in FILES
    ],
)
async def test_file_runs(path: Path, request: pytest.FixtureRequest) -> None:
    runner = RUNNERS.get(path.name)
    if runner is None:
        pytest.fail(
            f"pipelines/{path.name} has no runner in tests/test_pipelines.py RUNNERS: "
            "add one that runs it and checks its state, tool activations or dead letters"
        )
    await runner(Run(path, request))
