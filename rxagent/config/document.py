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
    "MAX_ALIAS_VALUES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
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
        """Remember where the value at ``path`` starts (``mark``, from the YAML parser) and, for a
        mapping entry, where its key does (``key_mark``)."""
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
        """A :class:`Problem` with ``message`` located at the value at ``path`` (or at its key, with
        ``key=True``), for errors that point at the cause."""
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
        """The name of the file the document was read from, as errors show it."""
        return self.locations.file

    def redact(self, text: str) -> str:
        """``text`` with every value that came from the environment (and every other
        known secret, :func:`rxagent._secrets.redact`) replaced by ``***``."""
        return _secrets.redact(text)


#: Limits on what a pipeline file may make the parser do (a file is untrusted input):
#: its size in bytes, how deeply its collections nest (aliases included), and how
#: many values its aliases may expand to beyond those written out.
MAX_FILE_BYTES = 8 << 20
MAX_DEPTH = 100
MAX_ALIAS_VALUES = 100_000

# libyaml's parser when PyYAML was built with it (its events keep line and column)
_Parser: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVER: Any = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class _Limit(Exception):
    """A limit passed while parsing; carries the located problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class _AliasNode(yaml.Node):
    """``*name`` where it is written: the anchored node it stands for, and its place."""

    id = "alias"

    def __init__(self, target: yaml.Node, start_mark: Any, end_mark: Any) -> None:
        super().__init__(target.tag, target.value, start_mark, end_mark)
        self.target = target


def _at(file: str, mark: Any) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def size_problem(file: str, head: str) -> Problem:
    """The problem of a file longer than :data:`MAX_FILE_BYTES`, located at the end
    of ``head`` (its text up to the limit)."""
    line = head.count("\n") + 1
    column = len(head) - (head.rfind("\n") + 1) + 1
    return Problem(
        Location(file, line, column),
        (),
        f"the file is larger than {MAX_FILE_BYTES} bytes (MAX_FILE_BYTES): refused",
    )


def parse(
    text: str,
    *,
    file: str = "<string>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> SourceDocument:
    """Parse YAML ``text`` into data with locations; substitute ``${VAR}``.

    Raises :class:`ConfigFileError` for YAML syntax errors, duplicate keys,
    non-string keys, anchors/tags we do not accept, unset variables, and a file
    past the limits (:data:`MAX_FILE_BYTES`, :data:`MAX_DEPTH` levels of
    nesting, :data:`MAX_ALIAS_VALUES` values made by aliases).
    """
    locations = Locations(file)
    env = os.environ if environ is None else environ
    problems: list[Problem] = []
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        head = text.encode("utf-8", "replace")[:MAX_FILE_BYTES].decode("utf-8", "ignore")
        raise ConfigFileError([size_problem(file, head)])
    try:
        node = _compose(text, file)
    except _Limit as limit:
        raise ConfigFileError([limit.problem]) from None
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
    converter = _Converter(locations, env, doc.secrets, problems)
    try:
        doc.data = converter.convert(node, ())
    except _Limit as limit:
        raise ConfigFileError([limit.problem]) from None
    _secrets.register(*doc.secrets, owner=doc)
    if problems:
        raise ConfigFileError(problems)
    return doc


def _compose(text: str, file: str) -> yaml.Node | None:
    """The document's node tree (None: empty).

    Built from the parser's events without recursion, so nesting is limited by
    :data:`MAX_DEPTH` (a located error), not by Python's stack. An anchor is
    defined where its node ends: an alias inside the collection it names is an
    error, so the tree never refers to itself. An alias is an :class:`_AliasNode`
    (where it is written) pointing at the anchored node, shared, not copied.
    """
    anchors: dict[str, yaml.Node] = {}
    # open collections: the node, its anchor, and (mappings) the keys and values so far
    stack: list[tuple[yaml.CollectionNode, str | None, list[yaml.Node]]] = []
    root: yaml.Node | None = None
    documents = 0

    def define(anchor: str | None, node: yaml.Node, mark: Any) -> None:
        if anchor is None:
            return
        if anchor in anchors:
            raise _Limit(
                Problem(
                    _at(file, mark),
                    (),
                    f"YAML anchor &{anchor} is defined twice (first at line "
                    f"{anchors[anchor].start_mark.line + 1})",
                )
            )
        anchors[anchor] = node

    def attach(node: yaml.Node) -> None:
        nonlocal root
        if stack:
            stack[-1][2].append(node)
        else:
            root = node

    events: Iterable[Any] = yaml.parse(text, Loader=_Parser)
    for event in events:
        if isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
            marks: tuple[Any, Any] = (event.start_mark, event.end_mark)
            scalar = yaml.ScalarNode(tag, event.value, *marks, style=event.style)
            define(event.anchor, scalar, event.start_mark)
            attach(scalar)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise _Limit(
                    Problem(
                        _at(file, event.start_mark),
                        (),
                        f"nested more than {MAX_DEPTH} levels deep (MAX_DEPTH)",
                    )
                )
            is_seq = isinstance(event, yaml.SequenceStartEvent)
            tag = event.tag
            if tag is None or tag == "!":
                kind = yaml.SequenceNode if is_seq else yaml.MappingNode
                tag = _RESOLVER.resolve(kind, None, event.implicit)
            start: Any = event.start_mark
            collection: yaml.CollectionNode = (yaml.SequenceNode if is_seq else yaml.MappingNode)(
                tag, [], start, None, flow_style=event.flow_style
            )
            stack.append((collection, event.anchor, []))
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            collection, anchor, items = stack.pop()
            collection.end_mark = event.end_mark
            if isinstance(collection, yaml.MappingNode):
                collection.value = list(zip(items[::2], items[1::2], strict=True))
            else:
                collection.value = items
            define(anchor, collection, collection.start_mark)
            attach(collection)
        elif isinstance(event, yaml.AliasEvent):
            target = anchors.get(event.anchor or "")
            if target is None:
                inside = any(anchor == event.anchor for _, anchor, _ in stack)
                raise _Limit(
                    Problem(
                        _at(file, event.start_mark),
                        (),
                        f"alias *{event.anchor} refers to the collection it is in "
                        "(a structure containing itself)"
                        if inside
                        else f"alias *{event.anchor} names no anchor defined before it "
                        f"(define &{event.anchor} first)",
                    )
                )
            attach(_AliasNode(target, event.start_mark, event.end_mark))
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _Limit(
                    Problem(
                        _at(file, event.start_mark),
                        (),
                        "a pipeline file holds one YAML document; found a second one here",
                    )
                )
    return root


class _Converter:
    """Node tree -> plain data, recording every value's location; aliases are
    expanded, at most :data:`MAX_ALIAS_VALUES` values and :data:`MAX_DEPTH` deep."""

    def __init__(
        self,
        locations: Locations,
        env: Mapping[str, str],
        secrets: set[str],
        problems: list[Problem],
    ) -> None:
        self.locations = locations
        self.env = env
        self.secrets = secrets
        self.problems = problems
        self.expanded = 0  # values made by expanding aliases
        self.alias: _AliasNode | None = None  # the outermost alias being expanded

    def _limit(self, node: yaml.Node, message: str) -> _Limit:
        mark = (self.alias or node).start_mark
        return _Limit(Problem(_at(self.locations.file, mark), (), message))

    def convert(self, node: yaml.Node, path: Path_, key_mark: Any = None, depth: int = 0) -> Any:
        locations = self.locations
        if isinstance(node, _AliasNode):
            outer = self.alias
            if outer is None:
                self.alias = node
            try:
                return self.convert(node.target, path, key_mark, depth)
            finally:
                self.alias = outer
        if self.alias is not None:
            self.expanded += 1
            if self.expanded > MAX_ALIAS_VALUES:
                raise self._limit(
                    node,
                    f"aliases expand to more than {MAX_ALIAS_VALUES} values "
                    "(MAX_ALIAS_VALUES); refused as an alias bomb",
                )
        locations.add(path, node.start_mark, key_mark=key_mark)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and depth >= MAX_DEPTH:
            raise self._limit(
                node, f"nested more than {MAX_DEPTH} levels deep through aliases (MAX_DEPTH)"
            )
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key_node = _deref(key_node)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(
                        locations.problem(path, "YAML merge keys (<<) are not supported", key=False)
                    )
                    continue
                key = _scalar(key_node)
                at = _at(locations.file, key_node.start_mark)
                if not isinstance(key, str | int) or isinstance(key, bool):
                    self.problems.append(Problem(at, path, f"keys must be strings, got {key!r}"))
                    continue
                key = str(key)
                child = (*path, key)
                if key in out:
                    self.problems.append(Problem(at, child, f"duplicate key {key!r}"))
                    continue
                out[key] = self.convert(value_node, child, key_node.start_mark, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [
                self.convert(item, (*path, i), None, depth + 1) for i, item in enumerate(node.value)
            ]
        value = _scalar(node)
        if isinstance(value, str) and "${" in value:
            return _substitute(value, path, locations, self.env, self.secrets, self.problems)
        return value


def _deref(node: yaml.Node) -> yaml.Node:
    return node.target if isinstance(node, _AliasNode) else node


_STR = "tag:yaml.org,2002:str"


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return None
    if node.tag == _STR:
        return node.value
    constructor = yaml.SafeLoader.yaml_constructors.get(node.tag)
    if constructor is None:
        return node.value
    return constructor(_CONSTRUCTOR, node)


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
