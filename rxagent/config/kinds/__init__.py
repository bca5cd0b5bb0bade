"""The built-in kinds: every source, operator and sink of the Python API, for YAML.

One module per role (:mod:`.sources`, :mod:`.operators`, :mod:`.sinks`), each
with a ``register(registry)``; the parameter types they share (durations, fields
or expressions, python references, aggregations) are in :mod:`.types`, and
:func:`~.derive.derived` builds a kind from a function's signature and
docstring, so registering a new operator for YAML is one line::

    add(derived("operator", ops.my_operator, shorthand="size"))

Conventions of the parameter types are in :mod:`.types` and docs/yaml.md.
"""

from __future__ import annotations

from ..registry import Registry
from . import operators, sinks, sources
from .derive import derived
from .types import (
    Agg,
    BackoffParams,
    Duration,
    Expr,
    FieldOrExpr,
    Function,
    ModelRef,
    Params,
    PythonRef,
    SinkParams,
    SourceParams,
    StageParams,
    build_agg,
    compute,
    import_ref,
    is_field,
    key_arg,
)

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
    "build_agg",
    "compute",
    "default_registry",
    "derived",
    "import_ref",
    "is_field",
    "key_arg",
    "register_builtins",
]


def register_builtins(registry: Registry) -> None:
    """Add every built-in kind to ``registry``."""
    sources.register(registry)
    operators.register(registry)
    sinks.register(registry)


_default: Registry | None = None


def default_registry() -> Registry:
    """The registry with every built-in kind (and plugins' kinds, loaded on first use).

    It lives here, not in :mod:`..registry`: the built-in kinds register into a
    registry they are given, and the registry module knows none of them."""
    global _default
    if _default is None:
        registry = Registry()
        register_builtins(registry)
        _default = registry
    return _default
