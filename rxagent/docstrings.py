"""Reading Google-style docstrings: the description, and each argument's text.

Tools (:mod:`rxagent.tools.tool`) describe their arguments to an LLM from it, and
pipeline-file kinds derived from a function (:mod:`rxagent.config.kinds.derive`)
describe their parameters in the YAML reference and schema from it: one parser,
so a docstring written once serves both.
"""

from __future__ import annotations

import re

__all__ = ["parse_docstring"]

#: Docstring section headers that end the description (Google style).
_SECTIONS = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|See Also):\s*$"
)
_ARG_SECTIONS = frozenset({"Args", "Arguments", "Parameters", "Params"})
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into the description and per-argument text.

    Entries of an ``Args:`` section start at the section's first indentation
    (``name: text`` or ``name (type): text``); deeper lines continue an entry.
    ``doc`` is a cleaned docstring (:func:`inspect.getdoc`).
    """
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for raw in doc.splitlines():
        line = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        header = _SECTIONS.match(line)
        if header and indent == 0:
            section, entry_indent, current = header.group(1), None, None
            continue
        if section is None:
            summary.append(raw.rstrip())
            continue
        if section not in _ARG_SECTIONS or not line:
            continue
        if entry_indent is None:
            entry_indent = indent
        entry = _ARG_LINE.match(line)
        if entry and indent <= entry_indent:
            current = entry.group(1).lstrip("*")
            args[current] = entry.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line}".strip()
    return "\n".join(summary).strip(), args
