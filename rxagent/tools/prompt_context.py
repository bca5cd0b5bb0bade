"""A prompt section from several state stores within one budget.

:meth:`StateStore.context <rxagent.sinks.StateStore.context>` renders one
store; :func:`build_context` renders several in the same format, sharing one
budget among them by relevance, and says per store what it left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from ..exceptions import ConfigurationError
from ..state import (
    Entry,
    StateStore,
    context_header,
    context_line,
    fit,
    omitted_line,
    recent_entries,
)

__all__ = ["CHARS_PER_TOKEN", "Relevance", "build_context"]

#: The token estimate: about four characters per token, which holds roughly for
#: English text and compact JSON with the GPT and Claude tokenizers. It is an
#: estimate: keep a margin below a hard model limit.
CHARS_PER_TOKEN = 4

#: ``relevance(store_name, entry) -> score``: higher scores come first.
Relevance = Callable[[str, Entry], float]


def build_context(
    stores: Mapping[str, StateStore] | Iterable[StateStore],
    *,
    max_chars: int | None = None,
    max_tokens: int | None = None,
    relevance: Literal["recent"] | Relevance = "recent",
    now: float | None = None,
) -> str:
    """One prompt section over ``stores``, at most ``max_chars`` characters (or
    ``max_tokens`` estimated tokens, ``CHARS_PER_TOKEN`` characters each; with
    both, the smaller budget; with neither, everything).

    Relevance: ``"recent"`` (default) ranks every entry of every store by when it
    last changed (wall time), newest first; a function ``relevance(store_name,
    entry)`` ranks by its score, highest first (ties: newest first). The
    section keeps the most relevant entries that fit, in rank order: no entry
    is left out while a less relevant one is shown.

    Each store gets the format of :meth:`StateStore.context`: its header line
    (name, version, size, freshness), its kept entries, most relevant first, and
    ``... N more keys omitted`` when some were left out. Stores appear in the
    order of their most relevant kept entry; those with nothing kept after the
    others, in the order given. With a mapping, its keys are the names shown
    (and given to ``relevance``); otherwise the stores' own names. A budget too
    small even for the headers cuts the text, ending in "…".
    """
    named = _named(stores)
    score_of: Relevance | None = None
    if not isinstance(relevance, str):
        if not callable(relevance):
            raise ConfigurationError(
                "build_context: relevance must be 'recent' or a function (store_name, entry) -> "
                f"score, got {relevance!r}"
            )
        score_of = relevance
    elif relevance != "recent":
        raise ConfigurationError(
            f"build_context: relevance must be 'recent' or a function, got {relevance!r}"
        )
    budget = _budget(max_chars, max_tokens)
    ranked: list[tuple[float, float, int, int, Entry]] = []  # (-score, -time, store, order, e)
    sections: list[tuple[str, list[Entry]]] = []
    # each store's own clock tells the ages ("updated 3s ago"), as in store.context()
    clock_now = [store.now() if now is None else now for _, store in named]
    for s, (name, store) in enumerate(named):
        snap = store.snapshot
        entries = recent_entries(snap)
        sections.append((context_header(name, snap, clock_now[s]), entries))
        for order, entry in enumerate(entries):
            score = entry.wall_time if score_of is None else float(score_of(name, entry))
            ranked.append((-score, -entry.wall_time, s, order, entry))
    ranked.sort(key=lambda r: r[:4])
    lines = [context_line(r[4], clock_now[r[2]]) for r in ranked]

    # the longest prefix of the ranking whose text fits: headers, kept lines and
    # an omission line for each store that still leaves something out
    left = [len(entries) for _, entries in sections]
    fixed = sum(len(header) + 1 for header, _ in sections) - 1  # joined by newlines
    used = fixed + sum(len(omitted_line(n)) + 1 for n in left if n)
    keep = 0
    if budget is None:
        keep = len(ranked)
    else:
        for i, row in enumerate(ranked):
            s = row[2]
            before = left[s]
            used -= len(omitted_line(before)) + 1
            left[s] = before - 1
            used += 1 + len(lines[i])
            if left[s]:
                used += len(omitted_line(left[s])) + 1
            if used <= budget:
                keep = i + 1
    kept_per_store: dict[int, list[str]] = {}
    for i in range(keep):
        kept_per_store.setdefault(ranked[i][2], []).append(lines[i])
    shown = list(kept_per_store) + [s for s in range(len(sections)) if s not in kept_per_store]
    out: list[str] = []
    for s in shown:
        header, entries = sections[s]
        kept = kept_per_store.get(s, [])
        out.append(header)
        out.extend(kept)
        if len(kept) < len(entries):
            out.append(omitted_line(len(entries) - len(kept)))
    text = "\n".join(out)
    return text if budget is None else fit(text, budget)


def _named(stores: Mapping[str, StateStore] | Iterable[StateStore]) -> list[tuple[str, StateStore]]:
    if isinstance(stores, Mapping):
        pairs = list(stores.items())
    elif isinstance(stores, StateStore):
        raise ConfigurationError(
            "build_context takes several stores: pass [store] for one, or use store.context()"
        )
    else:
        pairs = [(getattr(s, "name", None), s) for s in stores]
    for name, store in pairs:
        if not isinstance(store, StateStore):
            raise ConfigurationError(f"build_context takes StateStores, got {store!r}")
        if not isinstance(name, str):
            raise ConfigurationError(f"build_context: store names must be strings, got {name!r}")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"build_context got two stores of one name: {names}")
    return [(n, s) for n, s in pairs if isinstance(n, str)]


def _budget(max_chars: int | None, max_tokens: int | None) -> int | None:
    limits: list[int] = []
    for label, value, scale in (
        ("max_chars", max_chars, 1),
        ("max_tokens", max_tokens, CHARS_PER_TOKEN),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"build_context: {label} must be an int >= 0, got {value!r}")
        limits.append(value * scale)
    return min(limits) if limits else None
