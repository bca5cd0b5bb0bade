"""docs/yaml.md's Reference section is the generated text, current with the kinds.

Run this file to regenerate the section after changing a kind or a description::

    .venv/bin/python tests/config/test_docs_reference.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rxagent.config import ConfigFileError, loads
from rxagent.config.schema import reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "yaml.md"
START = "<!-- reference:start -->"
END = "<!-- reference:end -->"
SECTION = re.compile(re.escape(START) + r"\n(.*)" + re.escape(END), re.DOTALL)


def _section(text: str) -> str:
    match = SECTION.search(text)
    assert match is not None, f"{DOC} has no {START} ... {END} section"
    return match.group(1)


def test_the_reference_in_docs_yaml_is_current() -> None:
    current = _section(DOC.read_text(encoding="utf-8"))
    generated = reference_markdown()
    assert current == generated, (
        "docs/yaml.md's reference is out of date: regenerate it with "
        "`.venv/bin/python tests/config/test_docs_reference.py`"
    )


def test_every_parameter_has_a_description() -> None:
    """An empty description column is a parameter nobody explained."""
    empty = [line for line in reference_markdown().splitlines() if line.endswith("|  |")]
    assert not empty, "\n".join(empty)


def test_the_error_example_in_docs_yaml_is_what_the_loader_says() -> None:
    errors = DOC.read_text(encoding="utf-8").split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    yaml_block = re.search(r"```yaml\n(.*?)```", errors, re.DOTALL)
    text_block = re.search(r"```text\n(.*?)```", errors, re.DOTALL)
    assert yaml_block is not None
    assert text_block is not None
    with pytest.raises(ConfigFileError) as info:
        loads(yaml_block.group(1), file="feed.yaml", environ={"FEED_TOKEN": "t0ken"})
    assert [str(p) for p in info.value.problems] == text_block.group(1).splitlines()


def regenerate() -> bool:
    """Write the generated reference into docs/yaml.md; True if it changed."""
    text = DOC.read_text(encoding="utf-8")
    new = SECTION.sub(lambda _: f"{START}\n{reference_markdown()}{END}", text, count=1)
    if new != text:
        DOC.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    print(f"{DOC}: {'updated' if regenerate() else 'already current'}")
