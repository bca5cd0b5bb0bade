"""``--log-format json``: one JSON object per line, redacted like text logs: a canary
secret given through the environment (a WebSocket token, header and URL parameter
of a source that cannot connect, so its errors are logged) appears in no line."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from rxagent._secrets import register
from rxagent.observe.logs import JsonFormatter, configure_logging

EXE = str(Path(sys.executable).with_name("rxagent"))
HTTP = ("--http", "127.0.0.1:0")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # closed when returned: nothing listens


def test_run_logs_json_lines_without_the_canary(tmp_path: Path) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    port = _closed_port()
    (tmp_path / "feed.yaml").write_text(
        f"""version: 1
state:
  last: {{}}
pipelines:
  feed:
    source:
      websocket:
        url: ws://127.0.0.1:{port}/feed?token=${{CANARY}}
        headers: {{X-Api-Key: "${{CANARY}}"}}
        backoff: {{initial: 0.05, max_delay: 0.05, jitter: none, max_attempts: 1000}}
    sinks:
      - state: {{store: last}}
""",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [
            EXE,
            "-vv",
            "run",
            "feed.yaml",
            "--duration",
            "1.5",
            "--log-format",
            "json",
            "--http",
            "127.0.0.1:0",
        ],
        cwd=tmp_path,
        env={**os.environ, "CANARY": canary},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) > 3, proc.stderr
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    assert any(r.get("pipeline") == "feed" for r in records)
    assert any(r["logger"] == "rxagent.observe" and r.get("url") for r in records)
    assert any("reconnecting" in r["message"] for r in records)
    assert canary[8:] not in proc.stderr
    assert canary[8:] not in proc.stdout


def test_the_formatter_redacts_arguments_extras_and_tracebacks() -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    register(secret)
    stream = io.StringIO()
    handler = configure_logging(logging.INFO, "json")
    handler.setStream(stream)
    try:
        log = logging.getLogger("rxagent.test.logs")
        log.info("token %s", secret, extra={"pipeline": "p", "stage": secret})
        try:
            raise ValueError(f"bad {secret}")
        except ValueError:
            log.exception("failed")
    finally:
        configure_logging(logging.WARNING, "text")
    text = stream.getvalue()
    assert secret not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["pipeline"] == "p"
    assert first["level"] == "info"
    assert first["message"] == "token ***"
    assert "ValueError" in second["exception"]
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)
