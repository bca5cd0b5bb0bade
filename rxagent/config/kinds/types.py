"""The parameter types of pipeline-file kinds, and their conventions (docs/yaml.md).

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
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)

from ... import operators as ops
from ...backoff import Backoff
from ...exceptions import ConfigurationError
from ..registry import BuildContext

__all__ = [
    "Agg",
    "BackoffParams",
    "Duration",
    "Expr",
    "FieldOrExpr",
    "Function",
    "ModelRef",
    "Params",
    "PythonRef",
    "SinkParams",
    "SourceParams",
    "StageParams",
    "WsUrl",
    "build_agg",
    "compute",
    "function_of",
    "import_ref",
    "is_field",
    "key_arg",
    "tls_files",
]


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


def is_field(text: str) -> bool:
    """A plain name is a field of the value; the language's constants are expressions."""
    return bool(_NAME.match(text)) and text not in _CONSTANTS


def _check_expression(text: str) -> str:
    if not is_field(text):
        from ..expressions import compile_expression

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
    except ModuleNotFoundError as error:
        hint = ""
        if error.name is not None and module_name.startswith(error.name):
            hint = (
                " (modules are imported from the installed packages, the pipeline file's "
                "folder, the current directory and --path DIR)"
            )
        raise ValueError(f"cannot import module {module_name!r}: {error}{hint}") from None
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


def _check_function(text: str) -> str:
    if _REF.match(text):
        import_ref(text)
    else:
        _check_expression(text)
    return text


Function = Annotated[
    str,
    AfterValidator(_check_function),
    WithJsonSchema(
        {
            "type": "string",
            "description": "a field of the value (px), an expression of it (value.px * 2) "
            "or a python function (package.module:function)",
        }
    ),
]


def function_of(text: str) -> Callable[[Any], Any]:
    """A :data:`Function` parameter's callable: the python function a reference
    names, else a field's ``itemgetter`` or the compiled expression of the value."""
    if _REF.match(text):
        function: Callable[[Any], Any] = import_ref(text)
        return function
    return compute(text)


def _check_model(ref: str) -> str:
    from ...decoding import type_adapter

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
    from ...websocket.common import url_problem

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
    if is_field(text):
        return itemgetter(text)
    from ..expressions import compile_expression

    expression: Callable[[Any], Any] = compile_expression(text, variables={"value"})
    return expression


class Params(BaseModel):
    """Base of every kind's parameters: unknown parameters are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageParams(Params):
    """Base of an operator kind's parameters: every step may be named."""

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
        """The :class:`~rxagent.backoff.Backoff` these parameters describe."""
        return Backoff(
            initial=self.initial,
            factor=self.factor,
            max_delay=self.max_delay,
            jitter=self.jitter,
            max_attempts=self.max_attempts,
            max_elapsed=self.max_elapsed,
        )


class SourceParams(Params):
    """Base of a source kind's parameters: its name, credit and batch size."""

    name: str | None = Field(None, description="the source's name (default: its kind)")
    credit: int = Field(4096, ge=1, description="most events in flight at once")
    credit_bytes: int | None = Field(
        64 << 20,
        ge=1,
        description="most bytes of messages in flight at once (null: no byte limit)",
    )
    batch_size: int = Field(512, ge=1, description="most events per batch")
    value_schema: dict[str, Any] | None = Field(
        None,
        description="the values' shape for validate's type checks: a JSON Schema object "
        "with properties (docs/yaml.md, types flow through the file); not enforced at run time",
    )


def tls_files(p: Any, ctx: BuildContext) -> dict[str, Any]:
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


class SinkParams(Params):
    """Base of a sink kind's parameters: every sink may be named."""

    name: str | None = Field(None, description="the sink's name in status")


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
    """The aggregation (or mapping of output name -> aggregation) an ``agg:``
    value describes; None for none (a window then emits its list of values)."""
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


def key_arg(text: str) -> str | Callable[[Any], Hashable]:
    """Operators take a field name as is (they build their own itemgetter)."""
    return text if is_field(text) else compute(text)
