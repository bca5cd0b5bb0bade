"""Aggregations that windows apply to the values they collected.

An :class:`Aggregation` turns a list of values into one result. The built-ins
take an optional ``field`` (a key or index into each value) and run their loop
in C (``sum``, ``min``, ``max`` over ``map(itemgetter(field), values)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

__all__ = [
    "Aggregation",
    "collect",
    "count",
    "first",
    "last",
    "max_",
    "mean",
    "min_",
    "reduce",
    "resolve_aggregation",
    "sum_",
]


class Aggregation:
    """A named function from a window's list of values to one result.

    Windows take one (``agg=mean("px")``) or a mapping of names to them (the
    window's value is then a dict). Make your own with :func:`reduce`, or with
    ``Aggregation("spread", lambda values: max(values) - min(values))``.

    Args:
        name: how the aggregation shows in reprs and graphs (``mean(px)``).
        fn: the function from the window's list of values to its result.
        pick: optional, with ``of_picked``: the part of each value the aggregation
            reads (``itemgetter("px")`` for ``mean("px")``), such that
            ``fn(values) == of_picked([pick(v) for v in values])``. A window then
            keeps only that part of the values it holds open, not whole values
            (fewer objects alive, so fewer and cheaper garbage collections).
        of_picked: the function from the list of picked parts to the result.
    """

    __slots__ = ("fn", "name", "of_picked", "pick")

    def __init__(
        self,
        name: str,
        fn: Callable[[list[Any]], Any],
        *,
        pick: Callable[[Any], Any] | None = None,
        of_picked: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        if (pick is None) != (of_picked is None):
            raise TypeError(f"aggregation {name!r}: pick and of_picked go together")
        self.name = name
        self.fn = fn
        self.pick = pick
        self.of_picked = of_picked

    def __call__(self, values: list[Any]) -> Any:
        return self.fn(values)

    def __repr__(self) -> str:
        return f"Aggregation({self.name})"


def _over(name: str, field: str | int | None, of_picked: Callable[[list[Any]], Any]) -> Aggregation:
    """A built-in: ``of_picked`` over the values, or over ``value[field]`` of each, which
    is then its ``pick`` (a window may keep that part alone)."""
    if field is None:
        return Aggregation(f"{name}(None)", of_picked)
    pick = itemgetter(field)
    return Aggregation(
        f"{name}({field})",
        lambda values: of_picked(list(map(pick, values))),
        pick=pick,
        of_picked=of_picked,
    )


def count() -> Aggregation:
    """The number of events in the window."""
    return Aggregation("count", len)


def sum_(field: str | int | None = None) -> Aggregation:
    """The sum of the values (or of one field of each); 0 for an empty window.

    Args:
        field: the key or index read from each value (``value[field]``); None
            (default) uses the values themselves.
    """
    return _over("sum", field, sum)


def mean(field: str | int | None = None) -> Aggregation:
    """The arithmetic mean of the values (or of one field of each); None for an
    empty window.

    Args:
        field: the key or index read from each value (``value[field]``); None
            (default) uses the values themselves.
    """
    return _over("mean", field, lambda xs: sum(xs) / len(xs) if xs else None)


def min_(field: str | int | None = None) -> Aggregation:
    """The smallest value (or field of a value); None for an empty window.

    Args:
        field: the key or index read from each value (``value[field]``); None
            (default) uses the values themselves.
    """
    return _over("min", field, lambda xs: min(xs, default=None))


def max_(field: str | int | None = None) -> Aggregation:
    """The largest value (or field of a value); None for an empty window.

    Args:
        field: the key or index read from each value (``value[field]``); None
            (default) uses the values themselves.
    """
    return _over("max", field, lambda xs: max(xs, default=None))


def first(field: str | int | None = None) -> Aggregation:
    """The window's first value in window order (or its field); None when empty.

    The opening price of an OHLC bar, for instance: ``first("px")``.

    Args:
        field: the key or index read from each value (``value[field]``); None
            (default) uses the values themselves.
    """
    return _over("first", field, lambda xs: xs[0] if xs else None)


def last(field: str | int | None = None) -> Aggregation:
    """The window's last value in window order (or its field); None when empty.

    The closing price of an OHLC bar, for instance: ``last("px")``.

    Args:
        field: the key or index read from each value (``value[field]``); None
            (default) uses the values themselves.
    """
    return _over("last", field, lambda xs: xs[-1] if xs else None)


def collect() -> Aggregation:
    """The list of the window's values, in window order (what windows emit by
    default, when given no ``agg``)."""
    return Aggregation("collect", list)


def reduce(fn: Callable[[Any, Any], Any], initial: Any) -> Aggregation:
    """A custom fold: ``fn(acc, value)`` from ``initial`` over the window's values.

    For what the built-ins do not cover, e.g. a volume-weighted price:
    ``reduce(lambda acc, t: (acc[0] + t["px"] * t["qty"], acc[1] + t["qty"]), (0.0, 0))``.

    Args:
        fn: called with the accumulator and each value in window order; returns
            the next accumulator (the last one is the window's result).
        initial: the accumulator before the first value (and an empty window's
            result); shared by every window, so prefer immutable values.
    """

    def run(values: list[Any]) -> Any:
        acc = initial
        for value in values:
            acc = fn(acc, value)
        return acc

    return Aggregation(f"reduce({getattr(fn, '__name__', 'fn')})", run)


def resolve_aggregation(
    agg: Aggregation | Mapping[str, Aggregation] | Callable[[list[Any]], Any],
) -> Aggregation:
    """One aggregation, a mapping of names to aggregations (the result is a dict),
    or a plain function of the window's list of values."""
    if isinstance(agg, Aggregation):
        return agg
    if isinstance(agg, Mapping):
        items = list(agg.items())
        for label, each in items:
            if not isinstance(each, Aggregation):
                raise TypeError(f"aggregation {label!r} must be an Aggregation, got {each!r}")
        return Aggregation(
            "{" + ", ".join(label for label, _ in items) + "}",
            lambda values: {label: each(values) for label, each in items},
        )
    if callable(agg):
        return Aggregation(getattr(agg, "__name__", "custom"), agg)
    raise TypeError(f"agg must be an Aggregation or a mapping of them, got {agg!r}")
