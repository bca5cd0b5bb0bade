"""A pipeline-file kind derived from a function's signature and docstring.

Tools are built the same way (:mod:`rxagent.tools.tool`): the parameters a
function takes are the parameters YAML may write, their defaults are the
defaults, and the docstring's ``Args:`` section describes them in the reference
(docs/yaml.md) and the JSON Schema. So a new operator needs one registry line::

    add(derived("operator", ops.sample))

Each parameter's annotation says how YAML writes it (the conventions of
:mod:`.types`):

=====================================================  ==========================================
annotation (a union may add ``None``)                  in YAML
=====================================================  ==========================================
contains ``timedelta`` (``float | timedelta``)          a duration (``2.5``, ``"250ms"``, ``"1m"``)
``Callable`` and ``str`` (a key: field or function)    a field or an expression; a field is passed
                                                       as its name, an expression compiled
``Callable`` alone                                     a field, an expression or a python function
                                                       (``package.module:function``)
``Backoff``                                            a mapping: ``initial``, ``factor``...
``Aggregation`` (a window's ``agg``)                   ``count``, ``{mean: px}``, a mapping of them
``type[...]`` (a pydantic model)                       a python reference to the model
``Path`` or ``os.PathLike``                            a path, relative to the pipeline file
anything pydantic validates (int, str, Literal...)     as is
=====================================================  ==========================================

``scheduler`` is filled in from the build context (virtual time in ``rxagent
test``); ``*args``/``**kwargs`` and parameters whose type YAML cannot write are
left to their defaults (a *required* one is an error when the kind is made, not
when a file uses it). Constraints the signature cannot say (``>= 1``) are given
as pydantic ``Field`` s: ``derived("operator", ops.rate_limit, n=Field(ge=1))``;
the function still validates its arguments when the kind builds it.
"""

from __future__ import annotations

import inspect
import os
import re
import types
from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, Field, TypeAdapter, create_model
from pydantic.fields import FieldInfo

from ... import operators as ops
from ...backoff import Backoff
from ...docstrings import parse_docstring
from ...exceptions import ConfigurationError
from ..registry import BuildContext, Kind, Role
from .types import (
    Agg,
    BackoffParams,
    Duration,
    FieldOrExpr,
    Function,
    ModelRef,
    Params,
    build_agg,
    function_of,
    import_ref,
    key_arg,
)

__all__ = ["derived"]

#: How one parameter's YAML value becomes the function's argument.
Convert = Callable[[Any, BuildContext], Any]

#: Parameters the build context fills in, never written in YAML.
_FROM_CONTEXT: dict[str, Callable[[BuildContext], Any]] = {
    "scheduler": lambda ctx: ctx.scheduler,
}


def derived(
    role: Role,
    function: Callable[..., Any],
    *,
    name: str | None = None,
    shorthand: str | None = None,
    summary: str = "",
    reads_store: str | None = None,
    writes_store: str | None = None,
    uses_tool: str | None = None,
    exclude: Collection[str] = (),
    **fields: FieldInfo,
) -> Kind:
    """A :class:`~rxagent.config.Kind` whose parameters are ``function``'s.

    Args:
        role: ``"source"``, ``"operator"`` or ``"sink"``.
        function: what ``build`` calls with the file's parameters (an operator
            factory, a source or sink class); its docstring's first paragraph
            is the kind's summary, its ``Args:`` section the parameters' text.
        name: the kind's name in YAML (default: the function's name).
        shorthand: the parameter a scalar step sets (``- sample: 1s``).
        summary: instead of the docstring's first line.
        reads_store: the parameter naming a state store the kind reads.
        writes_store: the parameter naming a state store the kind writes.
        uses_tool: the parameter naming a tool the kind calls.
        exclude: parameters pipeline files do not set (left to their defaults).
        fields: pydantic ``Field`` s adding constraints or text to parameters.
    """
    kind_name: str = name or str(getattr(function, "__name__", ""))
    where = f"{role} kind {kind_name!r} derived from {function!r}"
    try:
        signature = inspect.signature(function)
        target = function.__init__ if inspect.isclass(function) else function
        hints = get_type_hints(target, include_extras=True)
    except Exception as error:  # an annotation that cannot be resolved, a builtin
        raise ConfigurationError(f"{where}: cannot read its signature: {error}") from error
    description, docs = parse_docstring(inspect.getdoc(function) or "")
    unknown = (set(fields) | set(exclude)) - set(signature.parameters)
    if unknown:
        raise ConfigurationError(f"{where}: no parameter named {', '.join(sorted(unknown))}")

    model_fields: dict[str, Any] = {}
    converts: dict[str, Convert] = {}
    positional: list[str] = []
    context: dict[str, Callable[[BuildContext], Any]] = {}
    for param in signature.parameters.values():
        required = param.default is inspect.Parameter.empty
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name == "self":
            continue
        if param.name in exclude:
            if required:
                raise ConfigurationError(f"{where}: a required parameter cannot be excluded")
            continue
        if param.name in _FROM_CONTEXT:
            context[param.name] = _FROM_CONTEXT[param.name]
            continue
        annotation = hints.get(param.name, Any)
        yaml_type = _yaml_type(annotation)
        if yaml_type is None:
            if required:
                raise ConfigurationError(
                    f"{where}: parameter {param.name!r} ({_type_name(annotation)}) cannot be "
                    "written in a pipeline file; give it a default, or write the kind's "
                    "Params model and build function by hand"
                )
            continue
        annotation, convert = yaml_type
        field = _field(param, fields.get(param.name), docs.get(param.name))
        model_fields[param.name] = (annotation, field)
        converts[param.name] = convert
        if param.kind is param.POSITIONAL_ONLY:
            positional.append(param.name)

    model_name = "".join(part.capitalize() for part in re.split(r"[_-]+", kind_name)) + "Params"
    try:
        params: type[BaseModel] = create_model(
            model_name,
            __base__=Params,
            __doc__=description or None,
            __module__=getattr(function, "__module__", __name__),
            **model_fields,
        )
    except Exception as error:
        raise ConfigurationError(f"{where}: cannot build its parameter model: {error}") from error

    def build(p: BaseModel, ctx: BuildContext) -> Any:
        given = {n: convert(getattr(p, n), ctx) for n, convert in converts.items()}
        args = [given.pop(n) for n in positional]
        given.update((n, fill(ctx)) for n, fill in context.items())
        return function(*args, **given)

    build.__qualname__ = build.__name__ = f"build_{kind_name}"
    return Kind(
        role,
        kind_name,
        params,
        build,
        shorthand=shorthand,
        summary=summary or description.split("\n\n")[0].replace("\n", " ").strip(),
        reads_store=reads_store,
        writes_store=writes_store,
        uses_tool=uses_tool,
    )


def _field(param: inspect.Parameter, given: FieldInfo | None, doc: str | None) -> FieldInfo:
    """The parameter's pydantic field: its default, a given ``Field``'s constraints,
    and the docstring's text where the ``Field`` gives none."""
    options: dict[str, Any] = {}
    if param.default is not inspect.Parameter.empty:
        options["default"] = param.default
    if doc and (given is None or given.description is None):
        # the reference's convention: a phrase, no full stop
        options["description"] = doc[:-1] if doc.endswith(".") and not doc.endswith("..") else doc
    if given is None:
        field: FieldInfo = Field(**options)
        return field
    return FieldInfo.merge_field_infos(given, **options)


def _identity(value: Any, ctx: BuildContext) -> Any:
    return value


def _optional(convert: Callable[[Any], Any]) -> Convert:
    return lambda value, ctx: None if value is None else convert(value)


def _members(annotation: Any) -> tuple[list[Any], bool]:
    """The members of a union (or the annotation alone), and whether ``None`` is one."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        members = list(get_args(annotation))
    else:
        members = [annotation]
    none = type(None) in members or None in members
    return [m for m in members if m not in (type(None), None)], none


def _is_callable(member: Any) -> bool:
    return (get_origin(member) or member) is Callable


def _yaml_type(annotation: Any) -> tuple[Any, Convert] | None:
    """How YAML writes a parameter of ``annotation``, and how its value is converted;
    None when it cannot."""
    members, none = _members(annotation)

    def maybe(yaml: Any) -> Any:
        return yaml | None if none else yaml

    if not members:
        return None
    if timedelta in members:
        return maybe(Duration), _identity
    if any(_is_callable(m) for m in members):
        if str in members:  # a key: a field name or a function of the value
            return maybe(FieldOrExpr), _optional(key_arg)
        return maybe(Function), _optional(function_of)
    if Backoff in members:
        return maybe(BackoffParams), _optional(lambda p: p.build())
    if ops.Aggregation in members:
        return Agg, _aggregation
    if all(get_origin(m) is type for m in members):
        return maybe(ModelRef), _optional(import_ref)
    if any((get_origin(m) or m) in (Path, os.PathLike) for m in members):
        return maybe(str), lambda value, ctx: None if value is None else ctx.path(value)
    try:
        TypeAdapter(annotation).json_schema()
    except Exception:
        return None
    return annotation, _identity


def _aggregation(value: Any, ctx: BuildContext) -> Any:
    return build_agg(value)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
