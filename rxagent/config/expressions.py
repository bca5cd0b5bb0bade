"""A small, safe expression language for pipeline files (filters, maps, keys, tool arguments).

The syntax is a subset of Python expressions, parsed by the standard library's
:mod:`ast` (no ``eval``, no ``exec``, no ``compile`` of Python code)::

    value.px > 100 and value.sym == "BTC"
    {"sym": value.sym, "notional": value.px * value.qty}
    lower(value.sym) if "sym" in value else "unknown"

An expression sees three variables: ``value``, the event's value; ``key``, its key
(``None`` before a ``key_by``); ``time``, its event time in epoch seconds (or
``None``). ``value.px`` and ``value["px"]`` both read the field ``px``: a mapping's
item, or a pydantic model's field (by its field name; never any other attribute, so
``value.__class__`` is just a missing field). An
expression reading ``key`` or ``time`` is compiled a second time over ``(value,
key, time)`` rows and the batch's three columns (:meth:`Expression.evaluate_event`,
:meth:`Expression.evaluate_events`); one reading only ``value`` keeps the forms below.
Which nodes, operators and functions are allowed, and why this design rather than a CEL or JMESPath
library, is in docs/expressions.md.

Each expression is compiled once into two forms:

- a *row* form, a tree of closures over C-level primitives (``itemgetter``,
  the :mod:`operator` functions), called by :meth:`Expression.__call__`;
- a *column* form, called by :meth:`Expression.evaluate_many` on a whole batch:
  every node maps over the batch's list with the builtin ``map`` (a loop in C),
  so ``value.px > 100`` costs one ``map(itemgetter("px"), values)`` and one
  ``map(gt, ..., repeat(100))`` per batch.

Both forms give the same results: operators are pure, so when the column form
succeeds every row would have succeeded with the same value. When any row fails
the column form raises (a sub-expression may fail for rows where ``and``/``or``/
``if`` would have skipped it, in which case that node retries row by row), and
the stages built here (:func:`expression_filter`, :func:`expression_map`,
:func:`expression_key_by`) redo the batch row by row so only the failing events
go to dead letters, with an :class:`ExpressionEvaluationError` naming the
expression and the reason.

Field access is compiled for mappings (a C ``itemgetter``). When a form fails, the
expression is compiled once more with lookups that also read pydantic models (a
Python function per lookup) and retried; if that succeeds, models flow here and the
expression keeps the second forms from then on. Mappings alone never pay for it.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, Literal

from pydantic import BaseModel

from .._secrets import redact
from ..events import Batch
from ..exceptions import ConfigurationError, RxAgentError
from ..operators.base import Operator
from ..operators.toolkit import EventFunctions
from ..operators.transform import filter_stage, per_row_stage

__all__ = [
    "FUNCTIONS",
    "MAX_LENGTH",
    "MAX_STRING",
    "VARIABLES",
    "Expression",
    "ExpressionError",
    "ExpressionEvaluationError",
    "compile_expression",
    "expression_filter",
    "expression_key_by",
    "expression_map",
]

#: The variables an expression may read.
VARIABLES = frozenset({"value", "key", "time"})

#: Longest expression text accepted (a pipeline file is no place for programs).
MAX_LENGTH = 4000

#: Deepest nesting of expression nodes accepted.
_MAX_DEPTH = 64

#: ``2 ** n`` style results above this many bits are refused at run time.
_MAX_POW_BITS = 4096

#: The longest string (or list) that ``%`` formatting and ``+`` chains may build, in
#: characters (items). A data-supplied template such as ``'%0100000000d'`` is refused
#: before it is formatted.
MAX_STRING = 1 << 20

#: A ``+`` chain with more non-constant terms than this checks its results' size
#: (fewer cannot build more than that many times the inputs, which are bounded).
_ADD_TERMS_UNCHECKED = 4

#: The widths and precisions of ``%`` conversion specifiers, and ``*`` ones.
_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?.")

#: The order variables are listed in (errors, docs).
_VARIABLE_ORDER = ("value", "key", "time")

#: The variables that are not the value: reading one makes an expression an *event* expression.
_EVENT_VARIABLES = frozenset({"key", "time"})

# A row form takes one value (or, in an event expression, a (value, key, time) tuple); a
# column form takes the batch's values (or, in an event expression, a _Columns).
_Rows = Collection[Any]
_Row = Callable[[Any], Any]
_Col = Callable[[_Rows], list[Any]]
#: An expression's row and column forms, then its event row and column forms (or None).
_Forms = tuple[_Row, _Col, _Row | None, _Col | None]


class ExpressionError(ConfigurationError):
    """An expression cannot be compiled: a syntax error, an unknown name or function,
    or a construct the language does not allow.

    ``text`` is the expression, ``column`` the 0-based offset in it where the
    problem is (``None`` when unknown), ``reason`` what is wrong and what was expected.
    """

    def __init__(self, text: str, reason: str, column: int | None = None) -> None:
        where = "" if column is None else f" at column {column}"
        super().__init__(f"expression {text!r}{where}: {reason}")
        self.text = text
        self.reason = reason
        self.column = column


class ExpressionEvaluationError(RxAgentError):
    """An expression failed on one event value (a missing field, a type mismatch,
    a division by zero). Stages dead-letter that event and go on."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"expression {text!r} failed: {reason}")
        self.text = text
        self.reason = reason


# -- runtime helpers (called per row only where no C-level operator fits) ------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float)


def _mul(a: Any, b: Any) -> Any:
    # no sequence repetition: "x" * 10**9 would be a memory bomb
    if not (_is_number(a) and _is_number(b)):
        raise TypeError(f"'*' multiplies numbers, got {type(a).__name__} and {type(b).__name__}")
    return a * b


def _format_budget(template: str) -> int:
    """The characters the widths and precisions of ``template`` may add; raises for
    ``*`` (a width taken from the data)."""
    if "%" not in template:
        return 0
    total = 0
    for width, precision in _FORMAT_SPEC.findall(template):
        if width == "*" or precision == "*":
            raise ValueError("'%' formatting with a '*' width or precision is not allowed")
        if width:
            total += int(width)
        if precision:
            total += int(precision)
    return total


def _mod(a: Any, b: Any) -> Any:
    """``%``: modulo for numbers; for a template string from the data, formatting
    whose result is bounded (checked before it is built)."""
    if not isinstance(a, str):
        return a % b
    if _format_budget(a) + len(a) > MAX_STRING:
        raise ValueError(
            f"'%' formatting would build more than {MAX_STRING} characters "
            f"(widths and precisions of the template {a[:40]!r}...)"
        )
    return _bounded(a % b, "%")


def _mod_col(lefts: list[Any], rights: Iterable[Any]) -> list[Any]:
    """``%`` over a column: C's modulo unless a template string is among ``lefts``
    (one ``set(map(type, ...))`` per batch)."""
    if any(issubclass(t, str) for t in set(map(type, lefts))):
        return list(map(_mod, lefts, rights))
    return list(map(operator.mod, lefts, rights))


def _bounded(result: Any, op: str) -> Any:
    if type(result) in (str, list, tuple, bytes) and len(result) > MAX_STRING:
        raise ValueError(f"'{op}' result too large (more than {MAX_STRING} characters or items)")
    return result


def _add_checked(a: Any, b: Any) -> Any:
    return _bounded(a + b, "+")


def _pow(a: Any, b: Any) -> Any:
    if not (_is_number(a) and _is_number(b)):
        raise TypeError(f"'**' takes numbers, got {type(a).__name__} and {type(b).__name__}")
    if isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > _MAX_POW_BITS:
        raise ValueError(f"'**' result too large (more than {_MAX_POW_BITS} bits)")
    return a**b


class _NoField(KeyError):
    """A pydantic model has no field of that name (a KeyError, as a mapping's)."""

    def __init__(self, key: Any, model: type[BaseModel]) -> None:
        super().__init__(key)
        self.model = model


#: Per pydantic model class, the names an expression may read: fields and computed fields.
_MODEL_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def _model_has(model: BaseModel, key: Any) -> bool:
    cls = type(model)
    names = _MODEL_FIELDS.get(cls)
    if names is None:
        names = frozenset(cls.model_fields) | frozenset(cls.model_computed_fields)
        if len(_MODEL_FIELDS) < 4096:  # bounded: classes made at run time do not grow it
            _MODEL_FIELDS[cls] = names
    if key in names:
        return True
    extra = model.__pydantic_extra__
    return extra is not None and isinstance(key, str) and key in extra


def _field(obj: Any, key: Any) -> Any:
    """``obj[key]``, or the field ``key`` of a pydantic model (its field names,
    computed fields and extra fields; nothing else)."""
    if type(obj) is dict or not isinstance(obj, BaseModel):
        return obj[key]
    if _model_has(obj, key):
        return getattr(obj, key)
    raise _NoField(key, type(obj))


def _getter(key: Any) -> Callable[[Any], Any]:
    return lambda obj: _field(obj, key)


def _column_getter(key: Any) -> Callable[[_Rows], list[Any]]:
    """A field of every object of a column: in C (``attrgetter``) when they are all
    of one pydantic model class that has the field, else :func:`_field` per object."""
    one = _getter(key)
    attr = attrgetter(key) if isinstance(key, str) else None

    def column(objs: _Rows) -> list[Any]:
        classes = set(map(type, objs))
        if attr is not None and len(classes) == 1:
            (cls,) = classes
            if cls is not dict and issubclass(cls, BaseModel):
                names = _MODEL_FIELDS.get(cls)
                if names is not None and key in names:
                    return list(map(attr, objs))
        return list(map(one, objs))

    return column


def _contains(container: Any, item: Any) -> bool:
    if type(container) is not dict and isinstance(container, BaseModel):
        # a model iterates over (name, value) pairs: refuse, the model-aware form retries
        raise TypeError(f"'in' of a {type(container).__name__} model")
    return item in container


def _not_contains(container: Any, item: Any) -> bool:
    return not _contains(container, item)


def _contains_any(container: Any, item: Any) -> bool:
    """``in``: a pydantic model contains the names of its fields."""
    if isinstance(container, BaseModel):
        return _model_has(container, item)
    return item in container


def _not_contains_any(container: Any, item: Any) -> bool:
    return not _contains_any(container, item)


def _get(container: Any, key: Any, default: Any = None) -> Any:
    try:
        return container[key]
    except (KeyError, IndexError):
        return default


def _get_any(container: Any, key: Any, default: Any = None) -> Any:
    try:
        return _field(container, key)
    except (KeyError, IndexError):
        return default


def _lower(s: str) -> str:
    return s.lower()


def _upper(s: str) -> str:
    return s.upper()


def _startswith(s: str, prefix: str) -> bool:
    return s.startswith(prefix)


def _endswith(s: str, suffix: str) -> bool:
    return s.endswith(suffix)


def _int(x: Any) -> int:
    return int(x)


def _float(x: Any) -> float:
    return float(x)


def _str(x: Any) -> str:
    if not isinstance(x, str | int | float | bool) and x is not None:
        raise TypeError(f"str() takes a scalar, got {type(x).__name__}")
    return str(x)


#: Functions an expression may call: name -> (function, min args, max args, returns bool).
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int, bool]] = {
    "len": (len, 1, 1, False),
    "abs": (abs, 1, 1, False),
    "min": (min, 1, 8, False),
    "max": (max, 1, 8, False),
    "round": (round, 1, 2, False),
    "int": (_int, 1, 1, False),
    "float": (_float, 1, 1, False),
    "str": (_str, 1, 1, False),
    "bool": (bool, 1, 1, True),
    "lower": (_lower, 1, 1, False),
    "upper": (_upper, 1, 1, False),
    "startswith": (_startswith, 2, 2, True),
    "endswith": (_endswith, 2, 2, True),
    "get": (_get, 2, 3, False),
}

_CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}

_BINARY: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", _mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", _mod),
    ast.Pow: ("**", _pow),
}

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}

# syntax other languages use, with the spelling this one wants
_HINTS = {"&&": "and", "||": "or", "===": "==", "!=": "", "!": "not"}


class _Node:
    """One compiled node: its row and column forms; ``const`` holds a literal's value."""

    __slots__ = ("boolean", "col", "const", "is_const", "row", "var")

    def __init__(
        self,
        row: _Row,
        col: _Col,
        *,
        boolean: bool = False,
        is_const: bool = False,
        const: Any = None,
        var: int | None = None,
    ) -> None:
        self.row = row
        self.col = col
        self.boolean = boolean  # always gives a bool
        self.is_const = is_const
        self.const = const
        self.var = var  # a variable itself: its index in _VARIABLE_ORDER


class _Columns(Collection[Any]):
    """An event expression's batch: the values, keys and times columns (``None``
    columns read as all ``None``). Iterating gives ``(value, key, time)`` rows, what
    the row form takes, so a column form's row-by-row retry works unchanged."""

    __slots__ = ("keys", "times", "values")

    def __init__(
        self,
        values: list[Any],
        keys: list[Hashable] | None,
        times: list[float | None] | None,
    ) -> None:
        n = len(values)
        for label, column in (("keys", keys), ("times", times)):
            if column is not None and len(column) != n:
                raise ValueError(f"{len(column)} {label} for {n} values")
        self.values = values
        self.keys: list[Any] = [None] * n if keys is None else keys
        self.times: list[Any] = [None] * n if times is None else times

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        return zip(self.values, self.keys, self.times, strict=True)

    def __contains__(self, row: object) -> bool:
        return any(row == r for r in self)


def _not_given(text: str, names: frozenset[str]) -> tuple[_Row, _Col]:
    """The value-only forms of an event expression: they cannot run without key/time."""
    missing = " and ".join(n for n in _VARIABLE_ORDER if n in names and n in _EVENT_VARIABLES)
    error = ExpressionEvaluationError(
        text,
        f"it reads the event's {missing}, but only the value was given; "
        "evaluate it with evaluate_event(value, key, time) or "
        "evaluate_events(values, keys, times)",
    )

    def row(_v: Any) -> Any:
        raise error

    def col(_vs: _Rows) -> list[Any]:
        raise error

    return row, col


def _unused(_v: Any) -> Any:  # pragma: no cover - replaced by the event compilation
    raise AssertionError("an event variable compiled for values only")


def _constant(c: Any) -> _Node:
    return _Node(
        lambda _v: c,
        lambda vs: [c] * len(vs),
        boolean=isinstance(c, bool),
        is_const=True,
        const=c,
    )


def _rowwise(row: _Row, col: _Col) -> _Col:
    """The column form, retried row by row if it raises (a guard such as
    ``"px" in value and value.px > 1`` skips rows the vectorised form does not)."""

    def run(vs: _Rows) -> list[Any]:
        try:
            return col(vs)
        except Exception:
            return [row(v) for v in vs]

    return run


class _Compiler:
    def __init__(
        self,
        text: str,
        offset: int,
        line_starts: list[int],
        *,
        variables: frozenset[str] = VARIABLES,
        event: bool = False,
        models: bool = False,
    ) -> None:
        self.text = text
        self.offset = offset
        self.line_starts = line_starts
        self.names: set[str] = set()
        self.variables = variables  # the variables this expression may read
        # compiling for (value, key, time) rows and _Columns rather than for values
        self.event = event
        # lookups that also read pydantic models (the second compilation)
        self.models = models
        # whether any node looks up a field (else the model-aware forms are the same)
        self.lookups = False

    def column(self, node: ast.AST, *, end: bool = False) -> int | None:
        """The 0-based character offset in the text of ``node``'s start (or end)."""
        lineno: int | None = getattr(node, "end_lineno" if end else "lineno", None)
        col_offset: int | None = getattr(node, "end_col_offset" if end else "col_offset", None)
        if lineno is None or col_offset is None:
            return None
        line = self.line_starts[min(lineno, len(self.line_starts)) - 1]
        # col_offset counts UTF-8 bytes; the column counts characters
        prefix = self.text[self.offset + line :].encode()[:col_offset]
        return self.offset + line + len(prefix.decode(errors="ignore"))

    def error(
        self, node: ast.AST | None, reason: str, *, after: ast.AST | None = None
    ) -> ExpressionError:
        """An :class:`ExpressionError` at ``node``, or at the first character after ``after``."""
        column = None
        if after is not None:
            column = self.column(after, end=True)
            if column is not None:
                while column < len(self.text) and self.text[column] in " \t\n()":
                    column += 1
        elif node is not None:
            column = self.column(node)
        return ExpressionError(self.text, reason, column)

    def compile(self, node: ast.AST, depth: int = 0) -> _Node:
        if depth > _MAX_DEPTH:
            raise self.error(node, f"nested deeper than {_MAX_DEPTH} levels")
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.error(node, f"{_describe(node)} is not allowed in an expression")
        result: _Node = method(node, depth + 1)
        return result

    # -- leaves ----------------------------------------------------------------------------

    def _Constant(self, node: ast.Constant, depth: int) -> _Node:
        if not isinstance(node.value, str | int | float | bool) and node.value is not None:
            raise self.error(node, f"{type(node.value).__name__} literals are not allowed")
        return _constant(node.value)

    def _Name(self, node: ast.Name, depth: int) -> _Node:
        if node.id in _CONSTANTS:
            return _constant(_CONSTANTS[node.id])
        listed = ", ".join(n for n in _VARIABLE_ORDER if n in self.variables)
        if node.id not in VARIABLES:
            hint = ""
            if node.id in FUNCTIONS:
                hint = f"; {node.id} is a function: call it, {node.id}(...)"
            elif not node.id.startswith("_"):
                hint = f"; for the field {node.id!r} of the event value write value.{node.id}"
            raise self.error(node, f"unknown name {node.id!r}: the variables are {listed}" + hint)
        if node.id not in self.variables:
            raise self.error(
                node,
                f"the event's {node.id} is not available here: the variables here are {listed}"
                + f"; for the field {node.id!r} of the event value write value.{node.id}",
            )
        self.names.add(node.id)
        index = _VARIABLE_ORDER.index(node.id)
        if self.event:
            column = attrgetter(("values", "keys", "times")[index])
            return _Node(itemgetter(index), lambda c: list(column(c)), var=index)
        if index:
            return _Node(_unused, _unused, var=index)  # compiled again as an event expression
        return _Node(lambda v: v, list, var=0)

    # -- field access ----------------------------------------------------------------------

    def _lookup(self, obj: _Node, key: Any) -> _Node:
        self.lookups = True
        get = _getter(key) if self.models else itemgetter(key)
        if obj.var is not None and self.event:  # a variable of an event expression
            index = obj.var
            column = attrgetter(("values", "keys", "times")[index])
            if self.models:
                many = _column_getter(key)
                return _Node(lambda e: get(e[index]), lambda c: many(list(column(c))))
            return _Node(lambda e: e[index][key], lambda c: list(map(get, column(c))))
        if obj.var == 0:  # the value itself
            if self.models:
                return _Node(get, _column_getter(key))
            return _Node(get, lambda vs: list(map(get, vs)))
        orow, ocol = obj.row, obj.col
        if self.models:
            many = _column_getter(key)
            return _Node(lambda v: get(orow(v)), lambda vs: many(ocol(vs)))
        return _Node(lambda v: orow(v)[key], lambda vs: list(map(get, ocol(vs))))

    def _Attribute(self, node: ast.Attribute, depth: int) -> _Node:
        if node.attr.startswith("__"):
            raise self.error(
                node,
                f"field names starting with '__' are not allowed: {node.attr}",
                after=node.value,
            )
        obj = self.compile(node.value, depth)
        return self._lookup(obj, node.attr)

    def _Subscript(self, node: ast.Subscript, depth: int) -> _Node:
        obj = self.compile(node.value, depth)
        if isinstance(node.slice, ast.Slice):
            raise self.error(node.slice, "slices are not allowed; index with one key or number")
        index = self.compile(node.slice, depth)
        if index.is_const:
            if isinstance(index.const, str) and index.const.startswith("__"):
                raise self.error(node.slice, "field names starting with '__' are not allowed")
            return self._lookup(obj, index.const)
        self.lookups = True
        orow, ocol, irow, icol = obj.row, obj.col, index.row, index.col
        item = _field if self.models else operator.getitem
        return _Node(
            lambda v: item(orow(v), irow(v)),
            lambda vs: list(map(item, ocol(vs), icol(vs))),
        )

    # -- operators -------------------------------------------------------------------------

    def _BinOp(self, node: ast.BinOp, depth: int) -> _Node:
        entry = _BINARY.get(type(node.op))
        if entry is None:
            allowed = " ".join(symbol for symbol, _ in _BINARY.values())
            raise self.error(
                node,
                f"operator {_describe(node.op)} is not allowed; use {allowed}",
                after=node.left,
            )
        fn = entry[1]
        left = self.compile(node.left, depth)
        right = self.compile(node.right, depth)
        if fn is _mod:
            fn = self._mod_for(node, left)
            if fn is _mod:  # the template comes from the data: checked, in C when numbers
                lrow, lcol, rrow, rcol = left.row, left.col, right.row, right.col
                if right.is_const:
                    c = right.const
                    return _Node(
                        lambda v: _mod(lrow(v), c),
                        lambda vs: _mod_col(lcol(vs), repeat(c, len(vs))),
                    )
                return _Node(
                    lambda v: _mod(lrow(v), rrow(v)), lambda vs: _mod_col(lcol(vs), rcol(vs))
                )
        elif fn is operator.add and _add_terms(node) > _ADD_TERMS_UNCHECKED:
            fn = _add_checked  # a long chain could repeat a large input many times
        return self._binary(fn, left, right)

    def _mod_for(self, node: ast.BinOp, left: _Node) -> Callable[[Any, Any], Any]:
        """``%`` as C's modulo where the template is a constant whose widths were
        checked here; the checking ``_mod`` where it comes from the data."""
        if not left.is_const:
            return _mod
        if isinstance(left.const, str):
            try:
                budget = _format_budget(left.const)
            except ValueError as error:
                raise self.error(node, str(error)) from None
            if budget + len(left.const) > MAX_STRING:
                raise self.error(
                    node, f"'%' formatting would build more than {MAX_STRING} characters"
                )
            # what the arguments add is bounded by the (bounded) inputs
            return operator.mod
        return operator.mod

    @staticmethod
    def _binary(
        fn: Callable[[Any, Any], Any], left: _Node, right: _Node, boolean: bool = False
    ) -> _Node:
        lrow, lcol, rrow, rcol = left.row, left.col, right.row, right.col
        if right.is_const:
            c = right.const
            return _Node(
                lambda v: fn(lrow(v), c),
                lambda vs: list(map(fn, lcol(vs), repeat(c, len(vs)))),
                boolean=boolean,
            )
        if left.is_const:
            k = left.const
            return _Node(
                lambda v: fn(k, rrow(v)),
                lambda vs: list(map(fn, repeat(k, len(vs)), rcol(vs))),
                boolean=boolean,
            )
        return _Node(
            lambda v: fn(lrow(v), rrow(v)),
            lambda vs: list(map(fn, lcol(vs), rcol(vs))),
            boolean=boolean,
        )

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> _Node:
        operand = self.compile(node.operand, depth)
        orow, ocol = operand.row, operand.col
        fn: Callable[[Any], Any]
        if isinstance(node.op, ast.Not):
            return _Node(
                lambda v: not orow(v),
                lambda vs: list(map(operator.not_, ocol(vs))),
                boolean=True,
            )
        if isinstance(node.op, ast.USub):
            fn = operator.neg
        elif isinstance(node.op, ast.UAdd):
            fn = operator.pos
        else:
            raise self.error(node, f"operator {_describe(node.op)} is not allowed; use not, -, +")
        return _Node(lambda v: fn(orow(v)), lambda vs: list(map(fn, ocol(vs))))

    def _Compare(self, node: ast.Compare, depth: int) -> _Node:
        operands = [self.compile(node.left, depth)]
        operands += [self.compile(c, depth) for c in node.comparators]
        steps: list[_Node] = []
        sources = [node.left, *node.comparators]
        for op, left, right, left_ast in zip(
            node.ops, operands, operands[1:], sources, strict=False
        ):
            if isinstance(op, ast.In | ast.NotIn):
                self.lookups = True
                if self.models:
                    fn = _contains_any if isinstance(op, ast.In) else _not_contains_any
                else:
                    fn = _contains if isinstance(op, ast.In) else _not_contains
                # container first, so a literal container can be the constant argument
                swapped = self._binary(fn, right, left, boolean=True)
                steps.append(swapped)
                continue
            cmp = _COMPARE.get(type(op))
            if cmp is None:
                raise self.error(
                    node,
                    f"comparison {_describe(op)} is not allowed; use == != < <= > >= in",
                    after=left_ast,
                )
            steps.append(self._binary(cmp, left, right, boolean=True))
        if len(steps) == 1:
            return steps[0]
        return self._all(steps)  # a < b < c: both hold (middle operands computed per step)

    @staticmethod
    def _all(steps: list[_Node]) -> _Node:
        rows = [s.row for s in steps]
        cols = [s.col for s in steps]

        def row(v: Any) -> Any:
            result: Any = True
            for r in rows:
                result = r(v)
                if not result:
                    return result
            return result

        def col(vs: _Rows) -> list[Any]:
            results = cols[0](vs)
            for c in cols[1:]:
                results = [b if a else a for a, b in zip(results, c(vs), strict=True)]
            return results

        return _Node(row, _rowwise(row, col), boolean=all(s.boolean for s in steps))

    def _BoolOp(self, node: ast.BoolOp, depth: int) -> _Node:
        parts = [self.compile(v, depth) for v in node.values]
        rows = [p.row for p in parts]
        cols = [p.col for p in parts]
        boolean = all(p.boolean for p in parts)
        is_and = isinstance(node.op, ast.And)

        if is_and:

            def row(v: Any) -> Any:
                result: Any = True
                for r in rows:
                    result = r(v)
                    if not result:
                        return result
                return result

        else:

            def row(v: Any) -> Any:
                result: Any = False
                for r in rows:
                    result = r(v)
                    if result:
                        return result
                return result

        if len(rows) == 2:
            r0, r1 = rows
            # two operands, the common case, without the loop
            row = (lambda v: r0(v) and r1(v)) if is_and else (lambda v: r0(v) or r1(v))

        if boolean:
            # bool & bool is the same as bool and bool, and runs in C
            combine = operator.and_ if is_and else operator.or_

            def col(vs: _Rows) -> list[Any]:
                results = cols[0](vs)
                for c in cols[1:]:
                    results = list(map(combine, results, c(vs)))
                return results

        elif is_and:

            def col(vs: _Rows) -> list[Any]:
                results = cols[0](vs)
                for c in cols[1:]:
                    results = [b if a else a for a, b in zip(results, c(vs), strict=True)]
                return results

        else:

            def col(vs: _Rows) -> list[Any]:
                results = cols[0](vs)
                for c in cols[1:]:
                    results = [a if a else b for a, b in zip(results, c(vs), strict=True)]
                return results

        return _Node(row, _rowwise(row, col), boolean=boolean)

    def _IfExp(self, node: ast.IfExp, depth: int) -> _Node:
        test = self.compile(node.test, depth)
        body = self.compile(node.body, depth)
        orelse = self.compile(node.orelse, depth)
        trow, brow, erow = test.row, body.row, orelse.row
        tcol, bcol, ecol = test.col, body.col, orelse.col

        def row(v: Any) -> Any:
            return brow(v) if trow(v) else erow(v)

        def col(vs: _Rows) -> list[Any]:
            return [b if t else e for t, b, e in zip(tcol(vs), bcol(vs), ecol(vs), strict=True)]

        return _Node(row, _rowwise(row, col), boolean=body.boolean and orelse.boolean)

    # -- calls and literals ----------------------------------------------------------------

    def _Call(self, node: ast.Call, depth: int) -> _Node:
        if not isinstance(node.func, ast.Name):
            raise self.error(
                node.func,
                "only the functions "
                + ", ".join(sorted(FUNCTIONS))
                + " can be called, as name(args); methods are not (write lower(x), not x.lower())",
                after=node.func.value if isinstance(node.func, ast.Attribute) else None,
            )
        entry = FUNCTIONS.get(node.func.id)
        if entry is None:
            raise self.error(
                node.func,
                f"unknown function {node.func.id!r}: the functions are "
                + ", ".join(sorted(FUNCTIONS)),
            )
        fn, low, high, boolean = entry
        if fn is _get:
            self.lookups = True
            if self.models:
                fn = _get_any
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.error(node, f"{node.func.id}() takes positional arguments only")
        if not low <= len(node.args) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            raise self.error(
                node, f"{node.func.id}() takes {count} arguments, got {len(node.args)}"
            )
        args = [self.compile(a, depth) for a in node.args]
        if len(args) == 1:
            arow, acol = args[0].row, args[0].col
            return _Node(lambda v: fn(arow(v)), lambda vs: list(map(fn, acol(vs))), boolean=boolean)
        if len(args) == 2:
            return self._binary(fn, args[0], args[1], boolean=boolean)
        rows = [a.row for a in args]
        cols = [a.col for a in args]
        return _Node(
            lambda v: fn(*[r(v) for r in rows]),
            lambda vs: list(map(fn, *[c(vs) for c in cols])),
            boolean=boolean,
        )

    def _sequence(self, elts: list[ast.expr], depth: int) -> _Node:
        parts = [self.compile(e, depth) for e in elts]
        if any(isinstance(e, ast.Starred) for e in elts):
            raise self.error(elts[0], "unpacking (*x) is not allowed")
        rows = [p.row for p in parts]
        cols = [p.col for p in parts]
        if not parts:
            return _Node(lambda _v: [], lambda vs: [[] for _ in vs])
        return _Node(
            lambda v: [r(v) for r in rows],
            lambda vs: list(map(list, zip(*[c(vs) for c in cols], strict=True))),
        )

    def _List(self, node: ast.List, depth: int) -> _Node:
        return self._sequence(node.elts, depth)

    def _Tuple(self, node: ast.Tuple, depth: int) -> _Node:
        return self._sequence(node.elts, depth)  # results are plain lists

    def _Dict(self, node: ast.Dict, depth: int) -> _Node:
        if any(k is None for k in node.keys):
            raise self.error(node, "unpacking (**x) is not allowed in a mapping")
        keys = [self.compile(k, depth) for k in node.keys if k is not None]
        values = [self.compile(v, depth) for v in node.values]
        if all(k.is_const for k in keys):
            names = tuple(k.const for k in keys)
            vrows = [v.row for v in values]
            vcols = [v.col for v in values]
            if not values:
                return _Node(lambda _v: {}, lambda vs: [{} for _ in vs])
            return _Node(
                lambda v: dict(zip(names, [r(v) for r in vrows], strict=True)),
                lambda vs: [
                    dict(zip(names, row, strict=True))
                    for row in zip(*[c(vs) for c in vcols], strict=True)
                ],
            )
        pairs = [(k.row, v.row) for k, v in zip(keys, values, strict=True)]

        def row(v: Any) -> Any:
            return {k(v): x(v) for k, x in pairs}

        return _Node(row, lambda vs: [row(v) for v in vs])


def _describe(node: ast.AST) -> str:
    names = {
        "ListComp": "a list comprehension",
        "DictComp": "a dict comprehension",
        "SetComp": "a set comprehension",
        "GeneratorExp": "a generator expression",
        "Lambda": "a lambda",
        "NamedExpr": "an assignment (:=)",
        "JoinedStr": "an f-string",
        "Set": "a set literal",
        "Await": "await",
        "Yield": "yield",
        "Starred": "unpacking (*x)",
        "BitAnd": "'&'",
        "BitOr": "'|'",
        "BitXor": "'^'",
        "LShift": "'<<'",
        "RShift": "'>>'",
        "MatMult": "'@'",
        "Invert": "'~'",
        "Is": "'is'",
        "IsNot": "'is not'",
    }
    return names.get(type(node).__name__, type(node).__name__)


class Expression:
    """A compiled expression: call it on one event value, or :meth:`evaluate_many` on a
    batch's values; an expression reading the event's ``key`` or ``time``
    (:attr:`uses_event`) is evaluated with :meth:`evaluate_event` or
    :meth:`evaluate_events`. Build with :func:`compile_expression`."""

    __slots__ = ("_col", "_ecol", "_erow", "_models", "_names", "_row", "kind", "text")

    def __init__(
        self,
        text: str,
        kind: Literal["predicate", "value"],
        node: _Node,
        names: frozenset[str],
        event: _Node | None = None,
        *,
        models: Callable[[], tuple[_Node, _Node | None]] | None = None,
    ) -> None:
        self.text = text
        self.kind = kind
        self._names = names
        self._row, self._col, self._erow, self._ecol = _all_forms(text, kind, node, names, event)
        # the forms whose lookups also read pydantic models, or what compiles them
        # (None: the expression looks nothing up, or uses them already)
        self._models: Callable[[], tuple[_Node, _Node | None]] | _Forms | None = models

    @property
    def uses_event(self) -> bool:
        """Whether the expression reads the event's ``key`` or ``time`` (then it needs
        :meth:`evaluate_event` / :meth:`evaluate_events`, not a value alone)."""
        return self._erow is not None

    def _again(self, error: Exception, run: Callable[[_Forms], Any]) -> Any:
        """``run`` with the model-aware forms after the mapping forms failed with
        ``error``; if they succeed, models flow here: keep them from now on. (The
        callers build ``run`` in their except clause only, so the variables it reads
        are not closure cells on the fast path.)"""
        models = self._models
        if models is None:
            raise _runtime_error(self.text, error) from error
        if callable(models):  # compiled on the first failure, then kept
            node, event = models()
            models = self._models = _all_forms(self.text, self.kind, node, self._names, event)
        forms = models
        try:
            result = run(forms)
        except Exception as again:
            raise _runtime_error(self.text, again) from again
        self._row, self._col, self._erow, self._ecol = forms
        self._models = None
        return result

    def __call__(self, value: Any) -> Any:
        """The expression's result for one event value.

        Raises :class:`ExpressionEvaluationError` when it fails on this value, or when
        the expression reads ``key`` or ``time`` (:attr:`uses_event`).
        """
        try:
            return self._row(value)
        except Exception as error:
            return self._again(error, _run_row(value))

    def evaluate_many(self, values: list[Any]) -> list[Any]:
        """The results for a whole batch, equal to ``[self(v) for v in values]``.

        Raises :class:`ExpressionEvaluationError` if it fails on any value (then
        evaluate row by row to find which), or if the expression reads ``key`` or ``time``.
        """
        try:
            return self._col(values)
        except Exception as error:
            results: list[Any] = self._again(error, _run_many(values))
            return results

    def evaluate_event(self, value: Any, key: Any, time: float | None) -> Any:
        """The result for one event: its value, key and time (``None`` when it has none).
        An expression that reads only ``value`` ignores ``key`` and ``time``."""
        try:
            if self._erow is None:
                return self._row(value)
            return self._erow((value, key, time))
        except Exception as error:
            return self._again(error, _run_event(value, key, time))

    def evaluate_events(
        self,
        values: list[Any],
        keys: list[Hashable] | None,
        times: list[float | None] | None,
    ) -> list[Any]:
        """The results for a batch's columns (``keys``/``times`` ``None``: every event has
        none, as in :class:`~rxagent.events.Batch`), equal to :meth:`evaluate_event` row by
        row, or raising :class:`ExpressionEvaluationError` if any row fails. An expression
        that reads only ``value`` costs what :meth:`evaluate_many` does."""
        try:
            if self._ecol is None:
                return self._col(values)
            return self._ecol(_Columns(values, keys, times))
        except Exception as error:
            results: list[Any] = self._again(error, _run_events(values, keys, times))
            return results

    def names(self) -> frozenset[str]:
        """The variables the expression reads (a subset of :data:`VARIABLES`)."""
        return self._names

    def __repr__(self) -> str:
        return f"<expression {self.text!r}>"


# How each entry point runs a set of forms (for Expression._again): built by a function
# so that the entry points' own variables never become closure cells (a cost per call).


def _run_row(value: Any) -> Callable[[_Forms], Any]:
    return lambda f: f[0](value)


def _run_many(values: list[Any]) -> Callable[[_Forms], Any]:
    return lambda f: f[1](values)


def _run_event(value: Any, key: Any, time: float | None) -> Callable[[_Forms], Any]:
    return lambda f: f[0](value) if f[2] is None else f[2]((value, key, time))


def _run_events(
    values: list[Any], keys: list[Hashable] | None, times: list[float | None] | None
) -> Callable[[_Forms], Any]:
    return lambda f: f[1](values) if f[3] is None else f[3](_Columns(values, keys, times))


def _all_forms(
    text: str,
    kind: Literal["predicate", "value"],
    node: _Node,
    names: frozenset[str],
    event: _Node | None,
) -> _Forms:
    if event is None:
        row, col = _forms(kind, node)
        return row, col, None, None
    # reads key or time: the value-only forms cannot run, the event forms do
    erow, ecol = _forms(kind, event)
    row, col = _not_given(text, names)
    return row, col, erow, ecol


def _forms(kind: Literal["predicate", "value"], node: _Node) -> tuple[_Row, _Col]:
    """The row and column forms of the top node; a predicate's results made bools."""
    row, col = node.row, node.col
    if kind == "predicate" and not node.boolean:
        raw_row, raw_col = row, col
        row = lambda v: bool(raw_row(v))  # noqa: E731
        col = lambda vs: list(map(bool, raw_col(vs)))  # noqa: E731
    return row, col


def _add_terms(node: ast.BinOp) -> int:
    """The non-constant terms of the ``+`` chain ``node`` heads."""
    count = 0
    todo: list[ast.expr] = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, ast.BinOp) and isinstance(item.op, ast.Add):
            todo.append(item.left)
            todo.append(item.right)
        elif not isinstance(item, ast.Constant):
            count += 1
    return count


def _runtime_error(text: str, error: Exception) -> ExpressionEvaluationError:
    if isinstance(error, ExpressionEvaluationError):
        return error
    if isinstance(error, _NoField):
        fields = ", ".join(error.model.model_fields)
        reason = f"{error.model.__name__} has no field {error.args[0]!r} (its fields: {fields})"
    elif isinstance(error, KeyError):
        reason = f"no field {error.args[0]!r}" if error.args else "missing field"
    elif isinstance(error, IndexError):
        reason = "index out of range"
    elif isinstance(error, ZeroDivisionError):
        reason = "division by zero"
    elif isinstance(error, TypeError | ValueError | OverflowError):
        reason = str(error)
    else:
        reason = f"{type(error).__name__}: {error}"
    return ExpressionEvaluationError(text, reason)


def compile_expression(
    text: str,
    *,
    kind: Literal["predicate", "value"] = "value",
    variables: frozenset[str] | set[str] | None = None,
) -> Expression:
    """Parse and check ``text`` once; the result evaluates it per value or per batch.

    ``kind="predicate"`` makes every result a ``bool`` (by truthiness, as ``filter``
    treats a lambda's result). ``variables`` (default :data:`VARIABLES`) are the ones
    the caller can give: ``{"value"}`` refuses ``key`` and ``time`` at compile time.
    Raises :class:`ExpressionError` for syntax errors, unknown or unavailable
    variables, unknown functions, and constructs the language leaves out.
    """
    if not isinstance(text, str):
        raise ExpressionError(repr(text), f"an expression is a string, got {type(text).__name__}")
    if kind not in ("predicate", "value"):
        raise ExpressionError(text, f"kind must be 'predicate' or 'value', got {kind!r}")
    if len(text) > MAX_LENGTH:
        # redacted before it is cut: a secret's prefix must not show
        raise ExpressionError(redact(text)[:40] + "...", f"longer than {MAX_LENGTH} characters")
    stripped = text.lstrip()
    offset = len(text) - len(stripped)
    if not stripped.strip():
        raise ExpressionError(text, "empty expression; expected e.g. value.px > 100", 0)
    line_starts = [0]
    for i, ch in enumerate(stripped):
        if ch == "\n":
            line_starts.append(i + 1)
    try:
        # parenthesised so that an expression may span lines (YAML block scalars)
        tree = ast.parse("(" + stripped + "\n)", mode="eval")
    except SyntaxError as error:
        raise _syntax_error(text, stripped, offset, line_starts, error) from None
    except (RecursionError, MemoryError, ValueError) as error:
        raise ExpressionError(text, f"cannot be parsed: {error}") from None
    # the parenthesis shifts line 1 by one column: undo it for error positions
    _shift_first_line(tree)
    allowed = VARIABLES if variables is None else frozenset(variables)
    if not allowed <= VARIABLES or "value" not in allowed:
        raise ExpressionError(
            text, f"variables must include 'value' and be among {sorted(VARIABLES)}, got {allowed}"
        )

    def compiled(models: bool) -> tuple[_Node, _Node | None, _Compiler]:
        compiler = _Compiler(text, offset, line_starts, variables=allowed, models=models)
        node = compiler.compile(tree.body)
        event = None
        if compiler.names & _EVENT_VARIABLES:
            # reads key or time: compiled again over (value, key, time) rows and columns, so
            # value-only expressions keep their forms (and their cost) unchanged
            event = _Compiler(
                text, offset, line_starts, variables=allowed, event=True, models=models
            ).compile(tree.body)
        return node, event, compiler

    try:
        node, event, compiler = compiled(False)
    except RecursionError:
        raise ExpressionError(text, f"nested deeper than {_MAX_DEPTH} levels") from None

    def models() -> tuple[_Node, _Node | None]:
        node, event, _ = compiled(True)
        return node, event

    return Expression(
        text,
        kind,
        node,
        frozenset(compiler.names),
        event,
        models=models if compiler.lookups else None,
    )


def _shift_first_line(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) == 1 and hasattr(node, "col_offset"):
            node.col_offset -= 1


def _syntax_error(
    text: str, stripped: str, offset: int, line_starts: list[int], error: SyntaxError
) -> ExpressionError:
    column: int | None = None
    reason = f"invalid syntax ({error.msg})"
    if error.lineno is not None and error.lineno > len(line_starts):
        # the parser reached the closing parenthesis we added: the text ended early
        column = len(text.rstrip())
        reason = "the expression ends too early (an operand or a closing bracket is missing)"
    elif error.lineno is not None and error.offset is not None:
        line = min(max(error.lineno, 1), len(line_starts)) - 1
        col = error.offset - 1 - (1 if line == 0 else 0)  # offset is 1-based; undo "("
        column = min(max(offset + line_starts[line] + col, 0), len(text))
    for token, spelling in _HINTS.items():
        if spelling and token in stripped.replace("!=", "  "):
            at = stripped.replace("!=", "  ").find(token)
            column = offset + at
            reason = f"invalid syntax: {token!r} is not an operator here; write {spelling!r}"
            break
    else:
        reason += "; expected a Python-style expression such as value.px > 100 and value.ok"
    return ExpressionError(text, reason, column)


# -- operators ------------------------------------------------------------------------------


def _as_expression(expr: Expression | str, kind: Literal["predicate", "value"]) -> Expression:
    if isinstance(expr, Expression):
        return expr
    return compile_expression(expr, kind=kind)


def _event_functions(expression: Expression) -> EventFunctions:
    return EventFunctions(expression.evaluate_events, expression.evaluate_event)


def expression_filter(expr: Expression | str, *, name: str | None = None) -> Operator:
    """Keep the events that satisfy ``expr``; like ``ops.filter`` but evaluated
    per batch (:meth:`Expression.evaluate_many`, or :meth:`Expression.evaluate_events`
    with the batch's keys and times when it reads ``key`` or ``time``). Events on which
    the expression fails go to dead letters with the stage name; the others flow on.

    A string is compiled here as a predicate.
    """
    predicate = _as_expression(expr, "predicate")
    if predicate.uses_event:
        return filter_stage(predicate, name, events=_event_functions(predicate))
    return filter_stage(predicate, name, predicate.evaluate_many)


def expression_map(expr: Expression | str, *, name: str | None = None) -> Operator:
    """Replace each event's value by ``expr`` of it (a mapping literal builds a record);
    evaluated per batch, failures dead-lettered per event."""
    fn = _as_expression(expr, "value")
    if fn.uses_event:
        return per_row_stage("map", fn, Batch.with_values, name, events=_event_functions(fn))
    return per_row_stage("map", fn, Batch.with_values, name, fn.evaluate_many)


def expression_key_by(expr: Expression | str, *, name: str | None = None) -> Operator:
    """Set each event's key to ``expr`` of it; evaluated per batch. A result that
    cannot be a key (a list, a mapping) dead-letters that event."""
    fn = _as_expression(expr, "value")

    def scalar_keys(results: list[Any]) -> list[Any]:
        try:
            list(map(hash, results))  # in C; the row-by-row retry says which row
        except TypeError:
            raise ExpressionEvaluationError(fn.text, "a key must be a scalar") from None
        return results

    def scalar_key(result: Any) -> Any:
        try:
            hash(result)
        except TypeError:
            raise ExpressionEvaluationError(
                fn.text, f"a key must be a scalar, got {type(result).__name__}"
            ) from None
        return result

    if fn.uses_event:

        def event_keys(
            values: list[Any], keys: list[Hashable] | None, times: list[float | None] | None
        ) -> list[Any]:
            return scalar_keys(fn.evaluate_events(values, keys, times))

        def event_key(value: Any, key: Any, time: float | None) -> Any:
            return scalar_key(fn.evaluate_event(value, key, time))

        functions = EventFunctions(event_keys, event_key)
        return per_row_stage("key_by", fn, Batch.with_keys, name, events=functions)

    def keys(values: list[Any]) -> list[Any]:
        return scalar_keys(fn.evaluate_many(values))

    def key(value: Any) -> Any:
        return scalar_key(fn(value))

    return per_row_stage("key_by", key, Batch.with_keys, name, keys)
