"""WebSocket source health against real servers on 127.0.0.1: refused credentials
fail loudly, reconnects show their attempt count and last error (status, logs and
the ``rxagent run`` output)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import pytest
from _helpers import until
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from rxagent import Pipeline
from rxagent.backoff import Backoff
from rxagent.runtime import PipelineState
from rxagent.sinks import ListSink
from rxagent.websocket.source import WebSocketError, WebSocketSource

FAST = Backoff(initial=0.005, factor=1.0, max_delay=0.005, jitter="none", max_attempts=None)
server_log = logging.getLogger("tests.wsserver")
server_log.setLevel(logging.CRITICAL)


@asynccontextmanager
async def refusing(status: HTTPStatus, counter: list[int]) -> AsyncIterator[str]:
    """A server refusing every handshake with ``status``; counts the attempts."""

    def process_request(connection: ServerConnection, request: Request) -> Response:
        counter.append(1)
        return connection.respond(status, "bad token\n")

    async def handler(ws: ServerConnection) -> None:  # never reached
        await ws.close()

    async with serve(
        handler, "127.0.0.1", 0, process_request=process_request, logger=server_log
    ) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/feed?token=s3cret"


def rxagent_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rxagent" and r.levelno == level]


@pytest.mark.parametrize("status", [HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN])
async def test_refused_credentials_fail_the_pipeline_after_auth_retries(
    status: HTTPStatus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rxagent")
    attempts: list[int] = []
    async with refusing(status, attempts) as url:
        source = WebSocketSource(url, backoff=FAST, token_provider=lambda: "wrong")
        pipeline = Pipeline("feed", source).to(ListSink())
        await pipeline.start()
        await until(lambda: pipeline.status().state is PipelineState.FAILED)
    # the first and auth_retries=3 more, then no more
    assert len(attempts) == 4
    described = pipeline.status()
    assert described.failed_stage == source.name
    assert isinstance(pipeline.error, WebSocketError)
    message = str(pipeline.error)
    assert f"refused the credentials 4 times in a row (HTTP {status.value}" in message
    assert "auth_retries=3" in message
    assert "check the token" in message
    assert "s3cret" not in message  # the query is not shown
    health = described.source["health"]
    assert health["state"] == "stopped"
    assert "refused the credentials" in health["last_error"]
    assert described.source["auth_refusals"] == 4
    errors = rxagent_records(caplog, logging.ERROR)
    # once when refused, once when the pipeline fails: not once per attempt
    assert sum("refused the credentials (HTTP" in m for m in errors) == 1, errors
    assert any("pipeline 'feed' failed" in m for m in errors), errors


async def test_retrying_refused_credentials_forever_is_a_choice_and_shows_in_health(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rxagent")
    attempts: list[int] = []
    async with refusing(HTTPStatus.UNAUTHORIZED, attempts) as url:
        source = WebSocketSource(url, backoff=FAST, auth_retries=None)
        pipeline = Pipeline("feed", source).to(ListSink())
        await pipeline.start()
        try:
            await until(lambda: len(attempts) >= 20)
            status = pipeline.status()
            assert status.state is PipelineState.RUNNING
            health = status.source["health"]
            assert health["state"] == "auth_refused"
            assert health["attempt"] >= 19
            assert "HTTP 401" in health["last_error"]
        finally:
            await pipeline.stop()
    errors = rxagent_records(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert "retrying forever (auth_retries=None)" in errors[0], errors
    assert not rxagent_records(caplog, logging.WARNING)


async def test_reconnects_show_their_attempt_and_last_error_and_warn_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rxagent")
    up = asyncio.Event()
    up.set()

    async def handler(ws: ServerConnection) -> None:
        if not up.is_set():
            await ws.close(1013, "try again later")
            return
        await ws.send('{"n": 1}')
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, logger=server_log) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/feed"
        source = WebSocketSource(url, backoff=FAST, stable_after=0.05)
        sink = ListSink()
        pipeline = Pipeline("feed", source).to(sink)
        await pipeline.start()
        try:
            await until(lambda: len(sink.values) == 1)
            assert pipeline.status().source["health"]["state"] == "connected"
            await asyncio.sleep(0.1)  # stable
            up.clear()
            for connection in list(server.connections):
                await connection.close(1012, "restarting")
            await until(lambda: source.health.attempt >= 10)
            health = pipeline.status().source["health"]
            assert health["state"] == "reconnecting"
            assert "1013" in health["last_error"]
            assert "try again later" in health["last_error"]
            up.set()
            await until(lambda: source.health.state == "connected")
        finally:
            await pipeline.stop()
    warnings = rxagent_records(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "reconnecting (attempt 1 in" in warnings[0]
    infos = rxagent_records(caplog, logging.INFO)
    assert any("connected again" in m and "failed attempts" in m for m in infos), infos


def test_rxagent_run_shows_reconnects_and_fails_on_refused_credentials(tmp_path: Path) -> None:
    """The key=value lines show the source's health, attempt and last error; a wrong
    token ends the run with a clear message and exit code 1."""
    exe = str(Path(sys.executable).with_name("rxagent"))

    def run_against(script: str, pipeline_file: str) -> subprocess.CompletedProcess[str]:
        server = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = server.stdout.readline().strip()
            (tmp_path / "p.yaml").write_text(
                textwrap.dedent(pipeline_file).replace("PORT", port), encoding="utf-8"
            )
            return subprocess.run(
                [exe, "run", "p.yaml", "--duration", "3.5", "--no-live"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
                env={**os.environ, "WS_TOKEN": "wrong-token-value"},
            )
        finally:
            server.kill()
            server.wait()

    closing = """
        import asyncio
        from websockets.asyncio.server import serve

        async def handler(ws):
            await ws.close(1013, "try again later")

        async def main():
            async with serve(handler, "127.0.0.1", 0) as server:
                print(server.sockets[0].getsockname()[1], flush=True)
                await asyncio.Future()

        asyncio.run(main())
    """
    proc = run_against(
        closing,
        """\
        pipelines:
          feed:
            source:
              websocket:
                url: ws://127.0.0.1:PORT/feed
                backoff:
                  {initial: 0.05, factor: 1, max_delay: 0.05, jitter: none, max_attempts: null}
            sink: log
        """,
    )
    lines = [line for line in proc.stdout.splitlines() if "pipeline=feed" in line]
    assert lines, proc.stdout + proc.stderr
    # the source reconnects every 50 ms and is briefly connected between a handshake
    # and the server's close: a line may catch it there; most catch it reconnecting
    reconnecting = [line for line in lines if "source=reconnecting" in line]
    assert len(reconnecting) * 2 >= len(lines), lines
    last = reconnecting[-1]
    assert " attempt=" in last, lines
    assert " reconnects=" in last, lines
    assert 'last_error="ConnectionClosedError: received 1013' in last, lines

    refusing_server = """
        import asyncio
        from http import HTTPStatus
        from websockets.asyncio.server import serve

        def refuse(connection, request):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad token\\n")

        async def main():
            async with serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse) as server:
                print(server.sockets[0].getsockname()[1], flush=True)
                await asyncio.Future()

        asyncio.run(main())
    """
    proc = run_against(
        refusing_server,
        """\
        pipelines:
          feed:
            source:
              websocket:
                url: ws://127.0.0.1:PORT/feed
                token: ${WS_TOKEN}
                backoff:
                  {initial: 0.05, factor: 1, max_delay: 0.05, jitter: none, max_attempts: null}
            sink: log
        """,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "refused the credentials (HTTP 401 Unauthorized)" in proc.stderr, out
    assert "refused the credentials 4 times in a row" in proc.stdout, out
    assert "wrong-token-value" not in out
