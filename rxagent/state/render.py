"""How a store reads as text: keys, times and values rendered compactly for prompts.

Shared by :meth:`rxagent.state.StateStore.context`, the prompt context builder
(:func:`rxagent.tools.prompt_context.build_context`), MCP and the LangChain adapter, so
every reader of a store sees the same lines.
"""

from __future__ import annotations

import json
from typing import Any

from .snapshot import Entry, Snapshot, iso_time, key_text

__all__ = [
    "ago",
    "compact_json",
    "context_header",
    "context_line",
    "fit",
    "iso_time",
    "key_count",
    "key_text",
    "omitted_line",
    "recent_entries",
]


def compact_json(value: Any) -> str:
    """``value`` as JSON without spaces (models and dataclasses as their fields, anything else as
    ``str``): the cheapest text for a prompt."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        value = asdict(value)
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def ago(seconds: float) -> str:
    """How long ``seconds`` is, as prompts show ages: ``250ms ago``, ``4.2s ago``, ``3min ago``,
    ``2.5h ago``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms ago"
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min ago"
    return f"{seconds / 3600:.1f}h ago"


def recent_entries(snap: Snapshot) -> list[Entry]:
    """A snapshot's entries, most recently changed first; entries changed in the
    same version in key order, so prompts repeat."""
    return list(snap.iter_recent())


def key_count(count: int) -> str:
    """``1 key``, ``2 keys``: a count of keys in words."""
    return f"{count} key" if count == 1 else f"{count} keys"


def context_header(name: str, snap: Snapshot, now: float) -> str:
    """The first line of a store's prompt text: name, version, size, freshness."""
    head = f"state {name!r} v{snap.version}, {key_count(len(snap))}"
    if snap.version:
        head += f", updated {ago(max(0.0, now - snap.wall_time))}"
    return head + ":"


def context_line(entry: Entry, now: float) -> str:
    """One entry of a store's prompt text: ``key: compact JSON (age)``."""
    age = ago(max(0.0, now - entry.wall_time))
    return f"{key_text(entry.key)}: {compact_json(entry.value)} ({age})"


def omitted_line(count: int) -> str:
    """The last line of a prompt text that left ``count`` keys out."""
    return f"... {count} more {'key' if count == 1 else 'keys'} omitted"


def fit(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` (ending in "…") when even the header did not fit."""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 1)] + "…" if max_chars > 0 else ""
