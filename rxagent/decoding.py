"""Raw frames to values, validated once: the helpers every decoding boundary shares.

The :func:`~rxagent.operators.decode` operator, the WebSocket source and the
Kafka source decode with the same formats (``json``, ``text``, ``bytes``,
``python``), the same depth-limited JSON parser and the same pydantic type
adapters and error texts. They live here, below operators, sources and sinks,
so none of those imports another to share them.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import from_json

from .exceptions import ConfigurationError

__all__ = [
    "MAX_JSON_DEPTH",
    "Format",
    "JSONTooDeepError",
    "describe_error",
    "json_loads",
    "loader",
    "type_adapter",
]

Format = Literal["json", "text", "bytes", "python"]


#: How deeply a JSON message may nest (pydantic's own limit when it parses JSON).
#: Deeper input is undecodable (a dead letter), never a RecursionError downstream.
MAX_JSON_DEPTH = 200


class JSONTooDeepError(ValueError):
    """JSON input nested deeper than :data:`MAX_JSON_DEPTH`."""

    def __init__(self) -> None:
        super().__init__(f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")


def json_loads(raw: str | bytes | bytearray) -> Any:
    """``json.loads`` for input from outside: the same values, but nesting deeper
    than :data:`MAX_JSON_DEPTH` raises :class:`JSONTooDeepError` (a ValueError).

    pydantic-core's parser (depth-limited, and faster) reads it; what that parser
    refuses for another reason goes to ``json.loads``, which keeps its error
    messages and its leniency (lone surrogate escapes), depth-checked as well."""
    try:
        return from_json(raw)
    except ValueError as error:
        if "recursion limit exceeded" in str(error):
            raise JSONTooDeepError() from None
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JSONTooDeepError() from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise JSONTooDeepError()
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest in ``value`` more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in children)
    return False


def type_adapter(model: Any, where: str) -> TypeAdapter[Any]:
    """A pydantic ``TypeAdapter`` of ``model`` (a pydantic model or any type pydantic
    understands); a :class:`ConfigurationError` naming ``where`` when it is not one."""
    if not isinstance(model, type) and typing.get_origin(model) is None:
        name = getattr(model, "__qualname__", None)
        got = f"{type(model).__name__} {name!r}" if name else f"a {type(model).__name__} value"
        raise ConfigurationError(f"{where}: model must be a pydantic model or a type, got {got}")
    try:
        return TypeAdapter(model)
    except PydanticUserError as error:
        reason = str(error).strip().split("\n")[0]
        raise ConfigurationError(
            f"{where}: model {getattr(model, '__qualname__', model)!r} is not a type pydantic "
            f"can validate: {reason}"
        ) from None


def loader(fmt: Format) -> Callable[[Any], Any] | None:
    """The function turning a raw frame into a value in ``fmt`` (None: ``python``,
    the value as it is); a :class:`ConfigurationError` for an unknown format."""
    if fmt == "json":
        return json_loads
    if fmt == "text":
        return lambda raw: raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else str(raw)
    if fmt == "bytes":
        return lambda raw: raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    if fmt == "python":
        return None
    raise ConfigurationError(f"decode format must be json, text, bytes or python, got {fmt!r}")


def describe_error(error: Exception) -> str:
    """What was wrong with a frame that did not decode or validate, in one line."""
    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors(include_url=False):
            loc = ".".join(str(p) for p in e["loc"])
            parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
        return "; ".join(parts)
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}"
    if isinstance(error, JSONTooDeepError):
        return str(error)
    return f"{type(error).__name__}: {error}"
