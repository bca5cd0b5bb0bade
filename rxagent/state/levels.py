"""An immutable map made of a few plain dicts: what a store's snapshot keeps its entries in.

Each applied batch publishes a new version that shares everything else with the
old one, as a persistent map does; but where a hash array mapped trie (the
``immutables.Map`` the store used before) copies a path of small nodes for every
key written, :class:`Levels` copies whole dicts, rarely: the newest level (at
most :data:`BASE` keys) is copied once per batch, and a level that outgrows its
capacity (``BASE * RATIO**i``) is merged into the one below it, the bottom level
holding everything else. Each key is copied a few times in all (about
``RATIO / 2`` per level, 4 levels at a million keys), in C.

Why (docs/architecture.md, Decision 6, "Many keys"): CPython's cyclic garbage
collector walks every container it tracks, and it runs a full collection each
time the objects that survived young collections reach a quarter of the old
ones. A trie makes a few new nodes per key written (the path copied), each of
which survives into the old generation, so full collections come every few ten
thousand writes; and walking a trie visits keys and entries in hash order, a
cache miss each. At 300k keys the garbage collector took 15 s of a 9 s CPU run
(wall, two shared cores): 30 µs per key written, growing with the store. Dicts
are a handful of tracked objects, walked in insertion order.

A level is never changed after it was published, so readers on any thread read
a version whole. Above the bottom level a deleted key is :data:`GONE`.
"""

from __future__ import annotations

from collections.abc import Hashable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, Final, Generic, TypeVar, overload

__all__ = ["BASE", "GONE", "RATIO", "Levels"]

_V = TypeVar("_V")
_D = TypeVar("_D")

#: Most keys the newest level holds (copied once per batch).
BASE: Final = 2048
#: How much larger each level may grow than the one above it.
RATIO: Final = 8


class _Gone:
    def __repr__(self) -> str:
        return "GONE"


#: A key deleted, in a level above the bottom one.
GONE: Final[Any] = _Gone()
_MISSING: Final[Any] = object()


class Levels(Mapping[Hashable, _V], Generic[_V]):
    """An immutable mapping: plain dicts, newest first (see the module docstring).
    :meth:`updated` returns a new version."""

    __slots__ = ("_len", "_levels")

    def __init__(self, items: Mapping[Hashable, _V] | None = None) -> None:
        bottom = {} if items is None else dict(items)
        self._levels: tuple[dict[Hashable, Any], ...] = ({}, bottom)
        self._len = len(bottom)

    @classmethod
    def _of(cls, levels: tuple[dict[Hashable, Any], ...], length: int) -> Levels[_V]:
        new: Levels[_V] = cls.__new__(cls)
        new._levels = levels
        new._len = length
        return new

    # -- reading ------------------------------------------------------------------------

    @overload
    def get(self, key: Hashable, /) -> _V | None: ...
    @overload
    def get(self, key: Hashable, default: _V | _D, /) -> _V | _D: ...
    def get(self, key: Hashable, default: Any = None) -> Any:
        for level in self._levels:
            value = level.get(key, _MISSING)
            if value is not _MISSING:
                return default if value is GONE else value
        return default

    def __getitem__(self, key: Hashable) -> _V:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        result: _V = value
        return result

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def dicts(self) -> tuple[dict[Hashable, Any], ...]:
        """The levels, newest first, for a writer's inlined lookups: the first level
        holding a key has its value (:data:`GONE`: deleted); never change them."""
        return self._levels

    def __len__(self) -> int:
        return self._len

    def to_dict(self) -> dict[Hashable, _V]:
        """Every key and value as a new plain dict (O(size), mostly in C)."""
        levels = self._levels
        merged = levels[-1].copy()
        upper = levels[:-1]
        for level in reversed(upper):
            merged.update(level)
        for level in upper:
            for key, value in level.items():
                if value is GONE and merged.get(key, _MISSING) is GONE:
                    del merged[key]
        return merged

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.to_dict())

    def keys(self) -> KeysView[Hashable]:
        return self.to_dict().keys()

    def items(self) -> ItemsView[Hashable, _V]:
        return self.to_dict().items()

    def values(self) -> ValuesView[_V]:
        return self.to_dict().values()

    def __repr__(self) -> str:
        return f"Levels({self._len} keys, level sizes {[len(x) for x in self._levels]})"

    # -- writing ------------------------------------------------------------------------

    def updated(
        self, changes: Mapping[Hashable, Any], length: int, *, own: bool = False
    ) -> Levels[_V]:
        """A new version: ``changes`` (value, or :data:`GONE` to delete) over this one,
        holding ``length`` keys (the caller counts what it added and deleted).
        ``own``: ``changes`` is a dict the caller gives away (never changes again),
        which may become a level as it is."""
        levels = list(self._levels)
        if own and not levels[0] and type(changes) is dict:
            top = changes
        else:
            top = levels[0].copy()
            top.update(changes)
        levels[0] = top
        i = 0
        while i < len(levels) - 1 and len(levels[i]) > BASE * RATIO**i:
            upper = levels[i]
            if i + 1 == len(levels) - 1 and len(levels[-1]) > BASE * RATIO ** (i + 1):
                # the bottom is much larger: the full level becomes a level above it
                levels.insert(i + 1, upper)
            else:
                merged = levels[i + 1].copy()
                merged.update(upper)
                if i + 1 == len(levels) - 1:  # the bottom keeps no deleted keys
                    for key, value in upper.items():
                        if value is GONE:
                            del merged[key]
                levels[i + 1] = merged
            levels[i] = {}
            i += 1
        return Levels._of(tuple(levels), length)

    def without(self, keys: list[Hashable]) -> Levels[_V]:
        """A new version without ``keys`` (those absent are ignored)."""
        gone = [k for k in dict.fromkeys(keys) if k in self]
        return self.updated(dict.fromkeys(gone, GONE), self._len - len(gone))

    def merged(self, items: Mapping[Hashable, _V]) -> Levels[_V]:
        """A new version with ``items`` set (added or replaced)."""
        added = sum(1 for k in items if k not in self)
        return self.updated(items, self._len + added)
