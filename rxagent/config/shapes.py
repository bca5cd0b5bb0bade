"""Types flow through a pipeline file: each stage's value shape, and the checks of
the expressions and tool arguments that read it.

Each stage knows, where it can, the shape of the values it emits (:class:`Shape`,
a record with named, typed fields, or a plain type such as ``int``):

- a source: its ``value_schema`` (a JSON Schema object, :func:`shape_of_json_schema`),
  else a ``websocket`` or ``kafka`` source's ``model``, else a ``memory`` source's
  items (the keys every dict item has; the types their values have);
- ``decode`` with a ``model``: the model's fields (a pydantic model or a
  ``TypedDict``, :func:`shape_of_model`);
- ``map`` with a dict literal: its keys, typed where the expression makes it
  plain (a field: that field's type; arithmetic: a number; a comparison: bool);
- a window: its :class:`~rxagent.values.Window` record, ``value`` being what the
  ``agg`` makes (a mapping of aggregations: a record of them);
- steps that keep values (``filter``, ``key_by``, ``dedup``, ``reorder``, ``buffer``,
  the throttles, ...) pass the shape on; the others (``flat_map``, ``tap``,
  ``circuit_breaker``, a python ``function``, a plugin's kind) make it unknown.

:func:`check_pipelines` reads every expression of a stage (and every plain field
name, which reads a mapping's item) against the shape it receives and reports
what is certain to fail on every event: a field the record does not have (with
the closest name: "did you mean value.px?"), a field read from a number or a
list, a plain field name or an aggregation's field on a pydantic model (which a
mapping's item lookup cannot read; ``value.px`` can), an ordering comparison or
arithmetic of types that never combine (``value.sym > 100`` with ``sym`` a
string), and a tool sink's arguments against the tool's argument model (an
unknown argument, a missing required one, a value pydantic cannot convert).
An unknown shape checks nothing, and a name tested with ``"x" in value`` or read
with ``get(value, "x")`` is never reported as missing in that expression.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import itertools
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from ..values import Window
from .document import Location, Locations, Problem
from .kinds.types import Expr, FieldOrExpr, Function, is_field

__all__ = [
    "Shape",
    "ValueType",
    "check_pipelines",
    "describe_type",
    "read_field",
    "shape_of_json_schema",
    "shape_of_model",
    "type_of_annotation",
]

#: The possible types of a value: python types (``int``, ``str``, ``list``, ...) and
#: records (:class:`Shape`); ``None`` when nothing is known.
ValueType = frozenset["type | Shape"] | None

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Shape:
    """A record's shape: its fields and their types.

    ``access`` says how a record is read: ``"dict"`` (a mapping: ``value["px"]``),
    ``"model"`` (a pydantic model: attributes, which an expression's ``value.px``
    and ``value["px"]`` both read, a plain field name's item lookup does not) or
    ``"record"`` (both, as a window). ``required`` are the fields every value has;
    ``closed``: the fields listed are all the fields a value may have (a field not
    among them is certain to be missing)."""

    name: str
    fields: tuple[tuple[str, ValueType], ...]
    access: Literal["dict", "model", "record"] = "dict"
    required: frozenset[str] = frozenset()
    closed: bool = True

    def field(self, name: str) -> ValueType:
        """The type of the field ``name`` (None: unknown, or no such field)."""
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def names(self) -> list[str]:
        """The field names, in order."""
        return [key for key, _ in self.fields]

    def has(self, name: str) -> bool:
        """Whether the record lists the field ``name``."""
        return any(key == name for key, _ in self.fields)


# -- types of annotations, models, schemas and literals --------------------------------


_SIMPLE = (int, float, str, bool, bytes, type(None))


def type_of_annotation(annotation: Any, depth: int = 0) -> ValueType:
    """The value types an annotation allows (None: anything, or not understood)."""
    if depth > 8:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_of_annotation(typing.get_args(annotation)[0], depth + 1)
    if origin in (typing.Union, types.UnionType):
        out: set[type | Shape] = set()
        for arg in typing.get_args(annotation):
            member = type_of_annotation(arg, depth + 1)
            if member is None:
                return None
            out |= member
        return frozenset(out)
    if origin is Literal:
        return frozenset(type(a) for a in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return frozenset({type(None)})
    if origin is not None:
        if isinstance(origin, type):
            if issubclass(origin, Mapping):
                return frozenset({dict})
            if issubclass(origin, list | tuple | set | frozenset):
                return frozenset({origin})
            if origin in (Sequence, typing.Sequence):  # pragma: no cover - same as above
                return frozenset({list})
        return None
    if not isinstance(annotation, type):
        return None
    if issubclass(annotation, BaseModel) or _is_typed_dict(annotation):
        shape = shape_of_model(annotation, depth + 1)
        return None if shape is None else frozenset({shape})
    if annotation in _SIMPLE or annotation in (list, tuple, set, frozenset, dict):
        return frozenset({annotation})
    if issubclass(annotation, enum.Enum) and issubclass(annotation, str | int | float):
        return frozenset({annotation})
    return frozenset({annotation})  # another class: compared by _category as "other"


def _is_typed_dict(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, dict) and hasattr(cls, "__required_keys__")


def shape_of_model(model: Any, depth: int = 0) -> Shape | None:
    """The record a pydantic model (or ``TypedDict``) describes; None for other types."""
    if not isinstance(model, type):
        return None
    if issubclass(model, BaseModel):
        fields: list[tuple[str, ValueType]] = [
            (name, type_of_annotation(info.annotation, depth))
            for name, info in model.model_fields.items()
        ]
        for name, computed in model.model_computed_fields.items():
            fields.append((name, type_of_annotation(computed.return_type, depth)))
        subscript = hasattr(model, "__getitem__")  # a model that also reads as a mapping
        extra = model.model_config.get("extra")
        return Shape(
            model.__name__,
            tuple(fields),
            access="record" if subscript else "model",
            required=frozenset(n for n, _ in fields),
            closed=extra != "allow",
        )
    if _is_typed_dict(model):
        try:
            hints = typing.get_type_hints(model)
        except Exception:
            return None
        return Shape(
            model.__name__,
            tuple((name, type_of_annotation(hint, depth)) for name, hint in hints.items()),
            access="dict",
            required=frozenset(getattr(model, "__required_keys__", ())),
            closed=True,
        )
    return None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "array": (list,),
    "object": (dict,),
}


def shape_of_json_schema(schema: Any, name: str = "value_schema") -> ValueType:
    """The types a JSON Schema allows: an object with ``properties`` is a record
    (its ``required`` fields always present; closed unless ``additionalProperties``
    is given and not false); ``type`` names map to python's. Raises ValueError for
    what is not a JSON Schema."""
    if schema is True or schema == {}:
        return None
    if not isinstance(schema, dict):
        raise ValueError(f"{name}: expected a JSON Schema (a mapping), got {schema!r}")
    for combiner in ("anyOf", "oneOf"):
        if combiner in schema:
            options = schema[combiner]
            if not isinstance(options, list) or not options:
                raise ValueError(f"{name}.{combiner}: expected a list of schemas")
            out: set[type | Shape] = set()
            for i, option in enumerate(options):
                member = shape_of_json_schema(option, f"{name}.{combiner}[{i}]")
                if member is None:
                    return None
                out |= member
            return frozenset(out)
    if "enum" in schema and isinstance(schema["enum"], list):
        return frozenset(type(v) if not isinstance(v, dict) else dict for v in schema["enum"])
    declared = schema.get("type")
    names = [declared] if isinstance(declared, str) else declared
    if names is None:
        names = ["object"] if "properties" in schema else None
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{name}.type: expected a type name or a list of them, got {declared!r}")
    result: set[type | Shape] = set()
    for type_name in names:
        if type_name not in _JSON_TYPES:
            raise ValueError(
                f"{name}.type: unknown type {type_name!r}; expected one of {', '.join(_JSON_TYPES)}"
            )
        if type_name == "object" and "properties" in schema:
            properties = schema["properties"]
            if not isinstance(properties, dict):
                raise ValueError(f"{name}.properties: expected a mapping of field -> schema")
            required = schema.get("required", [])
            if not isinstance(required, list):
                raise ValueError(f"{name}.required: expected a list of field names")
            fields = tuple(
                (str(key), shape_of_json_schema(sub, f"{name}.properties.{key}"))
                for key, sub in properties.items()
            )
            additional = schema.get("additionalProperties", False)
            result.add(
                Shape(
                    str(schema.get("title") or "value_schema"),
                    fields,
                    access="dict",
                    required=frozenset(str(r) for r in required),
                    closed=additional is False,
                )
            )
        else:
            result.update(_JSON_TYPES[type_name])
    return frozenset(result)


def _type_of_data(value: Any, depth: int = 0) -> ValueType:
    """The type of a literal value written in the file (a memory source's item)."""
    if isinstance(value, dict) and depth < 8:
        return _common_shape([value], "item", depth + 1)
    return frozenset({type(value)})


def _common_shape(items: list[Any], name: str, depth: int = 0) -> ValueType:
    """The type of a list of items: a record of the keys of dict items (every item's
    keys required; keys some items lack are fields that may be missing)."""
    if not items:
        return None
    if not all(isinstance(i, dict) for i in items):
        kinds: set[type | Shape] = set()
        for item in items:
            if isinstance(item, dict):
                return None  # dicts and scalars mixed: leave it unknown
            kinds.add(type(item))
        return frozenset(kinds)
    keys: list[str] = []
    for item in items:
        keys.extend(k for k in item if isinstance(k, str) and k not in keys)
    required = frozenset(k for k in keys if all(k in item for item in items))
    fields: list[tuple[str, ValueType]] = []
    for key in keys:
        present = [item[key] for item in items if key in item]
        types_: set[type | Shape] = set()
        known = True
        for v in present:
            t = _type_of_data(v, depth)
            if t is None:
                known = False
                break
            types_ |= t
        shapes = [t for t in types_ if isinstance(t, Shape)]
        if len(shapes) > 1:
            known = False  # different records in one field: not worth merging
        fields.append((key, frozenset(types_) if known else None))
    return frozenset({Shape(name, tuple(fields), access="dict", required=required, closed=True)})


def describe_type(value_type: ValueType) -> str:
    """``str``, ``float or None``, ``Trade``: the types for a message."""
    if value_type is None:
        return "unknown"
    names = sorted(
        ("None" if t is type(None) else t.__name__) if isinstance(t, type) else t.name
        for t in value_type
    )
    return " or ".join(names)


# -- categories: what combines with what -----------------------------------------------


def _category(t: type | Shape) -> str:
    if isinstance(t, Shape):
        return "record"
    if t is type(None):
        return "none"
    if issubclass(t, bool | int | float) and not issubclass(t, enum.Enum):
        return "number"
    if issubclass(t, str) and not issubclass(t, enum.Enum):
        return "str"
    if t is bytes:
        return "bytes"
    if issubclass(t, list | tuple):
        return "list"
    if t is dict:
        return "dict"
    return "other"


def _categories(value_type: ValueType) -> set[str] | None:
    if value_type is None:
        return None
    cats = {_category(t) for t in value_type}
    return None if "other" in cats or not cats else cats


_ORDERED = {"number", "str", "bytes", "list"}


def _ordering_fails(a: str, b: str) -> bool:
    return not (a == b and a in _ORDERED)


def _arithmetic_fails(op: str, a: str, b: str) -> bool:
    if op in ("*", "**", "-", "/", "//"):
        return not (a == "number" and b == "number")
    # +: numbers, or two strings, lists or bytes
    return not (a == b and a in _ORDERED)


def _number_type(a: ValueType, b: ValueType, op: str) -> ValueType:
    if op == "/":
        return frozenset({float})
    if (
        a is not None
        and b is not None
        and all(isinstance(t, type) and issubclass(t, int) for t in (*a, *b))
    ):
        return frozenset({int})
    return frozenset({int, float})


# -- the expression checker ------------------------------------------------------------


@dataclass(frozen=True)
class _Finding:
    """A certain failure in an expression: what, and where in its text (0-based)."""

    message: str
    column: int | None


class _Checker:
    """Infers the types of an expression's nodes and notes certain failures."""

    def __init__(self, text: str, value: ValueType, guarded: set[str]) -> None:
        self.text = text
        self.value = value
        self.guarded = guarded
        self.findings: list[_Finding] = []

    def note(self, node: ast.AST, message: str) -> None:
        column = getattr(node, "col_offset", None)
        if getattr(node, "lineno", 1) != 1:
            column = None  # a multi-line expression: the parameter's place is enough
        self.findings.append(_Finding(message, column))

    def type_of(self, node: ast.AST) -> ValueType:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            for child in ast.iter_child_nodes(node):
                self.type_of(child)
            return None
        result: ValueType = method(node)
        return result

    def _Constant(self, node: ast.Constant) -> ValueType:
        return frozenset({type(node.value)})

    def _Name(self, node: ast.Name) -> ValueType:
        if node.id == "value":
            return self.value
        if node.id in ("true", "false"):
            return frozenset({bool})
        if node.id == "null":
            return frozenset({type(None)})
        return None

    def _Attribute(self, node: ast.Attribute) -> ValueType:
        return self.field(node, node.value, node.attr)

    def _Subscript(self, node: ast.Subscript) -> ValueType:
        index = node.slice
        if isinstance(index, ast.Constant) and isinstance(index.value, str):
            return self.field(node, node.value, index.value)
        self.type_of(node.value)
        self.type_of(index)
        return None

    def field(self, node: ast.AST, obj: ast.expr, name: str) -> ValueType:
        owner = self.type_of(obj)
        result, message = read_field(owner, name, ast.unparse(obj), guarded=name in self.guarded)
        if message is not None:
            self.note(node, message)
        return result

    def _Compare(self, node: ast.Compare) -> ValueType:
        operands = [node.left, *node.comparators]
        typed = [self.type_of(o) for o in operands]
        pairs = zip(itertools.pairwise(operands), itertools.pairwise(typed), strict=True)
        for op, ((left, right), (lt, rt)) in zip(node.ops, pairs, strict=True):
            if not isinstance(op, ast.Lt | ast.LtE | ast.Gt | ast.GtE):
                continue
            lc, rc = _categories(lt), _categories(rt)
            if lc is None or rc is None:
                continue
            if all(_ordering_fails(a, b) for a in lc for b in rc):
                symbol = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}[type(op)]
                self.note(
                    node,
                    f"{ast.unparse(left)} ({describe_type(lt)}) {symbol} {ast.unparse(right)} "
                    f"({describe_type(rt)}) compares types that have no order between them; "
                    "every event would fail" + _conversion_hint(lt, rt),
                )
        return frozenset({bool})

    def _BinOp(self, node: ast.BinOp) -> ValueType:
        symbols = {
            ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
            ast.Pow: "**", ast.Mod: "%",
        }  # fmt: skip
        left, right = self.type_of(node.left), self.type_of(node.right)
        op = symbols.get(type(node.op))
        lc, rc = _categories(left), _categories(right)
        if op is None or op == "%" or lc is None or rc is None:
            return None
        if all(_arithmetic_fails(op, a, b) for a in lc for b in rc):
            self.note(
                node,
                f"{ast.unparse(node.left)} ({describe_type(left)}) {op} "
                f"{ast.unparse(node.right)} ({describe_type(right)}): these types do not "
                f"combine with {op}; every event would fail" + _conversion_hint(left, right),
            )
            return None
        if lc == {"number"} and rc == {"number"}:
            return _number_type(left, right, op)
        if lc == rc and len(lc) == 1:
            return left
        return None

    def _UnaryOp(self, node: ast.UnaryOp) -> ValueType:
        operand = self.type_of(node.operand)
        if isinstance(node.op, ast.Not):
            return frozenset({bool})
        return operand if _categories(operand) == {"number"} else None

    def _BoolOp(self, node: ast.BoolOp) -> ValueType:
        parts = [self.type_of(v) for v in node.values]
        return _union(parts)

    def _IfExp(self, node: ast.IfExp) -> ValueType:
        self.type_of(node.test)
        return _union([self.type_of(node.body), self.type_of(node.orelse)])

    def _Call(self, node: ast.Call) -> ValueType:
        args = [self.type_of(a) for a in node.args]
        name = node.func.id if isinstance(node.func, ast.Name) else None
        returns: dict[str, ValueType] = {
            "len": frozenset({int}),
            "int": frozenset({int}),
            "float": frozenset({float}),
            "str": frozenset({str}),
            "bool": frozenset({bool}),
            "lower": frozenset({str}),
            "upper": frozenset({str}),
            "startswith": frozenset({bool}),
            "endswith": frozenset({bool}),
            "round": frozenset({int, float}),
        }
        if name in returns:
            return returns[name]
        if name in ("abs", "min", "max") and args:
            merged = _union(args)
            return merged if _categories(merged) == {"number"} else None
        return None

    def _Dict(self, node: ast.Dict) -> ValueType:
        fields: list[tuple[str, ValueType]] = []
        known = True
        for key, value in zip(node.keys, node.values, strict=True):
            value_type = self.type_of(value)
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                fields.append((key.value, value_type))
            else:
                if key is not None:
                    self.type_of(key)
                known = False
        if not known:
            return frozenset({dict})
        return frozenset(
            {Shape("map", tuple(fields), required=frozenset(k for k, _ in fields), closed=True)}
        )

    def _List(self, node: ast.List) -> ValueType:
        for e in node.elts:
            self.type_of(e)
        return frozenset({list})

    _Tuple = _List


def _union(parts: list[ValueType]) -> ValueType:
    out: set[type | Shape] = set()
    for part in parts:
        if part is None:
            return None
        out |= part
    return frozenset(out)


def _conversion_hint(a: ValueType, b: ValueType) -> str:
    cats = (_categories(a) or set()) | (_categories(b) or set())
    if cats == {"str", "number"}:
        return " (convert one side: float(...), int(...) or str(...))"
    return ""


def read_field(
    owner: ValueType, name: str, owner_text: str = "value", *, guarded: bool = False
) -> tuple[ValueType, str | None]:
    """The type of ``owner_text.name`` (an expression's field access, which reads
    mappings and pydantic models alike), and the message when it fails for every
    type ``owner`` may be (None: it may succeed)."""
    if owner is None:
        return None, None
    results: list[ValueType] = []
    missing: list[Shape] = []
    failing: list[type | Shape] = []
    for t in owner:
        if isinstance(t, Shape):
            if t.has(name):
                results.append(t.field(name))
            elif t.closed and not guarded:
                missing.append(t)
            else:
                results.append(None)
        elif _category(t) in ("number", "str", "none", "bytes", "list"):
            failing.append(t)
        else:
            results.append(None)  # a dict of unknown keys, another class: may have it
    if results:
        return _union(results), None
    if missing:
        return None, _no_field_message(missing, name, owner_text)
    return None, (
        f"{owner_text} is {describe_type(frozenset(failing))}, not a record: "
        f"{owner_text}.{name} fails on every event"
    )


def _closest(name: str, names: list[str]) -> str | None:
    """The name ``name`` was probably meant to be: the closest spelling, the same
    name in another case, or (an abbreviation, price -> px) the one with its initial."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if close:
        return close[0]
    lowered = {n.lower(): n for n in names}
    if name.lower() in lowered:
        return lowered[name.lower()]
    same = [n for n in names if n[:1].lower() == name[:1].lower()]
    return same[0] if len(same) == 1 else None


def _no_field_message(shapes: list[Shape], name: str, owner_text: str) -> str:
    shape = shapes[0]
    names = shape.names()
    close = _closest(name, names)
    hint = f"; did you mean {owner_text}.{close}?" if close else ""
    return (
        f"{owner_text} has no field {name!r} (fields of {shape.name}: "
        f"{', '.join(names) or 'none'}){hint}"
    )


def _guarded_names(tree: ast.AST) -> set[str]:
    """Field names an expression tests for (``"x" in value``, ``get(value, "x")``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            left = node.left
            for op in node.ops:
                if isinstance(op, ast.In | ast.NotIn) and isinstance(left, ast.Constant):
                    names.add(str(left.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "get"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            names.add(str(node.args[1].value))
    return names


def _parse(text: str) -> ast.expr | None:
    """The expression's tree with columns counted in ``text`` (None: not parsable;
    validation reported it)."""
    stripped = text.lstrip()
    offset = len(text) - len(stripped)
    try:
        tree = ast.parse("(" + stripped + "\n)", mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) == 1 and hasattr(node, "col_offset"):
            node.col_offset += offset - 1
    return tree.body


def _check_text(text: str, value: ValueType) -> tuple[ValueType, list[_Finding]]:
    """The type of a field-or-expression parameter and its certain failures."""
    if is_field(text):
        result, message = read_field(value, text)
        if message is not None and text in ("key", "time"):
            message += f" (a plain name is a field; the event's {text} is the expression ({text}))"
        findings = [] if message is None else [_Finding(message, None)]
        if message is None and value is not None:
            models = [t for t in value if isinstance(t, Shape) and t.access == "model"]
            if models and len(models) == len(value):
                findings.append(
                    _Finding(
                        f"{models[0].name} is a pydantic model, and a plain field name reads a "
                        f"mapping's item ({text!r} is value[{text!r}] by item lookup, which a "
                        f"model does not have); write the expression value.{text}",
                        None,
                    )
                )
        return result, findings
    tree = _parse(text)
    if tree is None:
        return None, []
    checker = _Checker(text, value, _guarded_names(tree))
    result = checker.type_of(tree)
    return result, checker.findings


# -- compatibility of a value with a tool argument -------------------------------------


def _conversion_fails(value: str, target: type | Shape, coerce_numbers: bool) -> bool:
    """Whether pydantic (lax mode) can never turn a value of category ``value`` into
    ``target``."""
    if value in ("other",):
        return False
    goal = _category(target)
    if goal == "other":
        return False
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return False
    if goal == "none":
        return value != "none"
    if value == "none":
        return True
    if goal == "str":
        if value == "number":
            return not coerce_numbers
        return value not in ("str", "bytes")
    if goal == "number":  # int, float, bool: from numbers and (maybe) strings, bytes
        return value in ("list", "dict", "record")
    if goal == "bytes":
        return value not in ("str", "bytes")
    if goal == "list":
        return value != "list"
    # a dict or a record (a model, a TypedDict): from a mapping or a model
    return value in ("number", "str", "bytes", "list")


def _argument_problem(arg_type: ValueType, annotation: Any, coerce_numbers: bool) -> str | None:
    targets = type_of_annotation(annotation)
    sources = _categories(arg_type)
    if targets is None or sources is None:
        return None
    if all(_conversion_fails(s, t, coerce_numbers) for s in sources for t in targets):
        return (
            f"takes {describe_type(targets)}, and pydantic cannot convert {describe_type(arg_type)}"
        )
    return None


# -- what each stage emits -------------------------------------------------------------

#: Steps that pass each value on unchanged.
_KEEPS = frozenset(
    {
        "filter", "key_by", "event_time", "dedup", "reorder", "buffer", "retry",
        "throttle_first", "throttle_last", "throttle_latest", "debounce", "sample",
        "rate_limit",
    }
)  # fmt: skip
_WINDOWS = frozenset({"count_window", "tumbling_window", "sliding_window", "session_window"})
_AGGREGATIONS = frozenset({"count", "sum", "mean", "min", "max", "first", "last", "collect"})


class _Stage(Protocol):
    """What the checker reads of a validated stage (the loader's StageSpec)."""

    @property
    def kind(self) -> Any: ...
    @property
    def params(self) -> Any: ...
    @property
    def path(self) -> Path_: ...


class _Pipeline(Protocol):
    """What the checker reads of a validated pipeline (the loader's PipelineSpec)."""

    @property
    def source(self) -> Any: ...
    @property
    def steps(self) -> Sequence[Any]: ...
    @property
    def sinks(self) -> Sequence[Any]: ...


def _import(ref: str) -> Any:
    from .kinds.types import import_ref

    try:
        return import_ref(ref)
    except ValueError:
        return None


def _model_type(ref: str | None) -> ValueType:
    if not ref:
        return None
    shape = shape_of_model(_import(ref))
    return None if shape is None else frozenset({shape})


def _builtin(stage: _Stage) -> bool:
    """Whether the stage is one of rxagent's kinds (a plugin's parameters may mean
    anything; its stages check nothing and emit an unknown shape)."""
    params = getattr(stage.kind, "params", None)
    return str(getattr(params, "__module__", "")).startswith("rxagent.")


def _source_type(stage: _Stage, report: Callable[[Path_, str], None]) -> ValueType:
    params = stage.params
    schema = getattr(params, "value_schema", None)
    if schema is not None:
        try:
            return shape_of_json_schema(schema)
        except ValueError as error:
            report((*stage.path, stage.kind.name, "value_schema"), str(error))
            return None
    if not _builtin(stage):
        return None
    name = stage.kind.name
    if name in ("websocket", "kafka"):
        return _model_type(getattr(params, "model", None))
    if name == "memory":
        items = getattr(params, "items", None)
        return _common_shape(list(items), "item") if isinstance(items, list) else None
    return None


def _agg_value_type(spec: Any, value: ValueType) -> ValueType:
    """What a window's ``agg`` makes of its values."""
    if spec is None:
        return frozenset({list})
    if isinstance(spec, str):
        return _one_agg_type(spec, None, value)
    if isinstance(spec, dict):
        if len(spec) == 1 and next(iter(spec)) in _AGGREGATIONS:
            fn, field = next(iter(spec.items()))
            return _one_agg_type(fn, field, value)
        fields: list[tuple[str, ValueType]] = []
        for out, one in spec.items():
            if isinstance(one, str):
                fields.append((str(out), _one_agg_type(one, None, value)))
            elif isinstance(one, dict) and len(one) == 1:
                fn, field = next(iter(one.items()))
                fields.append((str(out), _one_agg_type(fn, field, value)))
            else:
                fields.append((str(out), None))
        return frozenset(
            {Shape("agg", tuple(fields), required=frozenset(n for n, _ in fields), closed=True)}
        )
    return None


def _one_agg_type(fn: str, field: Any, value: ValueType) -> ValueType:
    if fn == "count":
        return frozenset({int})
    if fn == "collect":
        return frozenset({list})
    picked = value if field is None or not isinstance(field, str) else read_field(value, field)[0]
    if fn == "mean":
        return frozenset({float, type(None)})
    if fn == "sum":
        return _number_type(picked, picked, "+") if _categories(picked) == {"number"} else None
    # min, max, first, last: one of the values, or None for an empty window
    return None if picked is None else picked | {type(None)}


def _window_type(params: Any, value: ValueType) -> ValueType:
    hints = typing.get_type_hints(Window)
    fields = tuple(
        (f.name, _agg_value_type(getattr(params, "agg", None), value)
         if f.name == "value" else (None if f.name == "key" else type_of_annotation(hints[f.name])))
        for f in dataclasses.fields(Window)
    )  # fmt: skip
    return frozenset(
        {Shape("window", fields, access="record", required=frozenset(n for n, _ in fields))}
    )


def _step_type(stage: _Stage, value: ValueType) -> ValueType:
    if not _builtin(stage):
        return None
    name = stage.kind.name
    params = stage.params
    if name in _KEEPS:
        return value
    if name in _WINDOWS:
        return _window_type(params, value)
    if name == "decode":
        if params.model:
            return _model_type(params.model)
        return {
            "python": value,
            "text": frozenset({str}),
            "bytes": frozenset({bytes}),
        }.get(params.format)
    if name == "map":
        if params.expr is None:
            return None
        return _check_text(params.expr, value)[0]
    return None


# -- the checks ------------------------------------------------------------------------


def _expression_params(params: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    """Every field-or-expression parameter of ``params`` (nested parameter models
    included): its path and text."""
    if not isinstance(params, BaseModel):
        return
    for name, info in type(params).model_fields.items():
        value = getattr(params, name)
        if value is None:
            continue
        annotation: Any = info.annotation
        expression = _is_expression_type(annotation) or _has_expression_meta(info.metadata)
        if expression and isinstance(value, str):
            if not _import_like(value):  # else a python function (Function parameters)
                yield (*path, name), value
            continue
        if isinstance(value, dict) and _mapping_of_expressions(annotation):
            for key, text in value.items():
                if isinstance(text, str):
                    yield (*path, name, key), text
        elif isinstance(value, BaseModel):
            yield from _expression_params(value, (*path, name))


_EXPRESSION_TYPES = (FieldOrExpr, Expr, Function)
_EXPRESSION_META = [m for t in _EXPRESSION_TYPES for m in typing.get_args(t)[1:]]


def _has_expression_meta(metadata: list[Any]) -> bool:
    return any(any(m is e for e in _EXPRESSION_META) for m in metadata)


def _is_expression_type(annotation: Any) -> bool:
    if any(annotation is t for t in _EXPRESSION_TYPES):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_expression_type(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return _has_expression_meta(list(typing.get_args(annotation)[1:]))
    return False


def _mapping_of_expressions(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_mapping_of_expressions(a) for a in typing.get_args(annotation))
    if origin is dict:
        args = typing.get_args(annotation)
        return len(args) == 2 and _is_expression_type(args[1])
    return False


def _import_like(text: str) -> bool:
    head, _, tail = text.partition(":")
    return (
        bool(head)
        and bool(tail)
        and all(p.isidentifier() for p in (*head.split("."), *tail.split(".")))
    )


class _Report:
    """Collects located problems; a finding's column, where the parameter's text is
    written on one line as it is, points into the expression."""

    def __init__(self, locations: Locations, lines: list[str]) -> None:
        self.locations = locations
        self.lines = lines
        self.problems: list[Problem] = []
        self.seen: set[tuple[Path_, str]] = set()

    def add(self, path: Path_, message: str, *, key: bool = False) -> None:
        if (path, message) in self.seen:
            return
        self.seen.add((path, message))
        self.problems.append(self.locations.problem(path, message, key=key))

    def finding(self, path: Path_, text: str, finding: _Finding) -> None:
        if (path, finding.message) in self.seen:
            return
        self.seen.add((path, finding.message))
        problem = self.locations.problem(path, finding.message)
        location = problem.location
        if finding.column is not None and "\n" not in text and 0 < location.line <= len(self.lines):
            line = self.lines[location.line - 1]
            start = location.column - 1
            if line[start : start + 1] in ("'", '"'):
                start += 1
            if line[start : start + len(text)] == text:
                location = Location(location.file, location.line, start + finding.column + 1)
        self.problems.append(Problem(location, problem.path, finding.message))


def check_pipelines(
    pipelines: Mapping[str, _Pipeline],
    locations: Locations,
    *,
    text: str = "",
    tool_model: Callable[[str], type[BaseModel] | None] = lambda _name: None,
) -> list[Problem]:
    """The certain type errors of validated pipelines, located on the parameter
    (and, where the text allows, the column in the expression). ``tool_model`` gives
    a tool's argument model by name (None: unknown, its arguments are not checked);
    ``text`` is the file's text, for columns inside expressions."""
    report = _Report(locations, text.splitlines())
    for spec in pipelines.values():
        value = _source_type(spec.source, report.add)
        _check_stage(spec.source, value, report, tool_model)
        for step in spec.steps:
            _check_stage(step, value, report, tool_model)
            value = _step_type(step, value)
        for sink in spec.sinks:
            _check_stage(sink, value, report, tool_model)
    return report.problems


def _check_stage(
    stage: _Stage,
    value: ValueType,
    report: _Report,
    tool_model: Callable[[str], type[BaseModel] | None],
) -> None:
    if not _builtin(stage):
        return
    kpath: Path_ = (*stage.path, stage.kind.name)
    args_path: Path_ = (*kpath, "args")
    tool_sink = stage.kind.role == "sink" and stage.kind.name == "tool"
    if value is not None:
        for path, text in _expression_params(stage.params, kpath):
            if tool_sink and path[: len(args_path)] == args_path:
                continue  # checked with the tool's model below
            for finding in _check_text(text, value)[1]:
                report.finding(path, text, finding)
        if stage.kind.name in _WINDOWS:
            _check_agg(getattr(stage.params, "agg", None), value, (*kpath, "agg"), report)
    if tool_sink:  # argument names are checked even when the value's shape is unknown
        _check_tool_args(stage.params, value, kpath, report, tool_model)


def _check_agg(spec: Any, value: ValueType, path: Path_, report: _Report) -> None:
    if not isinstance(spec, dict):
        return
    if len(spec) == 1 and next(iter(spec)) in _AGGREGATIONS:
        pairs = [(path, spec)]
    else:
        pairs = [((*path, out), one) for out, one in spec.items() if isinstance(one, dict)]
    for where, one in pairs:
        if len(one) != 1:
            continue
        fn, field = next(iter(one.items()))
        if fn in ("count", "collect") or not isinstance(field, str):
            continue
        picked, message = read_field(value, field)
        if message is not None:
            report.add((*where, fn), f"{fn}({field}): {message}")
            continue
        models = [t for t in value or () if isinstance(t, Shape) and t.access == "model"]
        if models and len(models) == len(value or ()):
            report.add(
                (*where, fn),
                f"{fn}({field}) reads each value's item {field!r}, and {models[0].name} is a "
                f"pydantic model (no item lookup): add a step before the window that makes a "
                f"mapping, e.g. map: '{{\"{field}\": value.{field}}}'",
            )
            continue
        cats = _categories(picked)
        if fn in ("sum", "mean") and cats is not None and "number" not in cats:
            report.add(
                (*where, fn),
                f"{fn}({field}): the field {field!r} is {describe_type(picked)}, not a number",
            )


def _check_tool_args(
    params: Any,
    value: ValueType,
    kpath: Path_,
    report: _Report,
    tool_model: Callable[[str], type[BaseModel] | None],
) -> None:
    model = tool_model(params.tool)
    args = params.args
    if model is None:
        if isinstance(args, dict):
            for key, text in args.items():
                for finding in _check_text(text, value)[1]:
                    report.finding((*kpath, "args", key), text, finding)
        elif isinstance(args, str):
            for finding in _check_text(args, value)[1]:
                report.finding((*kpath, "args"), args, finding)
        return
    config = model.model_config
    coerce = bool(config.get("coerce_numbers_to_str"))
    names: dict[str, str] = {}  # every accepted spelling -> field name
    for name, info in model.model_fields.items():
        names[name] = name
        if isinstance(info.alias, str):
            names[info.alias] = name
        if isinstance(info.validation_alias, str):
            names[info.validation_alias] = name
    required = [n for n, info in model.model_fields.items() if info.is_required()]
    tool = params.tool
    fields_text = ", ".join(
        f"{n}{'' if info.is_required() else '?'}" for n, info in model.model_fields.items()
    )
    args_path: Path_ = (*kpath, "args")

    def check_mapping(given: Mapping[str, ValueType], where: Callable[[str], Path_]) -> None:
        for arg, arg_type in given.items():
            if arg not in names:
                if config.get("extra") == "allow":
                    continue
                close = _closest(arg, list(model.model_fields))
                hint = f"; did you mean {close!r}?" if close else ""
                report.add(
                    where(arg),
                    f"tool {tool!r} has no argument {arg!r}{hint} (its arguments: {fields_text})",
                    key=True,
                )
                continue
            field_name = names[arg]
            problem = _argument_problem(arg_type, model.model_fields[field_name].annotation, coerce)
            if problem is not None:
                report.add(where(arg), f"argument {field_name!r} of tool {tool!r} {problem}")
        given_fields = {names[a] for a in given if a in names}
        missing = [n for n in required if n not in given_fields]
        if missing:
            report.add(
                args_path,
                f"tool {tool!r} needs the argument{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)}, which args does not give "
                f"(its arguments: {fields_text})",
            )

    if isinstance(args, dict):
        typed: dict[str, ValueType] = {}
        for arg, text in args.items():
            arg_type, findings = _check_text(text, value)
            for finding in findings:
                report.finding((*args_path, arg), text, finding)
            typed[arg] = arg_type
        check_mapping(typed, lambda arg: (*args_path, arg))
        return
    whole: ValueType
    if isinstance(args, str):
        whole, findings = _check_text(args, value)
        for finding in findings:
            report.finding(args_path, args, finding)
    else:
        whole = value  # the value is the arguments
    if whole is None or len(whole) != 1:
        return
    (record,) = tuple(whole)
    if not isinstance(record, Shape) or record.access == "record":
        return
    # a record given whole (a mapping, or a model's fields): its fields are the arguments
    for field_name in sorted(record.required):
        if field_name not in names:
            if config.get("extra") == "forbid":
                report.add(
                    args_path,
                    f"tool {tool!r} has no argument {field_name!r}, a field every "
                    f"{record.name} value has (its arguments: {fields_text}); give args: "
                    "a mapping of argument -> field or expression",
                )
            continue
        problem = _argument_problem(
            record.field(field_name), model.model_fields[names[field_name]].annotation, coerce
        )
        if problem is not None:
            report.add(args_path, f"argument {names[field_name]!r} of tool {tool!r} {problem}")
    if record.closed:
        given = {names[n] for n in record.names() if n in names}
        missing = [n for n in required if n not in given]
        if missing:
            report.add(
                args_path,
                f"tool {tool!r} needs the argument{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)}, which no {record.name} value has "
                f"(its arguments: {fields_text})",
            )
