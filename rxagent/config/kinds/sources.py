"""The built-in source kinds: memory, replay, websocket, kafka and a store's changes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..registry import BuildContext, Kind, Registry
from .types import (
    BackoffParams,
    Duration,
    FieldOrExpr,
    ModelRef,
    Params,
    SourceParams,
    WsUrl,
    compute,
    import_ref,
    tls_files,
)

__all__ = [
    "KafkaParams",
    "MemoryParams",
    "OverflowParams",
    "ReplayParams",
    "StateSourceParams",
    "WebSocketParams",
    "register",
]


class MemoryParams(SourceParams):
    """Events from a list written in the file (examples, tests)."""

    items: list[Any] = Field(description="the events' values, in order")
    key: FieldOrExpr | None = Field(None, description="each event's key (default: none)")


def _memory(p: MemoryParams, ctx: BuildContext) -> Any:
    from ...sources.memory import MemorySource

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
    from ...sources.replay import ReplaySource

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
    batch_wait: Duration = Field(
        0.0,
        description="how long a batch waits after its first message for more (0: not at "
        "all); trades latency for CPU per message at moderate rates",
    )
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


def _fill_last_seq(template: Any, last: Any) -> Any:
    if template == _LAST_SEQ:
        return last
    if isinstance(template, dict):
        return {k: _fill_last_seq(v, last) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill_last_seq(v, last) for v in template]
    return template


def _websocket(p: WebSocketParams, ctx: BuildContext) -> Any:
    from ...sources.overflow import Overflow
    from ...websocket.source import WebSocketSource

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
    options.update(tls_files(p, ctx))
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
        batch_wait=p.batch_wait,
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
    from ...kafka import KafkaSource

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
    from ...sources.store_changes import StateChangesSource

    return StateChangesSource(
        ctx.stores[p.store],
        deletes=p.deletes,
        initial=p.initial,
        name=p.name,
        credit=p.credit,
        batch_size=p.batch_size,
    )


def register(registry: Registry) -> None:
    """Add the built-in source kinds to ``registry``."""
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
