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

from typing import Any

from pydantic import TypeAdapter
from reactivex import Observable

# the shared decoding helpers, re-exported where they used to live
from ..decoding import (
    MAX_JSON_DEPTH,
    Format,
    JSONTooDeepError,
    describe_error,
    json_loads,
    loader,
    type_adapter,
)
from ..events import Batch
from ..exceptions import DecodeError
from .base import BatchHandler, Emit, Operator, batch_stage

__all__ = ["MAX_JSON_DEPTH", "Format", "JSONTooDeepError", "decode", "json_loads", "type_adapter"]


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

    Args:
        model: what each decoded value is validated into: a pydantic model, or
            any type pydantic validates (``list[int]``, a ``TypedDict``); None
            (default) keeps the decoded value as it is.
        format: how a raw value is read: ``"json"`` (text or bytes, at most
            ``MAX_JSON_DEPTH`` levels deep), ``"text"`` (bytes as UTF-8),
            ``"bytes"`` (text encoded as UTF-8), or ``"python"`` (already
            decoded; only validated).
        name: the stage's name in status, metrics and dead letters (default:
            ``decode``, numbered when a pipeline has several: ``decode#2``).
    """
    load = loader(format)
    where = f"decode {name!r}" if name else "decode"
    adapter: TypeAdapter[Any] | None = None if model is None else type_adapter(model, where)
    many: TypeAdapter[Any] | None = None if model is None else TypeAdapter(list[model])
    json_native = format == "json" and adapter is not None

    def decode_one(raw: Any) -> Any:
        if json_native:
            assert adapter is not None
            return adapter.validate_json(raw)
        value = raw if load is None else load(raw)
        return value if adapter is None else adapter.validate_python(value)

    def decode_all(raws: list[Any]) -> list[Any]:
        if json_native:
            # one pydantic call per frame: joining frames into one JSON array would
            # let two broken frames ('{"a":1' and '"b":2}') pass as one valid value
            validate = adapter.validate_json  # type: ignore[union-attr]
            return [validate(r) for r in raws]
        if many is not None and load is None:
            return list(many.validate_python(raws))
        return [decode_one(r) for r in raws]

    def build(stage: str, source: Observable[Batch]) -> Observable[Batch]:
        class Handler(BatchHandler):
            def on_batch(self, batch: Batch, emit: Emit) -> None:
                ctx = batch.ctx
                metrics = ctx.stage(stage)
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
                                    f"cannot decode message{where}: {describe_error(error)}",
                                    source=batch.source,
                                    raw=raw,
                                ),
                            )
                    batch = batch.take(keep)
                if values:
                    metrics.events_out += len(values)
                    emit(batch.with_values(values))

        return batch_stage(source, lambda _o, _s: Handler(), stage)

    return Operator("decode", build, name)
