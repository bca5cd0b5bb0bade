"""Decoding at the source boundary: raw frames to values, validated once.

``decode`` turns JSON text or bytes (or already-parsed Python data) into values,
optionally validated into a pydantic model or any type pydantic understands.
Validation happens here, once per event, never again downstream; a frame that
does not decode or validate goes to dead letters as a :class:`DecodeError`
naming the source, its position and what was wrong, and the stream goes on.

Python data is validated a whole batch at a time (one ``list[Model]`` call, the
loop in Rust); JSON frames one call each (never joined: two broken frames could
join into a valid value). Only when something fails does the stage go row by
row to find the bad rows.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import from_json
from reactivex import Observable

from ..events import Batch
from ..exceptions import ConfigurationError, DecodeError
from .base import BatchHandler, Emit, Operator, batch_stage

__all__ = ["decode"]

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


def _loader(fmt: Format) -> Callable[[Any], Any] | None:
    if fmt == "json":
        return json_loads
    if fmt == "text":
        return lambda raw: raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else str(raw)
    if fmt == "bytes":
        return lambda raw: raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    if fmt == "python":
        return None
    raise ConfigurationError(f"decode format must be json, text, bytes or python, got {fmt!r}")


def _describe_error(error: Exception) -> str:
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


def decode(
    model: Any = None,
    *,
    format: Format = "json",
    name: str | None = None,
) -> Operator:
    """Decode each value (``format``: json, text, bytes, or python for data already
    parsed) and validate it into ``model`` (a pydantic model or any type; None: no
    validation). Failures go to dead letters with the reason.

    ::

        --a--b--c--|   decode(Tick)     a, c valid JSON ticks; b is not
        --A-----C--|   A, C are Tick instances; b is dead-lettered
    """
    loader = _loader(format)
    where = f"decode {name!r}" if name else "decode"
    adapter: TypeAdapter[Any] | None = None if model is None else type_adapter(model, where)
    many: TypeAdapter[Any] | None = None if model is None else TypeAdapter(list[model])
    json_native = format == "json" and adapter is not None

    def decode_one(raw: Any) -> Any:
        if json_native:
            assert adapter is not None
            return adapter.validate_json(raw)
        value = raw if loader is None else loader(raw)
        return value if adapter is None else adapter.validate_python(value)

    def decode_all(raws: list[Any]) -> list[Any]:
        if json_native:
            # one pydantic call per frame: joining frames into one JSON array would
            # let two broken frames ('{"a":1' and '"b":2}') pass as one valid value
            validate = adapter.validate_json  # type: ignore[union-attr]
            return [validate(r) for r in raws]
        if many is not None and loader is None:
            return list(many.validate_python(raws))
        return [decode_one(r) for r in raws]

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        class Handler(BatchHandler):
            def on_batch(self, batch: Batch, emit: Emit) -> None:
                ctx = batch.ctx
                metrics = ctx.stage(stage)
                metrics.events_in += len(batch.values)
                try:
                    values = decode_all(batch.values)
                    if len(values) != len(batch.values):  # a frame held several JSON values
                        raise ValueError("row count changed")
                except Exception:
                    values = []
                    keep: list[int] = []
                    for i, raw in enumerate(batch.values):
                        try:
                            values.append(decode_one(raw))
                            keep.append(i)
                        except Exception as error:
                            event = batch.event(i, take=True)
                            where = f" at {event.position}" if event.position else ""
                            ctx.dead_letter(
                                event,
                                stage,
                                DecodeError(
                                    f"cannot decode message{where}: {_describe_error(error)}",
                                    source=batch.source,
                                    raw=raw,
                                ),
                            )
                    batch = batch.take(keep)
                if values:
                    metrics.events_out += len(values)
                    emit(batch.with_values(values))

        return batch_stage(source, lambda _o, _s: Handler())

    return Operator("decode", build, name)
