"""A built-in tool that lets an LLM read state stores when it wants to.

Putting a store's :meth:`~rxagent.sinks.StateStore.context` in every prompt
costs tokens whether or not the model needs it; this tool lets the model ask
for exactly the store, keys and budget it needs, and see how fresh each value
is (version, event time, wall time). Reads take the store's current immutable
snapshot, so they never block writers and never see half an update.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..exceptions import ConfigurationError, StateError
from ..plain import plain
from ..state import Snapshot, StateStore
from .tool import Tool

__all__ = ["MISSING_KEY", "find_key", "key_text", "missing_key_message", "state_query_tool"]

#: Keys named in a "no such key" error, so the model can correct itself.
_KEYS_SHOWN = 10


def state_query_tool(
    *stores: StateStore,
    name: str = "query_state",
    description: str | None = None,
    max_chars: int = 2000,
    max_keys: int = 50,
) -> Tool:
    """A :class:`Tool` reading ``stores`` on demand.

    Arguments the LLM gives:

    - ``store``: which store (the schema lists the names; optional with one store);
    - ``key`` / ``keys``: entries to read; each comes back with its ``value``,
      ``version``, ``event_time`` and ``wall_time`` (ISO 8601);
    - ``max_chars``: without keys, the budget of the store's summary text
      (default ``max_chars``).

    An unknown store is refused by validation; an unknown key raises
    :class:`StateError` naming the key and some keys that do exist.
    """
    if not stores:
        raise ConfigurationError("state_query_tool needs at least one StateStore")
    by_name: dict[str, StateStore] = {}
    for store in stores:
        if not isinstance(store, StateStore):
            raise ConfigurationError(f"state_query_tool takes StateStores, got {store!r}")
        if store.name in by_name:
            raise ConfigurationError(f"state_query_tool got two stores named {store.name!r}")
        by_name[store.name] = store
    if max_chars < 1 or max_keys < 1:
        raise ConfigurationError("state_query_tool: max_chars and max_keys must be >= 1")

    names = tuple(by_name)
    store_field: Any = (
        Literal[names],  # the schema's enum tells the model which stores exist
        Field(
            names[0] if len(names) == 1 else ...,
            description="Name of the state store to read.",
        ),
    )
    args_model: type[BaseModel] = create_model(
        "QueryStateArgs",
        __config__=ConfigDict(extra="forbid"),
        store=store_field,
        key=(
            str | None,
            Field(None, description="One key to read; omit (with keys) for a summary."),
        ),
        keys=(
            list[str] | None,
            Field(None, max_length=max_keys, description="Several keys to read at once."),
        ),
        max_chars=(
            int,
            Field(
                max_chars,
                ge=1,
                le=100_000,
                description="Character budget of the summary returned when no key is given.",
            ),
        ),
    )

    async def query_state(args: BaseModel) -> Any:
        store = by_name[args.store]  # type: ignore[attr-defined]
        wanted: list[str] = []
        for k in [args.key, *(args.keys or [])]:  # type: ignore[attr-defined]
            if k is not None and k not in wanted:
                wanted.append(k)
        if not wanted:
            return store.context(args.max_chars)  # type: ignore[attr-defined]
        snap = store.snapshot
        found: dict[str, Hashable] = {}
        missing: list[str] = []
        for text in wanted:
            actual = find_key(snap, text)
            if actual is MISSING_KEY:
                missing.append(text)
            else:
                found[text] = actual
        if missing:
            raise StateError(
                missing_key_message(
                    store.name, snap, missing, hint="Call without keys for a summary."
                )
            )
        return {
            "store": store.name,
            "version": snap.version,
            "entries": {
                text: {"value": plain(snap[actual]), **snap.as_of(actual)}
                for text, actual in found.items()
            },
        }

    if description is None:
        listed = ", ".join(repr(n) for n in names)
        description = (
            f"Read live state kept by the data pipelines (stores: {listed}). "
            "Give keys to get their current values with version and timestamps, "
            "or no key for a compact summary of the most recently updated entries."
        )
    return Tool(query_state, name=name, description=description, args_model=args_model)


#: what :func:`find_key` returns when no key matches
MISSING_KEY: Hashable = object()


def find_key(snap: Snapshot, text: str) -> Hashable:
    """The store key an LLM means by ``text``: the key itself, or one whose text form matches.

    Stores may be keyed by ints or tuples; the model can only send strings.
    """
    if text in snap:
        return text
    for key in snap:
        if key_text(key) == text:
            return key
    return MISSING_KEY


def key_text(key: Hashable) -> str:
    """A store key as the text LLM clients see (strings as they are, others as JSON)."""
    return key if isinstance(key, str) else json.dumps(key, default=str)


def missing_key_message(
    store: str, snap: Snapshot, missing: Sequence[str], *, hint: str = ""
) -> str:
    """Which keys are missing from ``store``, and (some of) the keys it has."""
    shown = [key_text(k) for _, k in zip(range(_KEYS_SHOWN), snap, strict=False)]
    what = ", ".join(map(repr, missing))
    if not shown:
        return f"state {store!r} has no key {what}: the store is empty"
    more = f" (and {len(snap) - len(shown)} more)" if len(snap) > len(shown) else ""
    return (
        f"state {store!r} has no key {what}; existing keys include "
        f"{', '.join(map(repr, shown))}{more}{'. ' + hint if hint else ''}"
    )
