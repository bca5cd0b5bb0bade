"""A trivial operator, written as a user (or a contributor) would add one: this
module, one test module (tests/config/test_derived_kinds.py) and one registry line
(``registry.add(derived("operator", every_nth, shorthand="n"))``) make it a
pipeline-file kind with its reference text and JSON Schema."""

from __future__ import annotations

import itertools

from rxagent import operators as ops


def every_nth(n: int, *, name: str | None = None) -> ops.Operator:
    """Keep every ``n``-th event and drop the others.

    Args:
        n: keep one event in this many (the n-th, the 2n-th, ...).
        name: the stage's name in status and dead letters.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"every_nth: n must be an int >= 1, got {n!r}")
    seen = itertools.count(1)
    return ops.filter(lambda _value: next(seen) % n == 0, name=name or "every_nth")
