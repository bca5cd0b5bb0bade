"""docs/operators.md's Reference section is the generated text, current with the code.

Every operator, aggregation, source and sink it lists is documented from its
signature and its docstring's ``Args:`` section, and every parameter has a
description. Run this file to regenerate the section after changing a docstring
or a signature::

    .venv/bin/python tests/test_docs_operators.py
"""

from __future__ import annotations

import re
from pathlib import Path

from rxagent import operators as ops
from rxagent.config.kinds import default_registry
from rxagent.config.reference import (
    PYTHON_REFERENCE,
    python_entries,
    python_reference_markdown,
    undocumented_parameters,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
START = "<!-- reference:start -->"
END = "<!-- reference:end -->"
SECTION = re.compile(re.escape(START) + r"\n(.*)" + re.escape(END), re.DOTALL)


def _section(text: str) -> str:
    match = SECTION.search(text)
    assert match is not None, f"{DOC} has no {START} ... {END} section"
    return match.group(1)


def test_the_reference_in_docs_operators_is_current() -> None:
    assert _section(DOC.read_text(encoding="utf-8")) == python_reference_markdown(), (
        "docs/operators.md's reference is out of date: regenerate it with "
        "`.venv/bin/python tests/test_docs_operators.py`"
    )


#: Callables whose parameters are still described in prose, tolerated (none now:
#: ToolSink's docstring gained its ``Args:`` section).
KNOWN_UNDESCRIBED: set[str] = set()


def test_every_parameter_is_described_by_its_docstring() -> None:
    """Each parameter of each documented callable has an ``Args:`` entry, and
    each entry names a parameter (``+name``: an entry for no parameter)."""
    missing = {
        entry.call: gaps
        for entry, obj in python_entries()
        if (gaps := undocumented_parameters(obj))
    }
    unexpected = {call: gaps for call, gaps in missing.items() if call not in KNOWN_UNDESCRIBED}
    assert not unexpected, unexpected


def test_every_operator_factory_is_in_the_reference() -> None:
    """A new operator in ``rxagent.operators.__all__`` is documented or fails here
    (classes and the stage toolkit for operator authors are not operators)."""
    documented = {entry.path.rpartition(":")[2] for entry, _ in python_entries()}
    factories = {
        name
        for name in ops.__all__
        if callable(getattr(ops, name)) and name[0].islower() and name != "batch_stage"
    }
    assert factories <= documented, sorted(factories - documented)


def test_every_built_in_kind_is_linked_from_the_python_api() -> None:
    """Each built-in kind of pipeline files names the Python callable it builds."""
    linked = {entry.kind for section in PYTHON_REFERENCE for entry in section.entries}
    registry = default_registry()
    kinds = {
        (role, name) for role in ("source", "operator", "sink") for name in registry.names(role)
    }
    assert kinds <= linked, sorted(kinds - linked)
    assert linked - {None} <= kinds, sorted(linked - {None} - kinds)


def test_the_links_into_docs_yaml_resolve() -> None:
    yaml_md = (DOC.parent / "yaml.md").read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', yaml_md))
    links = set(re.findall(r"\(yaml\.md#([^)]+)\)", python_reference_markdown()))
    assert links
    assert links <= anchors, sorted(links - anchors)


def regenerate() -> bool:
    """Write the generated reference into docs/operators.md; True if it changed."""
    text = DOC.read_text(encoding="utf-8")
    new = SECTION.sub(lambda _: f"{START}\n{python_reference_markdown()}{END}", text, count=1)
    if new != text:
        DOC.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    print(f"{DOC}: {'updated' if regenerate() else 'already current'}")
