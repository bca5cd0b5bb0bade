"""The built-in sink kinds: state, tool, kafka, websocket, record and log."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, Literal

from pydantic import Field

from ..registry import BuildContext, Kind, Registry
from .types import (
    BackoffParams,
    Duration,
    FieldOrExpr,
    PythonRef,
    SinkParams,
    WsUrl,
    compute,
    import_ref,
    is_field,
    key_arg,
    tls_files,
)

__all__ = [
    "KafkaSinkParams",
    "LogParams",
    "RecordParams",
    "StateSinkParams",
    "ToolSinkParams",
    "WebSocketSinkParams",
    "register",
]


class StateSinkParams(SinkParams):
    """Fold events into a state store."""

    store: str = Field(description="a store declared under state:")
    key: FieldOrExpr | None = Field(None, description="default: the event's key")
    value: FieldOrExpr | None = Field(None, description="default: the whole value")
    reducer: PythonRef | None = Field(None, description="reducer(old, event) -> new")


def _state_sink(p: StateSinkParams, ctx: BuildContext) -> Any:
    return ctx.stores[p.store].sink(
        key=None if p.key is None else key_arg(p.key),
        value=None if p.value is None else compute(p.value),
        reducer=import_ref(p.reducer) if p.reducer else None,
        name=p.name,
    )


class ToolSinkParams(SinkParams):
    """Activate a tool once per event (docs/architecture.md, tools)."""

    tool: str = Field(description="a tool declared under tools:")
    args: dict[str, FieldOrExpr] | FieldOrExpr | None = Field(
        None,
        description="argument -> field or expression; or one expression giving all "
        "arguments; default: the value is the arguments",
    )
    key: FieldOrExpr | None = Field(
        None, description="the policy works per this key (default: the event's key)"
    )
    policy: Literal["queue", "latest", "drop_while_busy", "parallel"] = Field(
        "queue",
        description="a busy key: queue its events, keep the latest, drop them, or run in parallel",
    )
    cooldown: Duration | None = Field(
        None, description="after an activation, drop the key's events for this long"
    )
    concurrency: int = Field(8, ge=1, description="most calls running at once, across keys")
    timeout: Duration | None = Field(None, description="longest attempt (then a ToolTimeoutError)")
    retry: BackoffParams | None = Field(
        None, description="retry failed attempts with backoff (default: call once)"
    )


def _tool_sink(p: ToolSinkParams, ctx: BuildContext) -> Any:
    from ...events import Event
    from ...sinks.tools import ToolSink
    from ..expressions import Expression, compile_expression

    def of_event(text: str) -> Callable[[Any], Any] | Expression:
        # a field, a value-only expression, or one reading key/time (an Expression)
        if is_field(text):
            return itemgetter(text)
        return compile_expression(text)

    def reads_event(fn: Callable[[Any], Any] | Expression) -> bool:
        return isinstance(fn, Expression) and fn.uses_event

    def call(fn: Callable[[Any], Any] | Expression, event: Event) -> Any:
        if isinstance(fn, Expression):
            return fn.evaluate_event(event.value, event.key, event.time)
        return fn(event.value)

    args: Callable[[Any], Any] | None = None
    event_args: Callable[[Event], Any] | None = None
    if isinstance(p.args, str):
        one = of_event(p.args)
        if reads_event(one):
            event_args = lambda event: call(one, event)  # noqa: E731
        else:
            args = one
    elif p.args is not None:
        pairs = [(arg, of_event(text)) for arg, text in p.args.items()]
        if any(reads_event(fn) for _, fn in pairs):
            # some argument reads the event's key or time: every one gets the whole event
            event_args = lambda event: {arg: call(fn, event) for arg, fn in pairs}  # noqa: E731
        else:
            args = lambda value: {arg: fn(value) for arg, fn in pairs}  # noqa: E731
    return ToolSink(
        ctx.tools[p.tool],
        args=args,
        event_args=event_args,
        key=None if p.key is None else key_arg(p.key),
        policy=p.policy,
        cooldown=p.cooldown,
        concurrency=p.concurrency,
        timeout=p.timeout,
        retry=None if p.retry is None else p.retry.build(),
        name=p.name,
        state_dir=ctx.state_dir,
    )


class KafkaSinkParams(SinkParams):
    """Produce events to a Kafka topic; delivery is checked before credit returns."""

    topic: str = Field(description="the topic produced to")
    bootstrap_servers: str = Field(description="host:port[,host:port...] (use ${VAR})")
    key: FieldOrExpr | None = Field(None, description="the message key (default: the event's key)")
    headers: dict[str, str] | None = Field(None, description="headers added to every message")
    encode: Literal["json", "text", "bytes"] = Field("json", description="how values are encoded")
    config: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka settings passed through (secrets: ${VAR})"
    )
    flush_timeout: Duration = Field(10.0, description="on stop, wait this long for deliveries")


def _kafka_sink(p: KafkaSinkParams, ctx: BuildContext) -> Any:
    from ...kafka import KafkaSink

    return KafkaSink(
        p.topic,
        bootstrap_servers=p.bootstrap_servers,
        key=None if p.key is None else key_arg(p.key),
        headers=p.headers,
        encode=p.encode,
        config=p.config,
        name=p.name,
        flush_timeout=p.flush_timeout,
    )


class WebSocketSinkParams(SinkParams):
    """Publish events to a WebSocket server."""

    url: WsUrl = Field(pattern=r"^wss?://", description="ws:// or wss:// url")
    encode: Literal["json", "text", "bytes"] = Field(
        "json", description="how values are sent: json, text or bytes frames"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers of the opening handshake (secrets: ${VAR})"
    )
    token: str | None = Field(None, description="a token sent on every connect (use ${VAR})")
    token_header: str = Field("Authorization", description="the header the token is sent in")
    token_prefix: str = Field("Bearer ", description="put before the token in its header")
    ca_file: str | None = Field(None, description="CA bundle verifying the server (wss://)")
    cert_file: str | None = Field(None, description="client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="client certificate's key (mutual TLS)")
    key_password: str | None = Field(
        None, description="password of an encrypted key_file (use ${VAR}; never logged)"
    )


def _websocket_sink(p: WebSocketSinkParams, ctx: BuildContext) -> Any:
    from ...websocket.sink import WebSocketSink

    options: dict[str, Any] = {}
    if p.token is not None:
        token = p.token
        options["token_provider"] = lambda: token
    options.update(tls_files(p, ctx))
    return WebSocketSink(
        p.url,
        encode=p.encode,
        headers=p.headers,
        token_header=p.token_header,
        token_prefix=p.token_prefix,
        name=p.name,
        **options,
    )


class RecordParams(SinkParams):
    """Append events to a JSONL recording (replay it with the replay source)."""

    path: str = Field(description="the recording (JSONL), relative to the pipeline file")
    append: bool = Field(True, description="add a session to an existing file (false: replace it)")


def _record(p: RecordParams, ctx: BuildContext) -> Any:
    from ...sinks.record import RecordSink

    return RecordSink(ctx.path(p.path), append=p.append, name=p.name)


class LogParams(SinkParams):
    """Log each event's value (logger ``rxagent.events``) at ``level``."""

    level: Literal["debug", "info", "warning"] = Field("info", description="the log level")


def _log_sink(p: LogParams, ctx: BuildContext) -> Any:
    import logging

    from ...sinks.base import CallbackSink

    logger = logging.getLogger("rxagent.events")
    level = getattr(logging, p.level.upper())
    label = p.name or f"{ctx.pipeline}:log"

    def emit(value: Any) -> None:
        logger.log(level, "%s %r", label, value)

    return CallbackSink(emit, name=label)


def register(registry: Registry) -> None:
    """Add the built-in sink kinds to ``registry``."""
    add = registry.add
    add(
        Kind(
            "sink", "state", StateSinkParams, _state_sink, shorthand="store",
            writes_store="store",
        )
    )  # fmt: skip
    add(Kind("sink", "tool", ToolSinkParams, _tool_sink, shorthand="tool", uses_tool="tool"))
    add(Kind("sink", "kafka", KafkaSinkParams, _kafka_sink))
    add(Kind("sink", "websocket", WebSocketSinkParams, _websocket_sink, shorthand="url"))
    add(Kind("sink", "record", RecordParams, _record, shorthand="path"))
    add(Kind("sink", "log", LogParams, _log_sink, shorthand="level"))
