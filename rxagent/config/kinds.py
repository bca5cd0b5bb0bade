"""The built-in kinds: every source, operator and sink of the Python API, for YAML.

Each kind is a pydantic model of its parameters and a ``build`` that calls the
Python API. Conventions of the parameter types (see docs/yaml.md):

- **durations**: a number of seconds, or a string with a unit: ``"250ms"``,
  ``"5s"``, ``"2m"``, ``"1h"``;
- **fields or expressions** (keys, sequence numbers, ids): a plain name such as
  ``sym`` picks that field of the value (a C-level ``itemgetter``); anything
  else is an expression (docs/expressions.md), compiled once at load time;
- **python references**: ``"package.module:attribute"`` for what only code can
  say (a reducer, a pydantic model); imported at load time.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Hashable
from operator import itemgetter
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from .. import operators as ops
from ..backoff import Backoff
from ..exceptions import ConfigurationError
from .registry import BuildContext, Kind, Registry

__all__ = ["default_registry", "register_builtins"]


# -- parameter types -------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration (seconds, or '250ms', '5s', '2m', '1h')")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration must be >= 0, got {value}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise ValueError(f"expected a duration (seconds, or '250ms', '5s', '2m', '1h'), got {value!r}")


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
            ],
            "description": "seconds, or a string with a unit: 250ms, 5s, 2m, 1h",
        }
    ),
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONSTANTS = frozenset({"true", "false", "null", "True", "False", "None"})


def _is_field(text: str) -> bool:
    """A plain name is a field of the value; the language's constants are expressions."""
    return bool(_NAME.match(text)) and text not in _CONSTANTS


def _check_expression(text: str) -> str:
    if not _is_field(text):
        from .expressions import compile_expression

        compile_expression(text)  # raises ExpressionError (a ValueError) with the reason
    return text


FieldOrExpr = Annotated[
    str,
    AfterValidator(_check_expression),
    WithJsonSchema(
        {
            "type": "string",
            "description": "a field name of the value (sym), or an expression (value.px * 2)",
        }
    ),
]
Expr = Annotated[
    str,
    AfterValidator(_check_expression),
    WithJsonSchema({"type": "string", "description": "an expression (docs/expressions.md)"}),
]

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def import_ref(ref: str) -> Any:
    """``"package.module:attr.sub"`` -> the object; ValueError saying why not."""
    if not _REF.match(ref):
        raise ValueError(f"expected a python reference 'package.module:attribute', got {ref!r}")
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(
            f"cannot import module {module_name!r}: {type(error).__name__}: {error}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _check_ref(ref: str) -> str:
    import_ref(ref)
    return ref


PythonRef = Annotated[
    str,
    AfterValidator(_check_ref),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _REF.pattern,
            "description": "a python reference: package.module:attribute",
        }
    ),
]


def _check_model(ref: str) -> str:
    from ..decoding import type_adapter

    try:
        type_adapter(import_ref(ref), "model")
    except ConfigurationError as error:  # "model: <what is wrong>"
        raise ValueError(f"{ref}: {str(error).partition(': ')[2]}") from None
    return ref


ModelRef = Annotated[
    str,
    AfterValidator(_check_model),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _REF.pattern,
            "description": "a python reference: package.module:attribute",
        }
    ),
]


def _check_ws_url(url: str) -> str:
    from ..websocket.common import url_problem

    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


WsUrl = Annotated[str, AfterValidator(_check_ws_url)]


def compute(text: str) -> Callable[[Any], Any]:
    """A field name -> ``itemgetter``; an expression -> the compiled expression.

    Only the value is given to these (keys, ids, sequence numbers, times): an expression
    reading ``key`` or ``time`` is refused here, when the file is built, with the column.
    """
    if _is_field(text):
        return itemgetter(text)
    from .expressions import compile_expression

    expression: Callable[[Any], Any] = compile_expression(text, variables={"value"})
    return expression


class Params(BaseModel):
    """Base of every kind's parameters: unknown parameters are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageParams(Params):
    name: str | None = Field(None, description="the stage's name in status and dead letters")


class BackoffParams(Params):
    """Exponential backoff with jitter (rxagent.Backoff)."""

    initial: Duration = Field(0.1, description="the first delay")
    factor: float = Field(2.0, ge=1, description="each delay is the previous one times this")
    max_delay: Duration = Field(30.0, description="the longest delay")
    jitter: Literal["full", "equal", "none"] = Field(
        "full", description="randomize delays: full (0..delay), equal (delay/2..delay) or none"
    )
    max_attempts: int | None = Field(
        3, ge=1, description="give up after this many attempts (null: never)"
    )
    max_elapsed: Duration | None = Field(
        None, description="give up this long after the first failure (null: never)"
    )

    def build(self) -> Backoff:
        return Backoff(
            initial=self.initial,
            factor=self.factor,
            max_delay=self.max_delay,
            jitter=self.jitter,
            max_attempts=self.max_attempts,
            max_elapsed=self.max_elapsed,
        )


# -- sources ---------------------------------------------------------------------------


class SourceParams(Params):
    name: str | None = Field(None, description="the source's name (default: its kind)")
    credit: int = Field(4096, ge=1, description="most events in flight at once")
    credit_bytes: int | None = Field(
        64 << 20,
        ge=1,
        description="most bytes of messages in flight at once (null: no byte limit)",
    )
    batch_size: int = Field(512, ge=1, description="most events per batch")


class MemoryParams(SourceParams):
    """Events from a list written in the file (examples, tests)."""

    items: list[Any] = Field(description="the events' values, in order")
    key: FieldOrExpr | None = Field(None, description="each event's key (default: none)")


def _memory(p: MemoryParams, ctx: BuildContext) -> Any:
    from ..sources.memory import MemorySource

    return MemorySource(
        list(p.items),
        name=p.name,
        key=None if p.key is None else compute(p.key),
        credit=p.credit,
        batch_size=p.batch_size,
    )


class ReplayParams(SourceParams):
    """Events of a JSONL recording (made by the ``record`` sink)."""

    path: str = Field(description="the recording (JSONL), relative to the pipeline file")
    speed: float | None = Field(None, gt=0, description="1.0 = recorded pace; null = fast")
    virtual: bool = Field(
        False, description="schedule the events on the pipeline's scheduler (virtual time in tests)"
    )
    on_error: Literal["raise", "dead_letter"] = Field(
        "raise", description="an unreadable line stops the replay (raise) or is a dead letter"
    )


def _replay(p: ReplayParams, ctx: BuildContext) -> Any:
    from ..sources.replay import ReplaySource

    return ReplaySource(
        ctx.path(p.path),
        speed=p.speed,
        virtual=p.virtual,
        name=p.name,
        on_error=p.on_error,
        credit=p.credit,
        batch_size=p.batch_size,
    )


class OverflowParams(Params):
    """A lossy policy: read as fast as the server sends; drop by the policy."""

    policy: Literal["latest", "drop_oldest", "drop_newest"] = Field(
        description="latest: the newest per key; drop_oldest / drop_newest: a bounded queue"
    )
    capacity: int = Field(1024, ge=1, description="most messages (latest: keys) waiting for credit")
    key: FieldOrExpr | None = Field(
        None, description="groups messages for latest (default: the event's key)"
    )


class WebSocketParams(SourceParams):
    """Messages of a WebSocket server, reconnecting with backoff."""

    url: WsUrl = Field(pattern=r"^wss?://", description="ws:// or wss:// url")
    subscribe: list[Any] | None = Field(
        None,
        description='messages sent on every (re)connect; a string "{last_seq}" in them '
        "is replaced by the last sequence number seen",
    )
    sequence: FieldOrExpr | None = Field(None, description="the sequence number of a value")
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers of the opening handshake (secrets: ${VAR})"
    )
    token: str | None = Field(None, description="a token sent on every connect (use ${VAR})")
    token_header: str = Field("Authorization", description="the header the token is sent in")
    token_prefix: str = Field("Bearer ", description="put before the token in its header")
    decode: Literal["json", "text", "bytes", "raw"] = Field(
        "json", description="json, text, bytes, or raw (str or bytes as received)"
    )
    model: ModelRef | None = Field(None, description="a pydantic model validating each value")
    ping_interval: Duration | None = Field(
        20.0, description="keepalive ping every this long (null: none)"
    )
    ping_timeout: Duration | None = Field(
        20.0, description="close the connection when a ping is not answered in this long"
    )
    compression: Literal["deflate"] | None = Field(None, description="per-message deflate, or null")
    max_size: int | None = Field(
        1 << 20, ge=1, description="largest message in bytes (null: no limit)"
    )
    max_queue: int = Field(64, ge=1, description="frames buffered before the client stops reading")
    open_timeout: Duration | None = Field(
        10.0, description="longest wait for the opening handshake"
    )
    close_timeout: Duration | None = Field(
        5.0, description="longest wait for the closing handshake"
    )
    backoff: BackoffParams | None = Field(
        None, description="reconnect delays (default: 0.5 s doubling to 30 s, never giving up)"
    )
    stable_after: Duration = Field(5.0, description="connected this long resets the attempt count")
    auth_retries: int | None = Field(
        3,
        ge=0,
        description="handshakes refused with HTTP 401/403 retried before the source fails "
        "(null: retry forever)",
    )
    overflow: OverflowParams | None = Field(
        None, description="make the source lossy: never wait for credit, drop by the policy"
    )
    ca_file: str | None = Field(None, description="CA bundle verifying the server (wss://)")
    cert_file: str | None = Field(None, description="client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="client certificate's key (mutual TLS)")
    key_password: str | None = Field(
        None, description="password of an encrypted key_file (use ${VAR}; never logged)"
    )


_LAST_SEQ = "{last_seq}"


def _tls_files(p: Any, ctx: BuildContext) -> dict[str, Any]:
    """The TLS options of a websocket source or sink: files resolved against the
    pipeline file's directory, the key's password as given."""
    options: dict[str, Any] = {}
    for tls in ("ca_file", "cert_file", "key_file"):
        value = getattr(p, tls)
        if value is not None:
            options[tls] = str(ctx.path(value))
    if p.key_password is not None:
        options["key_password"] = p.key_password
    return options


def _fill_last_seq(template: Any, last: Any) -> Any:
    if template == _LAST_SEQ:
        return last
    if isinstance(template, dict):
        return {k: _fill_last_seq(v, last) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill_last_seq(v, last) for v in template]
    return template


def _websocket(p: WebSocketParams, ctx: BuildContext) -> Any:
    from ..sources.overflow import Overflow
    from ..websocket.source import WebSocketSource

    options: dict[str, Any] = {}
    if p.subscribe is not None:
        messages = list(p.subscribe)
        options["subscribe"] = lambda last: [_fill_last_seq(m, last) for m in messages]
    if p.sequence is not None:
        options["sequence"] = compute(p.sequence)
    if p.token is not None:
        token = p.token
        options["token_provider"] = lambda: token
    if p.backoff is not None:
        options["backoff"] = p.backoff.build()
    if p.overflow is not None:
        key = None if p.overflow.key is None else compute(p.overflow.key)
        options["overflow"] = Overflow(p.overflow.policy, p.overflow.capacity, key=key)
    options.update(_tls_files(p, ctx))
    return WebSocketSource(
        p.url,
        headers=p.headers,
        token_header=p.token_header,
        token_prefix=p.token_prefix,
        decode=import_ref(p.model) if p.model else p.decode,
        ping_interval=p.ping_interval,
        ping_timeout=p.ping_timeout,
        compression=p.compression,
        max_size=p.max_size,
        max_queue=p.max_queue,
        open_timeout=p.open_timeout,
        close_timeout=p.close_timeout,
        stable_after=p.stable_after,
        auth_retries=p.auth_retries,
        name=p.name,
        credit=p.credit,
        batch_size=p.batch_size,
        **options,
    )


class KafkaParams(SourceParams):
    """Records of Kafka topics, committed at-least-once (docs/kafka.md)."""

    topics: list[str] | str = Field(description="a topic, or a list of topics")
    bootstrap_servers: str = Field(description="host:port[,host:port...] (use ${VAR})")
    group_id: str = Field(
        description="the consumer group: its committed offsets, and the partitions shared"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka settings passed through (secrets: ${VAR})"
    )
    decode: Literal["json", "text", "bytes"] = Field(
        "json", description="how message values are decoded"
    )
    model: ModelRef | None = Field(None, description="a pydantic model validating each value")
    key_decode: Literal["json", "text", "bytes"] | None = Field(
        "text",
        description="how message keys are decoded (not UTF-8: bytes); null: events get no key",
    )
    timestamps: bool = Field(
        True, description="read each message's timestamp as the event time (off: saves work)"
    )
    headers: bool = Field(True, description="read each message's headers (off: saves work)")
    assign: bool = Field(
        False,
        description="take every partition without a group rebalance (offsets still committed)",
    )
    until_eof: bool = Field(
        False, description="end once every partition is read to its end (batch runs, tests)"
    )
    dead_letter_topic: str | None = Field(
        None, description="also produce undecodable messages there, with the reason in headers"
    )
    batch_size: int = Field(1024, ge=1, description="most events per batch")
    commit_interval: Duration = Field(1.0, description="commit the completed offsets this often")
    revoke_timeout: Duration = Field(
        10.0, description="on a rebalance, wait this long for revoked partitions' events"
    )
    close_timeout: Duration = Field(
        10.0, description="on stop, wait this long for events in flight before the last commit"
    )
    auth_retries: int | None = Field(
        3,
        ge=0,
        description="SASL authentication refusals retried before the source fails "
        "(null: retry forever)",
    )
    instance_id: str | None = Field(
        None,
        description="static group membership (group.instance.id): a restarted worker gets its "
        "partitions back at once; unique per worker (e.g. orders-${RXAGENT_WORKER:-0})",
    )
    changelog: bool = Field(
        True, description="durable stores written from this source keep a changelog topic"
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once: Kafka sinks' outputs, changelogs and offsets in one "
        "transaction per commit (needs a group and instance_id or transactional_id)",
    )
    transactional_id: str | None = Field(
        None,
        description="exactly_once: stable per worker across restarts (default "
        "rxagent.<group_id>.<instance_id>)",
    )


def _kafka_source(p: KafkaParams, ctx: BuildContext) -> Any:
    from ..kafka import KafkaSource

    return KafkaSource(
        p.topics,
        bootstrap_servers=p.bootstrap_servers,
        group_id=p.group_id,
        config=p.config,
        decode=p.decode,
        model=import_ref(p.model) if p.model else None,
        key_decode=p.key_decode,
        timestamps=p.timestamps,
        headers=p.headers,
        assign=p.assign,
        until_eof=p.until_eof,
        dead_letter_topic=p.dead_letter_topic,
        name=p.name,
        credit=p.credit,
        batch_size=p.batch_size,
        commit_interval=p.commit_interval,
        revoke_timeout=p.revoke_timeout,
        close_timeout=p.close_timeout,
        auth_retries=p.auth_retries,
        instance_id=p.instance_id,
        changelog=p.changelog,
        processing_guarantee=p.processing_guarantee,
        transactional_id=p.transactional_id,
    )


class StateSourceParams(SourceParams):
    """The changes of a state store: one event per changed key (value: the new
    value, key: the store's key). Lets one pipeline react to what another folds."""

    store: str = Field(description="a store declared under state:")
    deletes: bool = Field(False, description="also emit deletions (value null)")
    initial: bool = Field(True, description="start with the store's current entries")


def _state_source(p: StateSourceParams, ctx: BuildContext) -> Any:
    from ..sources.state import StateChangesSource

    return StateChangesSource(
        ctx.stores[p.store],
        deletes=p.deletes,
        initial=p.initial,
        name=p.name,
        credit=p.credit,
        batch_size=p.batch_size,
    )


# -- operators -------------------------------------------------------------------------


class _ComputedParams(StageParams):
    """A stage computing something of each value: a field or expression in the
    kind's main parameter, or ``function``: a python reference called per value."""

    function: PythonRef | None = Field(
        None, description="instead: a python function of the value (package.module:function)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Any:
        main = type(self)._main_field
        if (getattr(self, main) is None) == (self.function is None):
            raise ValueError(f"give {main} (a field or an expression) or function, not both")
        return self

    _main_field: ClassVar[str] = ""

    def stage(
        self,
        plain: Callable[..., Any],
        expression: Callable[..., Any],
        *,
        kind: Literal["predicate", "value"] = "value",
    ) -> Any:
        """``plain(fn)`` with the python function or the field (a C ``itemgetter``),
        else ``expression(compiled)`` with the expression compiled once."""
        text: str | None = getattr(self, self._main_field)
        if text is None:
            return plain(import_ref(str(self.function)), name=self.name)
        if _is_field(text):
            return plain(itemgetter(text), name=self.name)
        from .expressions import compile_expression

        return expression(compile_expression(text, kind=kind), name=self.name)


class FilterParams(_ComputedParams):
    """Keep the events whose value satisfies ``predicate``."""

    _main_field: ClassVar[str] = "predicate"
    predicate: FieldOrExpr | None = Field(
        None, description="a field (truthy keeps) or an expression of the value"
    )


def _filter(p: FilterParams, ctx: BuildContext) -> Any:
    from .expressions import expression_filter

    return p.stage(ops.filter, expression_filter, kind="predicate")


class MapParams(_ComputedParams):
    """Replace each value by an expression of it (a dict literal builds a record)."""

    _main_field: ClassVar[str] = "expr"
    expr: FieldOrExpr | None = Field(
        None, description="a field or an expression of the value giving the new value"
    )


def _map(p: MapParams, ctx: BuildContext) -> Any:
    from .expressions import expression_map

    return p.stage(ops.map, expression_map)


class KeyByParams(_ComputedParams):
    """Set each event's key from its value."""

    _main_field: ClassVar[str] = "key"
    key: FieldOrExpr | None = Field(
        None, description="a field or an expression of the value giving the key"
    )


def _key_by(p: KeyByParams, ctx: BuildContext) -> Any:
    from .expressions import expression_key_by

    return p.stage(ops.key_by, expression_key_by)


class EventTimeParams(StageParams):
    """Set each event's time (epoch seconds) from its value."""

    time: FieldOrExpr


def _event_time(p: EventTimeParams, ctx: BuildContext) -> Any:
    return ops.event_time(p.time if _is_field(p.time) else compute(p.time), name=p.name)


class FlatMapParams(StageParams):
    """Replace each value by the items of a list (a field or an expression)."""

    items: FieldOrExpr


def _flat_map(p: FlatMapParams, ctx: BuildContext) -> Any:
    return ops.flat_map(compute(p.items), name=p.name)


class TapParams(StageParams):
    """Call a python function with each value (side effects; the value flows on)."""

    function: PythonRef


def _tap(p: TapParams, ctx: BuildContext) -> Any:
    return ops.tap(import_ref(p.function), name=p.name)


class DecodeParams(StageParams):
    """Decode text/bytes values (and validate with a pydantic model)."""

    format: Literal["json", "text", "bytes", "python"] = Field(
        "json", description="json, text (UTF-8), bytes, or python (values already decoded)"
    )
    model: ModelRef | None = Field(
        None, description="a pydantic model validating each decoded value"
    )


def _decode(p: DecodeParams, ctx: BuildContext) -> Any:
    return ops.decode(import_ref(p.model) if p.model else None, format=p.format, name=p.name)


class DedupParams(StageParams):
    """Drop events whose id was seen (within a horizon of ids or a ttl)."""

    id: FieldOrExpr | None = Field(None, description="the event's id (default: the value itself)")
    key: FieldOrExpr | None = Field(
        None, description="ids are unique per key (default: the event's key)"
    )
    horizon: int | None = Field(
        None, ge=1, description="remember the last this many ids (give horizon, ttl or both)"
    )
    ttl: Duration | None = Field(None, description="remember each id this long")


def _dedup(p: DedupParams, ctx: BuildContext) -> Any:
    return ops.dedup(
        None if p.id is None else _key_arg(p.id),
        key=None if p.key is None else _key_arg(p.key),
        horizon=p.horizon,
        ttl=p.ttl,
        scheduler=ctx.scheduler,
        name=p.name,
    )


class ReorderParams(StageParams):
    """Put events back in sequence order, waiting at most ``max_delay`` for a gap."""

    seq: FieldOrExpr = Field(description="the event's sequence number (an int)")
    max_delay: Duration = Field(
        description="how long an event waits for the numbers before it (then a gap)"
    )
    key: FieldOrExpr | None = Field(
        None, description="sequences are per key (default: the event's key)"
    )
    start: int | None = Field(
        None, description="every key's first number (default: its first event's)"
    )
    key_idle: Duration | None = Field(
        600.0, description="forget a key with nothing held after this long (null: never)"
    )
    max_keys: int | None = Field(
        100_000, ge=1, description="most keys remembered; the longest idle go first"
    )


def _reorder(p: ReorderParams, ctx: BuildContext) -> Any:
    seq = p.seq if _is_field(p.seq) else cast("Callable[[Any], int]", compute(p.seq))
    return ops.reorder(
        seq,
        max_delay=p.max_delay,
        key=None if p.key is None else _key_arg(p.key),
        start=p.start,
        key_idle=p.key_idle,
        max_keys=p.max_keys,
        scheduler=ctx.scheduler,
        name=p.name,
    )


class BufferParams(StageParams):
    """Decouple the source from slow stages: block (backpressure) or a lossy policy."""

    capacity: int = Field(ge=1, description="most events waiting (latest: most keys)")
    policy: Literal["block", "latest", "drop_oldest", "drop_newest"] = Field(
        "block", description="block (backpressure, no loss), or a lossy policy"
    )
    in_flight: int | None = Field(
        None, ge=1, description="most events downstream at once (default: capacity)"
    )
    key: FieldOrExpr | None = Field(
        None, description="groups events for latest (default: the event's key)"
    )


def _buffer(p: BufferParams, ctx: BuildContext) -> Any:
    return ops.buffer(
        p.capacity,
        p.policy,
        in_flight=p.in_flight,
        key=None if p.key is None else _key_arg(p.key),
        scheduler=ctx.scheduler,
        name=p.name,
    )


class ThrottleParams(StageParams):
    """At most one event per interval (per key when ``key`` is given, else per event key)."""

    interval: Duration = Field(description="the throttle's period")
    key: FieldOrExpr | None = Field(
        None, description="throttle per this key (default: the event's key)"
    )


def _throttle(fn: Callable[..., Any]) -> Callable[[ThrottleParams, BuildContext], Any]:
    def build(p: ThrottleParams, ctx: BuildContext) -> Any:
        return fn(
            p.interval,
            key=None if p.key is None else _key_arg(p.key),
            scheduler=ctx.scheduler,
            name=p.name,
        )

    return build


class RateLimitParams(StageParams):
    """At most ``n`` events per interval; ``delay`` the rest or ``drop`` them."""

    n: int = Field(ge=1, description="most events per interval, per key")
    interval: Duration = Field(description="the sliding window the limit applies to")
    policy: Literal["delay", "drop"] = Field(
        "delay", description="delay the excess (no loss) or drop it"
    )
    key: FieldOrExpr | None = Field(
        None, description="limit per this key (default: the event's key)"
    )


def _rate_limit(p: RateLimitParams, ctx: BuildContext) -> Any:
    return ops.rate_limit(
        p.n,
        p.interval,
        p.policy,
        key=None if p.key is None else _key_arg(p.key),
        scheduler=ctx.scheduler,
        name=p.name,
    )


class RetryParams(StageParams):
    """Resubscribe upstream after an error, with backoff."""

    backoff: BackoffParams = Field(
        BackoffParams(), description="delays between resubscriptions and when to give up"
    )
    reset_after: Duration | None = Field(
        None, description="this long without an error ends a run of failures"
    )


def _retry(p: RetryParams, ctx: BuildContext) -> Any:
    return ops.retry(
        p.backoff.build(), reset_after=p.reset_after, scheduler=ctx.scheduler, name=p.name
    )


class CircuitParams(StageParams):
    """Guard a python function (each value -> result) with a circuit breaker."""

    call: PythonRef = Field(description="a function of the value; its result replaces the value")
    failure_threshold: int = Field(5, ge=1, description="failures in a row that open the circuit")
    reset_timeout: Duration = Field(
        30.0, description="how long the circuit stays open before a trial call"
    )
    success_threshold: int = Field(
        1, ge=1, description="successful trial calls that close it again"
    )


def _circuit(p: CircuitParams, ctx: BuildContext) -> Any:
    return ops.circuit_breaker(
        import_ref(p.call),
        failure_threshold=p.failure_threshold,
        reset_timeout=p.reset_timeout,
        success_threshold=p.success_threshold,
        scheduler=ctx.scheduler,
        name=p.name,
    )


_AGGREGATIONS: dict[str, Callable[..., ops.Aggregation]] = {
    "count": ops.count,
    "sum": ops.sum_,
    "mean": ops.mean,
    "min": ops.min_,
    "max": ops.max_,
    "first": ops.first,
    "last": ops.last,
    "collect": ops.collect,
}
_NO_FIELD = {"count", "collect"}


def _check_agg(spec: Any) -> Any:
    """``count`` | ``{mean: px}`` | ``{name: count | {fn: field}, ...}``."""
    if spec is None:
        return spec
    if isinstance(spec, str):
        _one_agg(spec)
        return spec
    if isinstance(spec, dict):
        if len(spec) == 1 and next(iter(spec)) in _AGGREGATIONS:
            _one_agg(spec)
            return spec
        for out, one in spec.items():
            try:
                _one_agg(one)
            except ValueError as error:
                raise ValueError(f"agg {out!r}: {error}") from None
        return spec
    raise ValueError(f"expected an aggregation (count, {{mean: px}} or a mapping), got {spec!r}")


def _one_agg(spec: Any) -> ops.Aggregation:
    names = ", ".join(sorted(_AGGREGATIONS))
    if isinstance(spec, str):
        if spec not in _AGGREGATIONS:
            raise ValueError(f"unknown aggregation {spec!r}; expected one of {names}")
        return _AGGREGATIONS[spec]()
    if isinstance(spec, dict) and len(spec) == 1:
        fn, field = next(iter(spec.items()))
        if fn not in _AGGREGATIONS:
            raise ValueError(f"unknown aggregation {fn!r}; expected one of {names}")
        if fn in _NO_FIELD:
            return _AGGREGATIONS[fn]()
        if not isinstance(field, str | int) or isinstance(field, bool):
            raise ValueError(f"{fn}: expected a field name, got {field!r}")
        return _AGGREGATIONS[fn](field)
    raise ValueError(f"expected an aggregation like count or {{mean: px}}, got {spec!r}")


def build_agg(spec: Any) -> Any:
    if spec is None:
        return None
    if isinstance(spec, str) or (
        isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in _AGGREGATIONS
    ):
        return _one_agg(spec)
    return {out: _one_agg(one) for out, one in spec.items()}


Agg = Annotated[
    Any,
    AfterValidator(_check_agg),
    WithJsonSchema(
        {
            "description": "count | {mean: px} | {out_name: count | {sum|mean|min|max|first|"
            "last: field}, ...}",
            "anyOf": [
                {"type": "string", "enum": sorted(_AGGREGATIONS)},
                {"type": "object"},
                {"type": "null"},
            ],
        }
    ),
]


class CountWindowParams(StageParams):
    """Windows of ``size`` events per key, aggregated."""

    size: int = Field(ge=1, description="events per window")
    key: FieldOrExpr | None = Field(
        None, description="windows per this key (default: the event's key)"
    )
    agg: Agg = Field(None, description="what a window emits (default: the list of its values)")
    emit_partial: bool = Field(True, description="emit the unfinished windows when the stream ends")


def _count_window(p: CountWindowParams, ctx: BuildContext) -> Any:
    return ops.count_window(
        p.size,
        key=None if p.key is None else _key_arg(p.key),
        agg=build_agg(p.agg),
        emit_partial=p.emit_partial,
        name=p.name,
    )


class TimeWindowParams(StageParams):
    time: Literal["processing", "event"] = Field(
        "processing", description="processing time (arrival) or event time (event_time step)"
    )
    key: FieldOrExpr | None = Field(
        None, description="windows per this key (default: the event's key)"
    )
    agg: Agg = Field(None, description="what a window emits (default: the list of its values)")
    allowed_lateness: Duration = Field(
        0.0, description="event time: how far behind the largest time seen a window waits"
    )
    late: Literal["drop", "dead_letter", "stream"] | None = Field(
        None,
        description="event time: events for closed windows are dropped, dead letters or a stream",
    )
    idle_timeout: Duration | None = Field(
        None, description="close open windows after this long without events"
    )
    emit_partial: bool = Field(True, description="emit the open windows when the stream ends")

    def common(self, ctx: BuildContext) -> dict[str, Any]:
        return {
            "time": self.time,
            "key": None if self.key is None else _key_arg(self.key),
            "agg": build_agg(self.agg),
            "allowed_lateness": self.allowed_lateness,
            "late": self.late,
            "idle_timeout": self.idle_timeout,
            "emit_partial": self.emit_partial,
            "scheduler": ctx.scheduler,
            "name": self.name,
        }


class TumblingParams(TimeWindowParams):
    """Back-to-back windows of ``size`` per key."""

    size: Duration = Field(description="each window's length")
    offset: Duration = Field(0.0, description="windows start at multiples of size plus this")


class SlidingParams(TimeWindowParams):
    """Windows of ``size`` starting every ``slide``."""

    size: Duration = Field(description="each window's length")
    slide: Duration = Field(description="a window starts this often")
    offset: Duration = Field(0.0, description="windows start at multiples of slide plus this")


class SessionParams(TimeWindowParams):
    """A window per burst of activity, closed after ``gap`` without events."""

    gap: Duration = Field(
        description="a session closes after this long without an event of its key"
    )


def _tumbling(p: TumblingParams, ctx: BuildContext) -> Any:
    return ops.tumbling_window(p.size, offset=p.offset, **p.common(ctx))


def _sliding(p: SlidingParams, ctx: BuildContext) -> Any:
    return ops.sliding_window(p.size, p.slide, offset=p.offset, **p.common(ctx))


def _session(p: SessionParams, ctx: BuildContext) -> Any:
    return ops.session_window(p.gap, **p.common(ctx))


def _key_arg(text: str) -> str | Callable[[Any], Hashable]:
    """Operators take a field name as is (they build their own itemgetter)."""
    return text if _is_field(text) else compute(text)


# -- sinks -----------------------------------------------------------------------------


class SinkParams(Params):
    name: str | None = Field(None, description="the sink's name in status")


class StateSinkParams(SinkParams):
    """Fold events into a state store."""

    store: str = Field(description="a store declared under state:")
    key: FieldOrExpr | None = Field(None, description="default: the event's key")
    value: FieldOrExpr | None = Field(None, description="default: the whole value")
    reducer: PythonRef | None = Field(None, description="reducer(old, event) -> new")


def _state_sink(p: StateSinkParams, ctx: BuildContext) -> Any:
    return ctx.stores[p.store].sink(
        key=None if p.key is None else _key_arg(p.key),
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
    from ..events import Event
    from ..sinks.tools import ToolSink
    from .expressions import Expression, compile_expression

    def of_event(text: str) -> Callable[[Any], Any] | Expression:
        # a field, a value-only expression, or one reading key/time (an Expression)
        if _is_field(text):
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
        key=None if p.key is None else _key_arg(p.key),
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
    from ..kafka import KafkaSink

    return KafkaSink(
        p.topic,
        bootstrap_servers=p.bootstrap_servers,
        key=None if p.key is None else _key_arg(p.key),
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
    from ..websocket.sink import WebSocketSink

    options: dict[str, Any] = {}
    if p.token is not None:
        token = p.token
        options["token_provider"] = lambda: token
    options.update(_tls_files(p, ctx))
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
    from ..sinks.record import RecordSink

    return RecordSink(ctx.path(p.path), append=p.append, name=p.name)


class LogParams(SinkParams):
    """Log each event's value (logger ``rxagent.events``) at ``level``."""

    level: Literal["debug", "info", "warning"] = Field("info", description="the log level")


def _log_sink(p: LogParams, ctx: BuildContext) -> Any:
    import logging

    from ..sinks.base import CallbackSink

    logger = logging.getLogger("rxagent.events")
    level = getattr(logging, p.level.upper())
    label = p.name or f"{ctx.pipeline}:log"

    def emit(value: Any) -> None:
        logger.log(level, "%s %r", label, value)

    return CallbackSink(emit, name=label)


# -- the table -------------------------------------------------------------------------


def register_builtins(registry: Registry) -> None:
    """Add every built-in kind to ``registry``."""
    add = registry.add
    add(Kind("source", "memory", MemoryParams, _memory, shorthand="items"))
    add(Kind("source", "replay", ReplayParams, _replay, shorthand="path"))
    add(Kind("source", "websocket", WebSocketParams, _websocket, shorthand="url"))
    add(Kind("source", "kafka", KafkaParams, _kafka_source))
    add(
        Kind(
            "source", "state", StateSourceParams, _state_source, shorthand="store",
            reads_store="store",
        )
    )  # fmt: skip

    add(Kind("operator", "filter", FilterParams, _filter, shorthand="predicate"))
    add(Kind("operator", "map", MapParams, _map, shorthand="expr"))
    add(Kind("operator", "key_by", KeyByParams, _key_by, shorthand="key"))
    add(Kind("operator", "event_time", EventTimeParams, _event_time, shorthand="time"))
    add(Kind("operator", "flat_map", FlatMapParams, _flat_map, shorthand="items"))
    add(Kind("operator", "tap", TapParams, _tap, shorthand="function"))
    add(Kind("operator", "decode", DecodeParams, _decode, shorthand="format"))
    add(Kind("operator", "dedup", DedupParams, _dedup, shorthand="id"))
    add(Kind("operator", "reorder", ReorderParams, _reorder))
    add(Kind("operator", "buffer", BufferParams, _buffer, shorthand="capacity"))
    for name, fn in (
        ("throttle_first", ops.throttle_first),
        ("throttle_last", ops.throttle_last),
        ("throttle_latest", ops.throttle_latest),
        ("debounce", ops.debounce),
        ("sample", ops.sample),
    ):
        summary = (fn.__doc__ or "").strip().split("\n")[0]
        add(Kind("operator", name, ThrottleParams, _throttle(fn), "interval", summary))
    add(Kind("operator", "rate_limit", RateLimitParams, _rate_limit))
    add(Kind("operator", "retry", RetryParams, _retry))
    add(Kind("operator", "circuit_breaker", CircuitParams, _circuit, shorthand="call"))
    add(Kind("operator", "count_window", CountWindowParams, _count_window, shorthand="size"))
    add(Kind("operator", "tumbling_window", TumblingParams, _tumbling, shorthand="size"))
    add(Kind("operator", "sliding_window", SlidingParams, _sliding))
    add(Kind("operator", "session_window", SessionParams, _session, shorthand="gap"))

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


_default: Registry | None = None


def default_registry() -> Registry:
    """The registry with every built-in kind (and plugins' kinds, loaded on first use).

    It lives here, not in :mod:`.registry`: the built-in kinds register into a
    registry they are given, and the registry module knows none of them."""
    global _default
    if _default is None:
        registry = Registry()
        register_builtins(registry)
        _default = registry
    return _default
