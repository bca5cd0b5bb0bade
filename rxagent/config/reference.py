"""The reference documentation, generated from the code: one generator for both.

- :func:`reference_markdown` is docs/yaml.md's reference of the pipeline-file
  kinds, from the registry's parameter models (the same models ``rxagent
  schema`` publishes as JSON Schema, :mod:`.schema`);
- :func:`python_reference_markdown` is docs/operators.md's reference of the
  Python API: every operator, aggregation, source and sink with its call
  signature, its docstring's text, a table of its parameters (type and default
  from the signature, description from the docstring's ``Args:`` section,
  read by :func:`rxagent.docstrings.parse_docstring`, the parser tools and
  derived kinds use) and the YAML kind that builds it.

Tests (tests/config/test_docs_reference.py, tests/test_docs_operators.py)
check that both documents hold the generated text and that no parameter lacks
a description; running either test file as a script regenerates its document.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..docstrings import parse_docstring
from .kinds import default_registry
from .registry import Kind, Registry, Role

__all__ = [
    "PYTHON_REFERENCE",
    "Entry",
    "Section",
    "kind_anchor",
    "python_entries",
    "python_reference_markdown",
    "reference_markdown",
    "undocumented_parameters",
]


@dataclass(frozen=True)
class Entry:
    """One documented callable of the Python API.

    ``path`` is ``module:attribute`` (imported when the reference is made), ``call``
    how the signature is written (``ops.filter``), ``kind`` the ``(role, name)`` of
    the YAML kind that builds it (None: none does), ``also`` other ways to make it
    (``sources.memory(...)``)."""

    path: str
    call: str
    kind: tuple[Role, str] | None = None
    also: str = ""

    def load(self) -> Any:
        """The documented object."""
        module, _, attribute = self.path.partition(":")
        return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Section:
    """A titled group of entries in the Python reference."""

    title: str
    intro: str
    entries: tuple[Entry, ...]


def _ops(*names: str, kinds: bool = True) -> tuple[Entry, ...]:
    return tuple(
        Entry(f"rxagent.operators:{n}", f"ops.{n}", ("operator", n) if kinds else None)
        for n in names
    )


#: What docs/operators.md's reference documents, in order.
PYTHON_REFERENCE: tuple[Section, ...] = (
    Section(
        "Transforms",
        "Per-event functions of the value; a function that raises dead-letters its event.",
        _ops("filter", "map", "key_by", "event_time", "flat_map", "tap", "decode"),
    ),
    Section(
        "Windows",
        "Each emits a `Window(key, value, count, start, end, partial)` per window and key "
        '(`partial`: flushed by a stop, see "Windows and stops" above).',
        _ops("count_window", "tumbling_window", "sliding_window", "session_window"),
    ),
    Section(
        "Aggregations",
        "What a window's `value` is (`agg=`): one of these, or a mapping of names to them.",
        _ops(
            "count",
            "sum_",
            "mean",
            "min_",
            "max_",
            "first",
            "last",
            "collect",
            "reduce",
            kinds=False,
        ),
    ),
    Section(
        "Throttling",
        "Per-key flow limits on the scheduler's clock (virtual time in tests).",
        _ops(
            "throttle_first", "throttle_last", "throttle_latest", "debounce", "sample", "rate_limit"
        ),
    ),
    Section(
        "Backpressure and resilience",
        "Buffering, retries, duplicates, order and failing calls.",
        (
            *_ops("buffer", "retry", "dedup", "reorder", "circuit_breaker"),
            Entry("rxagent.operators:CircuitBreaker", "ops.CircuitBreaker"),
        ),
    ),
    Section(
        "Sources",
        "Where a pipeline's events come from: `Pipeline(name, source)`.",
        (
            Entry(
                "rxagent.sources:MemorySource",
                "sources.MemorySource",
                ("source", "memory"),
                "sources.memory(items, ...)",
            ),
            Entry("rxagent.sources:PushSource", "sources.PushSource", None, "sources.push(...)"),
            Entry(
                "rxagent.sources:ReplaySource",
                "sources.ReplaySource",
                ("source", "replay"),
                "sources.replay(path, ...)",
            ),
            Entry(
                "rxagent.sources:StateChangesSource",
                "sources.StateChangesSource",
                ("source", "state"),
                "sources.state_changes(store, ...)",
            ),
            Entry(
                "rxagent.websocket:WebSocketSource",
                "sources.WebSocketSource",
                ("source", "websocket"),
                "sources.websocket(url, ...)",
            ),
            Entry(
                "rxagent.kafka:KafkaSource",
                "sources.KafkaSource",
                ("source", "kafka"),
                "sources.kafka(topics, ...)",
            ),
        ),
    ),
    Section(
        "Sinks",
        "Where events end: `pipeline.to(sink, ...)`.",
        (
            Entry(
                "rxagent.sinks:StateSink", "sinks.StateSink", ("sink", "state"), "store.sink(...)"
            ),
            Entry(
                "rxagent.sinks:ToolSink", "sinks.ToolSink", ("sink", "tool"), "activate(tool, ...)"
            ),
            Entry("rxagent.sinks:RecordSink", "sinks.RecordSink", ("sink", "record")),
            Entry("rxagent.websocket:WebSocketSink", "sinks.WebSocketSink", ("sink", "websocket")),
            Entry("rxagent.kafka:KafkaSink", "sinks.KafkaSink", ("sink", "kafka")),
            Entry("rxagent.sinks:CallbackSink", "sinks.CallbackSink", ("sink", "log")),
            Entry("rxagent.sinks:ListSink", "sinks.ListSink"),
        ),
    ),
    Section(
        "Dead letters",
        "Where failed events go: `Pipeline(..., dead_letters=...)`.",
        (
            Entry("rxagent.sinks:MemoryDeadLetters", "sinks.MemoryDeadLetters"),
            Entry("rxagent.sinks:JsonlDeadLetters", "sinks.JsonlDeadLetters"),
            Entry("rxagent.kafka:KafkaDeadLetters", "sinks.KafkaDeadLetters"),
        ),
    ),
)


def python_entries() -> Iterator[tuple[Entry, Any]]:
    """Every entry of :data:`PYTHON_REFERENCE` with the object it documents."""
    for section in PYTHON_REFERENCE:
        for entry in section.entries:
            yield entry, entry.load()


# --- shared: reStructuredText of docstrings as Markdown -------------------------------

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?([^`]+)`")


def _inline(text: str) -> str:
    """Docstring markup as Markdown: ``x`` and :class:`~a.B` become `x` and `B`."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        shown = target.rsplit(".", 1)[-1] if match.group(0).count("~") else target
        return f"`{shown}`"

    return _ROLE.sub(role, text).replace("``", "`")


def _markdown(description: str) -> str:
    """A docstring's description as Markdown: ``::`` blocks become fenced code."""
    out: list[str] = []
    lines = description.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(_inline(line.rstrip()))
            i += 1
            continue
        lead = line.rstrip()[:-2].rstrip()
        if lead:
            out.append(_inline(lead) + ":")
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        code = inspect.cleandoc("\n".join(block))
        if out and out[-1]:
            out.append("")
        out += ["```text", *code.splitlines(), "```", ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- docs/operators.md: the Python API ----------------------------------------------


def _parameters(obj: Any) -> list[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(obj).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _doc(obj: Any) -> str:
    """The object's own docstring (a class's, not one inherited)."""
    doc = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
    return inspect.cleandoc(doc) if doc else ""


def undocumented_parameters(obj: Any) -> list[str]:
    """The parameters of ``obj``'s signature its docstring's ``Args:`` does not
    describe, and the ``Args:`` entries naming no parameter (as ``+name``)."""
    _, args = parse_docstring(_doc(obj))
    names = [p.name for p in _parameters(obj)]
    return [n for n in names if not args.get(n)] + [f"+{a}" for a in args if a not in names]


def _default(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return "**required**"
    text = repr(value)
    if len(text) > 40:
        text = f"{type(value).__name__}(...)"
    return f"`{text}`"


def _signature(call: str, obj: Any) -> str:
    """``call(a, *, b=1) -> R`` on one line, or one parameter a line when long."""
    signature = inspect.signature(obj)
    parts: list[str] = []
    star = False
    for p in signature.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            star = True
            parts.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            default = repr(p.default)
            parts.append(f"{p.name}={default if len(default) <= 40 else '...'}")
    returns = signature.return_annotation
    tail = "" if inspect.isclass(obj) or returns is signature.empty else f" -> {returns}"
    one = f"{call}({', '.join(parts)}){tail}"
    if len(one) <= 96:
        return one
    return f"{call}(\n" + "".join(f"    {part},\n" for part in parts) + f"){tail}"


def kind_anchor(role: Role, name: str) -> str:
    """The anchor of a kind's entry in docs/yaml.md's reference."""
    return f"{role}-{name}"


def _entry_markdown(entry: Entry, obj: Any) -> list[str]:
    description, args = parse_docstring(_doc(obj))
    title = entry.call.split(".", 1)[-1]
    lines = [f"#### `{title}`", "", "```text", _signature(entry.call, obj), "```", ""]
    if description:
        lines += [_markdown(description), ""]
    params = _parameters(obj)
    if params:
        lines += ["| parameter | type | default | description |", "|---|---|---|---|"]
        for p in params:
            annotation = "" if p.annotation is p.empty else str(p.annotation)
            kind = f"`{_cell(annotation)}`" if annotation else ""
            text = _cell(_inline(args.get(p.name, "")))
            lines.append(f"| `{p.name}` | {kind} | {_default(p.default)} | {text} |")
        lines.append("")
    notes = []
    if entry.also:
        notes.append(f"Also made by `{entry.also}`.")
    if entry.kind is not None:
        role, name = entry.kind
        what = {"source": "source", "operator": "step", "sink": "sink"}[role]
        notes.append(
            f"In pipeline files: the `{name}` {what} "
            f"([reference](yaml.md#{kind_anchor(role, name)}))."
        )
    if notes:
        lines += [" ".join(notes), ""]
    return lines


def python_reference_markdown() -> str:
    """docs/operators.md's reference of the Python API, generated from the code."""
    lines = [
        "Generated from the signatures and docstrings "
        "(`from rxagent import operators as ops, sinks, sources`); "
        "`help()` on any of them says the same.",
        "",
    ]
    for section in PYTHON_REFERENCE:
        lines += [f"### {section.title}", "", section.intro, ""]
        for entry in section.entries:
            lines += _entry_markdown(entry, entry.load())
    return "\n".join(lines).rstrip() + "\n"


# --- docs/yaml.md: the pipeline-file kinds ----------------------------------------------


def _type_text(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1].removesuffix("Params")
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "anyOf" in prop:
        parts = [_type_text(p) for p in prop["anyOf"]]
        return " \\| ".join(p for p in parts if p)
    kind = prop.get("type")
    if kind == "array":
        return f"list of {_type_text(prop.get('items', {})) or 'any'}"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"mapping to {_type_text(extra)}" if isinstance(extra, dict) else "mapping"
    if kind == "null":
        return "null"
    return str(kind or "any")


def _default_text(name: str, kind: Kind) -> str:
    info = kind.params.model_fields[name]
    if info.is_required():
        return "**required**"
    default = info.get_default(call_default_factory=True)
    if isinstance(default, dict | list) and not default:
        return "empty"
    if default is None:
        return "-"
    if hasattr(default, "model_dump"):
        return "defaults"
    return f"`{default!r}`"


def reference_markdown(registry: Registry | None = None) -> str:
    """The kinds reference of docs/yaml.md, generated from the registry."""
    registry = registry or default_registry()
    lines: list[str] = []
    titles = {"source": "Sources", "operator": "Steps (operators)", "sink": "Sinks"}
    roles: tuple[Role, ...] = ("source", "operator", "sink")
    for role in roles:
        lines += [f"### {titles[role]}", ""]
        for kind in registry.kinds(role):
            params = kind.params.model_json_schema(ref_template="#/$defs/{model}")
            props = params.get("properties", {})
            short = f" Shorthand: `{kind.name}: <{kind.shorthand}>`." if kind.shorthand else ""
            lines += [
                f'<a id="{kind_anchor(role, kind.name)}"></a>',
                "",
                f"#### `{kind.name}`",
                "",
                f"{kind.doc}{short}",
                "",
            ]
            if not props:
                lines += ["No parameters.", ""]
                continue
            lines += ["| parameter | type | default | description |", "|---|---|---|---|"]
            for name, prop in props.items():
                desc = (prop.get("description") or "").replace("|", "\\|").replace("\n", " ")
                lines.append(
                    f"| `{name}` | {_type_text(prop)} | {_default_text(name, kind)} | {desc} |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
