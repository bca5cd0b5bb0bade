"""Reading a YAML document while remembering where every value came from.

PyYAML's composer gives a node tree with marks; :func:`parse` turns it into
plain Python data (dicts, lists, scalars) plus a :class:`Locations` table from
the path of every value (``("pipelines", "feed", "steps", 2, "filter")``) to
its line and column, so any later error (pydantic, an unknown kind, a bad
expression) can name the exact place in the file.

``${VAR}`` and ``${VAR:-default}`` in string scalars are replaced from the
environment *after* parsing, so a value can never change the document's
structure. The replaced values are remembered as secrets (:mod:`rxagent._secrets`,
for as long as the document lives) so that every output is redacted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import _secrets
from ..exceptions import ConfigurationError

__all__ = [
    "ConfigFileError",
    "Location",
    "Locations",
    "Problem",
    "SourceDocument",
    "format_path",
    "parse",
]

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Location:
    """A 1-based line and column in a file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where, what, and what was expected."""

    location: Location
    path: Path_
    message: str

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{self.location}: {where + ': ' if where else ''}{self.message}"


class ConfigFileError(ConfigurationError):
    """A pipeline file is invalid. ``problems`` lists every problem found, each
    with file, line, column and what was expected; ``str()`` prints them one per
    line, never a traceback."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def format_path(path: Path_) -> str:
    """``("pipelines", "feed", "steps", 2, "filter")`` -> ``pipelines.feed.steps[2].filter``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class Locations:
    """Where each value of a parsed document starts (and, for mapping entries,
    where its key starts)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._values: dict[Path_, Location] = {}
        self._keys: dict[Path_, Location] = {}

    def add(self, path: Path_, mark: Any, *, key_mark: Any = None) -> None:
        self._values[path] = Location(self.file, mark.line + 1, mark.column + 1)
        if key_mark is not None:
            self._keys[path] = Location(self.file, key_mark.line + 1, key_mark.column + 1)

    def add_alias(self, path: Path_, target: Path_) -> None:
        """Report ``path`` where ``target`` is (a value written in shorthand)."""
        if target in self._values:
            self._values[path] = self._values[target]

    def of(self, path: Path_, *, key: bool = False) -> Location:
        """The location of ``path``, or of its nearest located ancestor (a
        missing field is reported where its parent mapping starts)."""
        probe = tuple(path)
        while True:
            if key and probe in self._keys:
                return self._keys[probe]
            if probe in self._values:
                return self._values[probe]
            if not probe:
                return Location(self.file, 1, 1)
            probe = probe[:-1]

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        return Problem(self.of(path, key=key), tuple(path), message)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass
class SourceDocument:
    """A parsed file: its data, where each value came from, and the secrets that
    environment substitution put into it."""

    data: Any
    locations: Locations
    secrets: set[str] = field(default_factory=set)
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def file(self) -> str:
        return self.locations.file

    def redact(self, text: str) -> str:
        """``text`` with every value that came from the environment (and every other
        known secret, :func:`rxagent._secrets.redact`) replaced by ``***``."""
        return _secrets.redact(text)


def parse(
    text: str,
    *,
    file: str = "<string>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> SourceDocument:
    """Parse YAML ``text`` into data with locations; substitute ``${VAR}``.

    Raises :class:`ConfigFileError` for YAML syntax errors, duplicate keys,
    non-string keys, anchors/tags we do not accept, and unset variables.
    """
    locations = Locations(file)
    env = os.environ if environ is None else environ
    problems: list[Problem] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        reason = error.problem or error.context or "invalid YAML"
        raise ConfigFileError(
            [Problem(Location(file, line, column), (), f"YAML syntax error: {reason}")]
        ) from None
    except yaml.YAMLError as error:
        raise ConfigFileError([Problem(Location(file, 1, 1), (), f"YAML error: {error}")]) from None
    doc = SourceDocument(None, locations, base_dir=base_dir or Path.cwd())
    if node is None:
        doc.data = {}
        return doc
    doc.data = _convert(node, (), locations, env, doc.secrets, problems)
    _secrets.register(*doc.secrets, owner=doc)
    if problems:
        raise ConfigFileError(problems)
    return doc


def _convert(
    node: yaml.Node,
    path: Path_,
    locations: Locations,
    env: Mapping[str, str],
    secrets: set[str],
    problems: list[Problem],
    key_mark: Any = None,
) -> Any:
    locations.add(path, node.start_mark, key_mark=key_mark)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(
                    locations.problem(path, "YAML merge keys (<<) are not supported", key=False)
                )
                continue
            key = _scalar(key_node)
            at = Location(
                locations.file, key_node.start_mark.line + 1, key_node.start_mark.column + 1
            )
            if not isinstance(key, str | int) or isinstance(key, bool):
                problems.append(Problem(at, path, f"keys must be strings, got {key!r}"))
                continue
            key = str(key)
            child = (*path, key)
            if key in out:
                problems.append(Problem(at, child, f"duplicate key {key!r}"))
                continue
            out[key] = _convert(
                value_node, child, locations, env, secrets, problems, key_node.start_mark
            )
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, (*path, i), locations, env, secrets, problems)
            for i, item in enumerate(node.value)
        ]
    value = _scalar(node)
    if isinstance(value, str) and "${" in value:
        return _substitute(value, path, locations, env, secrets, problems)
    return value


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return None
    constructor = yaml.SafeLoader.yaml_constructors.get(node.tag)
    if constructor is None:
        return node.value
    loader = yaml.SafeLoader("")
    try:
        return constructor(loader, node)
    finally:
        loader.dispose()


def _substitute(
    value: str,
    path: Path_,
    locations: Locations,
    env: Mapping[str, str],
    secrets: set[str],
    problems: list[Problem],
) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            found = env[name]
        elif default is not None:
            return default  # defaults are in the file already: not secret
        else:
            problems.append(
                locations.problem(
                    path,
                    f"environment variable {name} is not set "
                    f"(set it, or give a default: ${{{name}:-value}})",
                )
            )
            return ""
        secrets.add(found)
        return found

    return _ENV.sub(replace, value)
