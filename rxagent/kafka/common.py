"""What the Kafka source, its consumer thread and the Kafka sink share: the partition
type, settings (defaults, ``"${NAME}"`` environment references, redaction) and the
decoders of message values and keys.

Shared by the source, the sink, dead letters and the state changelog.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal, NamedTuple, TypeVar

from .. import _secrets
from ..exceptions import ConfigurationError

__all__ = [
    "CONSUMER_DEFAULTS",
    "Decoder",
    "KafkaPartition",
    "KeyDecoder",
    "redact",
    "resolve_config",
]

_T = TypeVar("_T")

Decoder = Literal["json", "text", "bytes"] | Callable[[bytes], Any]
KeyDecoder = Literal["json", "text", "bytes"] | Callable[[bytes], Hashable]

#: librdkafka settings that make a consumer fast here (measured, see docs/kafka.md);
#: anything in ``config`` overrides them, except what at-least-once needs.
CONSUMER_DEFAULTS: dict[str, Any] = {
    # librdkafka's 1000 ms default halved throughput: the fetcher idled between fetches
    "fetch.queue.backoff.ms": 10,
    "auto.offset.reset": "earliest",
    # bounded prefetch: the backlog belongs in the broker, not in this process
    "queued.max.messages.kbytes": 16384,
}
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class KafkaPartition(NamedTuple):
    """A batch's ``partition`` for Kafka events: topic and partition number."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


def resolve_config(config: Mapping[str, Any], *, owner: str) -> dict[str, Any]:
    """``config`` with ``"${NAME}"`` values read from the environment."""
    resolved: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, str) and (match := _ENV_REF.match(value)):
            name = match.group(1)
            if name not in os.environ:
                raise ConfigurationError(
                    f"{owner}: setting {key!r} reads environment variable {name} which is not set"
                )
            value = os.environ[name]
            _secrets.register(value)
        resolved[key] = value
    _secrets.register_config(resolved)
    return resolved


# settings another client (a producer, a restore consumer) must not inherit from a source's
_CONSUMER_ONLY_PREFIXES = ("fetch.", "queued.", "auto.", "enable.", "group.", "session.")
_CONSUMER_ONLY = frozenset(
    {
        "on_commit",
        "max.poll.interval.ms",
        "heartbeat.interval.ms",
        "partition.assignment.strategy",
        "isolation.level",
        "check.crcs",
        "group.instance.id",
    }
)


def client_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A source consumer's settings without those only its consumer may have: the
    connection and security settings other clients of the same cluster need."""
    return {
        k: v
        for k, v in config.items()
        if not k.startswith(_CONSUMER_ONLY_PREFIXES) and k not in _CONSUMER_ONLY
    }


def same_cluster(one: str, other: str) -> bool:
    """Whether two ``bootstrap.servers`` lists name the same brokers."""
    return _brokers(one) == _brokers(other)


def _brokers(bootstrap_servers: str) -> frozenset[str]:
    return frozenset(
        part.strip().lower().removeprefix("plaintext://").removeprefix("ssl://")
        for part in bootstrap_servers.split(",")
        if part.strip()
    )


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` fit for logs and status: the values of credential settings
    (``sasl.password``, ``sasl.jaas.config``, ``sasl.oauthbearer.config``,
    ``ssl.key.pem``, ``ssl.keystore.password``, ...) hidden, and every known secret
    (:func:`rxagent._secrets.redact`) in the others."""
    return _secrets.redact_config(config)


def value_decoder(
    decode: Decoder, model: Any, where: str = "kafka source"
) -> Callable[[bytes], Any]:
    from ..decoding import json_loads, type_adapter

    if model is not None:
        adapter = type_adapter(model, where)
        if decode == "json":
            return adapter.validate_json
        inner = value_decoder(decode, None, where)
        return lambda raw: adapter.validate_python(inner(raw))
    if callable(decode):
        return decode
    if decode == "json":
        try:  # orjson refuses nesting past 1024 levels (a dead letter, not a RecursionError)
            import orjson  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            return json_loads
        loads: Callable[[bytes], Any] = orjson.loads
        return loads
    if decode == "text":
        return lambda raw: raw.decode("utf-8")
    if decode == "bytes":
        return lambda raw: raw
    raise ConfigurationError(
        f"decode must be 'json', 'text', 'bytes' or a function of the message bytes, got {decode!r}"
    )


def decoder_refuses_none(decode: Decoder, model: Any) -> bool:
    """Whether :func:`value_decoder` of ``decode`` and ``model`` raises for ``None``
    (a tombstone), or gives it back (``"bytes"``): the consumer then need not look for
    tombstones before decoding a batch. A function of the user's may accept ``None``."""
    return not callable(decode) and (model is None or decode == "json")


def key_decoder(decode: KeyDecoder) -> Callable[[bytes], Hashable]:
    if callable(decode):
        return decode
    if decode == "text":

        def text(raw: bytes) -> Hashable:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw

        return text
    if decode == "json":
        from ..decoding import json_loads

        def from_json(raw: bytes) -> Hashable:
            value = json_loads(raw)
            return tuple(value) if isinstance(value, list) else value

        return from_json
    if decode == "bytes":
        return lambda raw: raw
    raise ConfigurationError(
        f"key_decode must be 'json', 'text', 'bytes' or a function, got {decode!r}"
    )


def decode_column(decode: Callable[[bytes], _T], raws: list[bytes | None]) -> list[_T | None]:
    """``decode`` over a column of message bytes; ``None`` (a tombstone) stays ``None``."""
    if raws.count(None):
        return [None if raw is None else decode(raw) for raw in raws]
    return list(map(decode, raws))  # type: ignore[arg-type]


def key_columns(decode: KeyDecoder) -> Callable[[list[bytes | None]], list[Hashable] | None]:
    """The key decoder over a column of keys (``None`` for a batch without keys)."""
    one = key_decoder(decode)

    def keys(raws: list[bytes | None]) -> list[Hashable] | None:
        if decode == "text":
            try:  # in C; a None or a key that is not UTF-8 raises: row by row below
                return list(map(bytes.decode, raws))  # type: ignore[arg-type]
            except (TypeError, UnicodeDecodeError):
                pass
        nones = raws.count(None)
        if nones == len(raws):
            return None
        if decode == "bytes":
            return raws  # type: ignore[return-value]  # (a new list: the keys as they are)
        return decode_column(one, raws)

    return keys
