"""Mermaid text of a file's pipelines (``rxagent graph``).

Each pipeline is a left-to-right chain ``source --> steps --> sinks``; state
stores and tools are shared nodes, so a store written by one pipeline and read
by another shows the link between them. Values from the environment never
appear (the text is redacted).
"""

from __future__ import annotations

import re
from typing import Any

from .loader import Config, StageSpec

__all__ = ["mermaid"]

_SAFE = re.compile(r"[^A-Za-z0-9_]")
_SUMMARY_FIELDS = (
    "url",
    "topics",
    "topic",
    "path",
    "predicate",
    "expr",
    "key",
    "interval",
    "size",
    "slide",
    "gap",
    "id",
    "seq",
    "capacity",
    "n",
)


def _node_id(*parts: str | int) -> str:
    return "_".join(_SAFE.sub("_", str(p)) for p in parts)


def _label(stage: StageSpec) -> str:
    params = stage.params
    bits: list[str] = []
    for field in _SUMMARY_FIELDS:
        value: Any = getattr(params, field, None)
        if value is None or field not in type(params).model_fields:
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        bits.append(f"{field}={value}")
        if len(bits) == 2:
            break
    title = stage.kind.name if stage.name is None else f"{stage.name} ({stage.kind.name})"
    text = title + (f"<br/>{' '.join(bits)}" if bits else "")
    return text.replace('"', "'")


def mermaid(config: Config, *, pipelines: list[str] | None = None) -> str:
    """A Mermaid ``flowchart LR`` of the file's pipelines (all, or those named)."""
    lines = ["flowchart LR"]
    stores_used: set[str] = set()
    tools_used: set[str] = set()
    links: list[str] = []
    for name, spec in config.pipelines.items():
        if pipelines is not None and name not in pipelines:
            continue
        lines.append(f'  subgraph {_node_id("p", name)}["pipeline {name}"]')
        chain = [("source", spec.source)] + [(f"s{i}", s) for i, s in enumerate(spec.steps)]
        previous: str | None = None
        for tag, stage in chain:
            node = _node_id(name, tag)
            shape = f'(["{_label(stage)}"])' if tag == "source" else f'["{_label(stage)}"]'
            lines.append(f"    {node}{shape}")
            if previous is not None:
                lines.append(f"    {previous} --> {node}")
            previous = node
        for i, sink in enumerate(spec.sinks):
            node = _node_id(name, "sink", i)
            lines.append(f'    {node}[/"{_label(sink)}"/]')
            lines.append(f"    {previous} --> {node}")
            kind = sink.kind
            if kind.writes_store:
                store = getattr(sink.params, kind.writes_store)
                stores_used.add(store)
                links.append(f"  {node} --> {_node_id('state', store)}")
            if kind.uses_tool:
                tool = getattr(sink.params, kind.uses_tool)
                tools_used.add(tool)
                links.append(f"  {node} -.activates.-> {_node_id('tool', tool)}")
        lines.append("  end")
        source = spec.source
        if source.kind.reads_store:
            store = getattr(source.params, source.kind.reads_store)
            stores_used.add(store)
            links.append(f"  {_node_id('state', store)} -.changes.-> {_node_id(name, 'source')}")
    for store in sorted(stores_used):
        lines.append(f'  {_node_id("state", store)}[("state {store}")]')
    for tool in sorted(tools_used):
        lines.append(f'  {_node_id("tool", tool)}{{{{"tool {tool}"}}}}')
    lines.extend(links)
    return config.redact("\n".join(lines) + "\n")
