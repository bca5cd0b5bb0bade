"""OpenTelemetry traces of tool activations: one span per activation (an extra:
``pip install 'rxagent[otel]'``).

:func:`trace_activations` follows every tool sink's
:attr:`~rxagent.sinks.tools.ToolSink.results` (one :class:`ToolResult` per
activation, when it ends) and makes one span of each activation that called its
tool, following OpenTelemetry's semantic conventions for GenAI tool execution:

* name ``execute_tool {tool}``, kind ``INTERNAL``;
* ``gen_ai.operation.name`` ``execute_tool``, ``gen_ai.tool.name``,
  ``gen_ai.tool.type`` ``function``, ``gen_ai.tool.description`` and
  ``gen_ai.tool.call.id`` (the activation's idempotency key, when it has one);
* ``rxagent.pipeline``, ``rxagent.sink``, ``rxagent.key``, ``rxagent.attempts``,
  ``rxagent.status``, ``rxagent.reason`` and the trigger's source position
  (``rxagent.source``, ``rxagent.partition``, ``rxagent.offset``) and event time
  (``rxagent.event_time``, epoch seconds);
* start and end times of the activation: from its first call's start to its end
  (its ``duration``, counted back from when the result arrives);
* status ``ERROR`` with ``error.type`` (the exception's class name, ``timeout`` or
  ``cancelled``) and an ``exception`` event when the activation failed, timed out
  or was cancelled; unset otherwise.

Activations that never called their tool (suppressed by cooldown or busy, dry
runs, invalid arguments) make no span. Every text is redacted
(:mod:`rxagent._secrets`), like every other output. Nothing here runs per event:
one span per activation, made from the results stream on the loop.

The OpenTelemetry packages are imported only here, when tracing starts: rxagent
imports without them.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, NoReturn

from reactivex.abc import DisposableBase

from .._secrets import redact
from ..runtime import App
from ..sinks.tools import ToolResult, ToolSink, ToolStatus
from ..state.snapshot import key_text
from .metrics import Observer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = [
    "INSTRUMENTATION_NAME",
    "ActivationTracer",
    "tracer_provider_from_env",
    "trace_activations",
]

log = logging.getLogger(__name__)

#: The instrumentation scope of the spans.
INSTRUMENTATION_NAME = "rxagent"

_INSTALL = "pip install 'rxagent[otel]'"
#: Characters an error message keeps on a span.
_MESSAGE_CHARS = 500


def _require(what: str) -> NoReturn:
    raise ImportError(f"OpenTelemetry tracing needs the {what} package: {_INSTALL}") from None


class ActivationTracer:
    """One span per tool activation of ``app`` (an :class:`~rxagent.App` or an
    :class:`~rxagent.observe.Observer` of one), made with ``tracer_provider``'s
    tracer (default: the global provider, ``opentelemetry.trace``'s).

    :meth:`start` follows the tool sinks' results (on the loop that runs the app,
    before or after it starts; sinks of pipelines added later are followed by
    calling it again); :meth:`close` stops. A context manager: ``with`` closes it.
    """

    def __init__(self, app: App | Observer, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError:
            _require("opentelemetry-api")
        self.app: App = app.app if isinstance(app, Observer) else app
        from .. import __version__

        self.tracer: Tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        #: Spans made so far.
        self.spans = 0
        self._subscriptions: list[DisposableBase] = []
        self._followed: set[int] = set()

    def start(self) -> ActivationTracer:
        """Follow every tool sink's results (again: those not followed yet)."""
        for name, pipeline in self.app.pipelines.items():
            for sink in pipeline.sinks:
                if not isinstance(sink, ToolSink) or id(sink) in self._followed:
                    continue
                self._followed.add(id(sink))

                def on_result(
                    result: ToolResult, _sink: ToolSink = sink, _name: str = name
                ) -> None:
                    self._span(result, _name, _sink)

                self._subscriptions.append(sink.results.subscribe(on_next=on_result))
        return self

    def close(self) -> None:
        """Stop following the tool sinks' results (spans made stay made)."""
        for subscription in self._subscriptions:
            subscription.dispose()
        self._subscriptions.clear()
        self._followed.clear()

    def __enter__(self) -> ActivationTracer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _span(self, result: ToolResult, pipeline: str, sink: ToolSink) -> None:
        if result.attempts == 0:
            return  # never called: suppressed, invalid, a dry run, cancelled waiting
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        end = time.time_ns()
        start = end - max(0, int(result.duration * 1e9))
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": result.tool,
            "gen_ai.tool.type": "function",
            "rxagent.pipeline": pipeline,
            "rxagent.sink": sink.name,
            "rxagent.key": _text(result.key),
            "rxagent.attempts": result.attempts,
            "rxagent.status": str(result.status),
        }
        description = sink.tool.description
        if description:
            attributes["gen_ai.tool.description"] = redact(description)
        if result.idempotency_key is not None:
            attributes["gen_ai.tool.call.id"] = redact(result.idempotency_key)
        if result.reason is not None:
            attributes["rxagent.reason"] = result.reason
        event = result.event
        if event is not None:
            position = event.position
            if position is not None:
                attributes["rxagent.source"] = redact(position.source)
                if position.partition is not None:
                    attributes["rxagent.partition"] = _text(position.partition)
                if position.offset is not None:
                    attributes["rxagent.offset"] = position.offset
            if event.time is not None:
                attributes["rxagent.event_time"] = float(event.time)
        # a root span: an activation is not part of whatever happened to be current
        span = self.tracer.start_span(
            f"execute_tool {result.tool}",
            context=Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=start,
        )
        if not result.ok:
            error = result.error
            if result.status is ToolStatus.TIMEOUT:
                kind = "timeout"
            elif result.status is ToolStatus.CANCELLED:
                kind = "cancelled"
            else:
                kind = type(error).__name__ if error is not None else str(result.status)
            message = _message(error) if error is not None else (result.reason or kind)
            span.set_attribute("error.type", kind)
            if error is not None:
                span.add_event(
                    "exception",
                    {"exception.type": type(error).__name__, "exception.message": message},
                    timestamp=end,
                )
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(end_time=end)
        self.spans += 1


def _text(value: Hashable) -> str:
    return redact(key_text(value))


def _message(error: BaseException) -> str:
    text = redact(str(error))
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def trace_activations(
    app: App | Observer, tracer_provider: TracerProvider | None = None
) -> ActivationTracer:
    """Start making one span per tool activation of ``app`` with ``tracer_provider``
    (default: the global one); close what this returns to stop::

        with trace_activations(app, provider):
            await app.run()
    """
    return ActivationTracer(app, tracer_provider).start()


def tracer_provider_from_env(*, service_name: str | None = None) -> SdkTracerProvider:
    """An SDK ``TracerProvider`` configured from the standard ``OTEL_*`` variables,
    for ``rxagent run --otel``.

    Its resource comes from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
    (``service_name`` when neither names the service). ``OTEL_TRACES_EXPORTER``
    picks the exporter: ``otlp`` (the default) needs the OTLP exporter package
    (``opentelemetry-exporter-otlp-proto-http`` or ``-grpc``, configured by
    ``OTEL_EXPORTER_OTLP_*``); without it a warning says so and spans are not
    exported. ``console`` prints spans on stderr; ``none`` exports nothing. Spans
    are exported in batches, off the event loop (the SDK's batch processor).
    """
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as Provider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        _require("opentelemetry-sdk")
    resource = Resource.create()
    if service_name and (
        "OTEL_SERVICE_NAME" not in os.environ
        and "service.name=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    ):
        resource = resource.merge(Resource.create({SERVICE_NAME: service_name}))
    provider = Provider(resource=resource)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in (n.strip().lower() for n in names.split(",")):
        exporter: SpanExporter | None = None
        if name == "console":
            exporter = ConsoleSpanExporter(out=sys.stderr)
        elif name == "otlp":
            exporter = _otlp_exporter()
        elif name not in ("none", ""):
            log.warning(
                "OTEL_TRACES_EXPORTER=%s: rxagent knows otlp, console and none; "
                "spans of that exporter are not exported",
                name,
            )
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )
    package = "grpc" if protocol == "grpc" else "http"
    try:
        module = importlib.import_module(
            f"opentelemetry.exporter.otlp.proto.{package}.trace_exporter"
        )
    except ImportError:
        log.warning(
            "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-%s "
            "(pip install opentelemetry-exporter-otlp-proto-%s); spans are not exported. "
            "OTEL_TRACES_EXPORTER=console prints them instead.",
            package,
            package,
        )
        return None
    return module.OTLPSpanExporter()
