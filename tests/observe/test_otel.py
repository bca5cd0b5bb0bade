"""OpenTelemetry spans of tool activations (rxagent.observe.otel): a real pipeline on a
memory source into a tool sink whose tool fails on one event, traced with the SDK's
TracerProvider into an in-memory exporter: one span per activation, named and
attributed per the GenAI tool-execution conventions, with the trigger's source
position, the activation's own times, ERROR on the failure, and no secret shown."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install 'rxagent[otel]'")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rxagent import App, Pipeline
from rxagent import operators as ops
from rxagent._secrets import register
from rxagent.observe import Observer
from rxagent.observe.otel import ActivationTracer, trace_activations, tracer_provider_from_env
from rxagent.sinks import activate
from rxagent.sources import memory
from rxagent.tools import tool

CANARY_ID = uuid.uuid4().hex
CANARY = f"CANARY-{CANARY_ID}"
register(CANARY)

#: How long each call takes (seconds): the spans' durations are at least this.
CALL = 0.02


async def alert(sym: str, px: float) -> str:
    """Alert on a price."""
    await asyncio.sleep(CALL)
    if px < 0:
        raise ValueError(f"negative price for {sym} (token {CANARY})")
    return f"{sym} {px}"


TICKS = [
    {"sym": "AAA", "px": 1.0, "ts": 1_700_000_000.0},
    {"sym": f"BBB-{CANARY}", "px": -2.0, "ts": 1_700_000_001.0},
    {"sym": "CCC", "px": 3.0, "ts": 1_700_000_002.0},
]


def _app() -> App:
    pipeline = (
        Pipeline("feed", memory(TICKS, name="ticks"))
        .pipe(ops.event_time("ts"), ops.key_by("sym"))
        .to(
            activate(
                tool(alert, description=f"Alert on a price ({CANARY})"),
                args=lambda t: {"sym": t["sym"], "px": t["px"]},
                key="sym",
                name="alerts",
            )
        )
    )
    return App([pipeline], name="traced")


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _run(app: App) -> None:
    await app.start()
    await asyncio.wait_for(app.wait(), 10)


def _everything(span: Any) -> str:
    texts = [span.name, str(span.status.description)]
    texts += [f"{k}={v}" for k, v in span.attributes.items()]
    for event in span.events:
        texts += [event.name, *(f"{k}={v}" for k, v in event.attributes.items())]
    return "\n".join(texts)


async def test_one_span_per_activation_with_its_trigger() -> None:
    provider, exporter = _provider()
    app = _app()
    begun = time.time_ns()
    with trace_activations(app, provider) as tracer:
        await _run(app)
    ended = time.time_ns()
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.attributes["rxagent.offset"])
    assert len(spans) == 3 == tracer.spans
    for offset, (span, tick) in enumerate(zip(spans, TICKS, strict=True)):
        attrs = span.attributes
        assert span.name == "execute_tool alert"
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is None
        assert span.instrumentation_scope.name == "rxagent"
        assert attrs["gen_ai.operation.name"] == "execute_tool"
        assert attrs["gen_ai.tool.name"] == "alert"
        assert attrs["gen_ai.tool.type"] == "function"
        assert attrs["gen_ai.tool.description"] == "Alert on a price (***)"
        assert isinstance(attrs["gen_ai.tool.call.id"], str)
        assert attrs["gen_ai.tool.call.id"]
        assert attrs["rxagent.pipeline"] == "feed"
        assert attrs["rxagent.sink"] == "alerts"
        assert attrs["rxagent.attempts"] == 1
        # the trigger: its source position and event time
        assert attrs["rxagent.source"] == "ticks"
        assert attrs["rxagent.offset"] == offset
        assert attrs["rxagent.event_time"] == tick["ts"]
        # the activation's own times, not the span's making
        assert begun <= span.start_time < span.end_time <= ended
        assert span.end_time - span.start_time >= CALL * 1e9 * 0.9
    ok_a, failed, ok_c = spans
    assert ok_a.attributes["rxagent.key"] == "AAA"
    assert ok_a.attributes["rxagent.status"] == "ok"
    assert ok_a.status.status_code is StatusCode.UNSET
    assert "error.type" not in ok_a.attributes
    assert not ok_a.events
    assert ok_c.status.status_code is StatusCode.UNSET
    # the failure: ERROR with the error, redacted
    assert failed.attributes["rxagent.key"] == "BBB-***"
    assert failed.attributes["rxagent.status"] == "error"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "negative price for BBB-*** (token ***)"
    assert failed.attributes["error.type"] == "ValueError"
    (event,) = failed.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert "***" in str(event.attributes["exception.message"])
    # distinct activations, distinct call ids
    assert len({s.attributes["gen_ai.tool.call.id"] for s in spans}) == 3
    for span in spans:
        assert CANARY_ID not in _everything(span)


async def test_closing_stops_and_an_observer_is_accepted() -> None:
    provider, exporter = _provider()
    app = _app()
    tracer = ActivationTracer(Observer(app), provider).start()
    tracer.start()  # again: follows nothing twice
    tracer.close()
    await _run(app)
    assert exporter.get_finished_spans() == ()
    assert tracer.spans == 0


def test_tracer_provider_from_env(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracer_provider_from_env(service_name="traced")
    try:
        assert provider.resource.attributes["service.name"] == "traced"
    finally:
        provider.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mine")
    provider = tracer_provider_from_env(service_name="traced")
    try:
        assert provider.resource.attributes["service.name"] == "mine"
        assert "zipkin" in caplog.text
    finally:
        provider.shutdown()


def test_rxagent_imports_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # (the MCP SDK brings opentelemetry-api along; the SDK is the extra's)
    code = (
        "import sys, rxagent, rxagent.cli, rxagent.observe, rxagent.observe.otel\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.sdk')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # without the packages: a clear ImportError saying what to install
    for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.sdk.trace"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'rxagent\[otel\]'"):
        trace_activations(_app())
    with pytest.raises(ImportError, match=r"opentelemetry-sdk.*rxagent\[otel\]"):
        tracer_provider_from_env()


PIPELINE = """\
tools:
  alert: alerts_tool:alert
pipelines:
  orders:
    source:
      memory:
        name: orders
        items:
          - {sym: AAPL, px: 1.0}
          - {sym: "${CANARY}", px: -2.0}
          - {sym: MSFT, px: 3.0}
    steps:
      - key_by: sym
    sinks:
      - tool: {tool: alert, args: {sym: sym, px: px}, name: alerts}
"""

TOOL = """\
async def alert(sym: str, px: float) -> str:
    \"\"\"Alert on a price.\"\"\"
    if px < 0:
        raise ValueError(f"negative price for {sym}")
    return f"{sym} {px}"
"""


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "orders.yaml").write_text(PIPELINE, encoding="utf-8")
    (tmp_path / "alerts_tool.py").write_text(TOOL, encoding="utf-8")
    return subprocess.run(
        [str(Path(sys.executable).with_name("rxagent")), "run", "orders.yaml", "--no-live", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "CANARY": CANARY, **env},
    )


def test_run_otel_exports_a_span_per_activation_on_the_console(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "--otel", OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="orders")
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert CANARY_ID not in out
    assert out.count('"name": "execute_tool alert"') == 3, out
    assert '"rxagent.source": "orders"' in out
    assert '"rxagent.offset": 1' in out
    assert '"status_code": "ERROR"' in out
    assert '"description": "negative price for ***"' in out
    assert '"service.name": "orders"' in out


def test_run_otel_without_an_otlp_exporter_warns_and_runs(tmp_path: Path) -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        installed = False
    else:  # pragma: no cover - the dev extra does not bring it
        installed = True
    # where nothing listens, on 127.0.0.1 (were the OTLP exporter installed)
    proc = _cli(
        tmp_path,
        "--otel",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr
    if not installed:
        assert "pip install opentelemetry-exporter-otlp-proto-http" in proc.stderr
    assert "execute_tool" not in proc.stderr  # nothing printed: spans go to OTLP or nowhere
