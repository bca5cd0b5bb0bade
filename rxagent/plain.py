"""One conversion of results and state values to plain data (JSON-ready).

Tool results, state entries and window records reach LLM clients (MCP, OpenAI
tool messages), YAML test expectations and JSON reports. :func:`plain` turns
pydantic models, dataclasses (such as windows), enums, tuples and mappings into
dicts, lists and scalars, recursively, so each of those paths shows the same data.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["plain"]


def plain(value: Any, *, str_keys: bool = False) -> Any:
    """``value`` as plain data: models dumped in JSON mode, dataclasses and mappings
    as dicts, tuples and lists as lists, enums as their values; other values as
    they are. ``str_keys`` turns every mapping key into a string (for JSON)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name), str_keys=str_keys)
            for f in dataclasses.fields(value)
        }
    dump = getattr(value, "model_dump", None)
    if dump is not None and not isinstance(value, type):
        return plain(dump(mode="json"), str_keys=str_keys)
    if isinstance(value, Mapping):
        return {
            (str(k) if str_keys and not isinstance(k, str) else k): plain(v, str_keys=str_keys)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [plain(v, str_keys=str_keys) for v in value]
    if isinstance(value, enum.Enum):
        return plain(value.value, str_keys=str_keys)
    return value
