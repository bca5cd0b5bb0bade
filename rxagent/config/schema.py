"""JSON Schema of the pipeline file format, made from the registry's kinds.

Editors with a YAML language server complete and check pipeline files against
it (``# yaml-language-server: $schema=../docs/rxagent.schema.json``).
``rxagent schema`` prints it; docs/rxagent.schema.json is the checked-in copy
and docs/yaml.md's reference is generated from the same kinds by
:mod:`.reference` (``reference_markdown`` is re-exported here for old imports;
tests check both are current).
"""

from __future__ import annotations

import copy
from typing import Any

from .kinds import default_registry
from .model import DocumentModel
from .reference import reference_markdown
from .registry import Kind, Registry, Role

__all__ = ["SCHEMA_ID", "json_schema", "kind_schema", "reference_markdown"]

SCHEMA_ID = "https://rxagent.dev/schema/pipelines-v1.json"


def kind_schema(kind: Kind) -> dict[str, Any]:
    """The schema of ``{kind: parameters}`` (parameters may be the shorthand scalar)."""
    params = kind.params.model_json_schema(ref_template="#/$defs/{model}")
    defs = params.pop("$defs", {})
    params.pop("title", None)
    options: list[dict[str, Any]] = [params]
    if kind.shorthand is not None:
        options.append(copy.deepcopy(params["properties"][kind.shorthand]))
    if not any(info.is_required() for info in kind.params.model_fields.values()):
        options.append({"type": "null"})
    value: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    schema = {
        "type": "object",
        "description": kind.doc,
        "properties": {kind.name: value},
        "required": [kind.name],
        "additionalProperties": False,
    }
    if defs:
        schema["$defs"] = defs
    return schema


def _one_of(registry: Registry, role: Role, defs: dict[str, Any]) -> dict[str, Any]:
    options = []
    for kind in registry.kinds(role):
        schema = kind_schema(kind)
        defs.update(schema.pop("$defs", {}))
        options.append(schema)
        if kind.params.model_fields and not any(
            info.is_required() for info in kind.params.model_fields.values()
        ):
            options.append({"const": kind.name, "description": f"{kind.name} with defaults"})
    return {"oneOf": options}


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pipeline file."""
    registry = registry or default_registry()
    schema = DocumentModel.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    defs["Source"] = _one_of(registry, "source", defs)
    defs["Step"] = _one_of(registry, "operator", defs)
    defs["Sink"] = _one_of(registry, "sink", defs)
    pipeline = defs["PipelineModel"]
    props = pipeline["properties"]
    props["source"] = {"$ref": "#/$defs/Source", "description": props["source"]["description"]}
    props["steps"] = {
        "type": "array",
        "items": {"$ref": "#/$defs/Step"},
        "description": props["steps"]["description"],
    }
    props["sinks"] = {
        "type": "array",
        "items": {"$ref": "#/$defs/Sink"},
        "minItems": 1,
        "description": props["sinks"]["description"],
    }
    props["sink"] = {"$ref": "#/$defs/Sink", "description": "a single sink (instead of sinks)"}
    pipeline.pop("required", None)
    pipeline["required"] = ["source"]
    pipeline["oneOf"] = [{"required": ["sinks"]}, {"required": ["sink"]}]
    tools = schema["properties"]["tools"]
    tools["additionalProperties"] = {
        "anyOf": [
            {"type": "string", "description": "package.module:function"},
            {"$ref": "#/$defs/ToolModel"},
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "rxagent pipeline file",
        **_with_variables(schema),
    }


_VARIABLE = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": "${VAR} or ${VAR:-default}, replaced from the environment when loading",
}
_ONE_SCHEMA = ("items", "additionalProperties", "not")
_SCHEMA_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAP = ("properties", "$defs", "patternProperties")


def _with_variables(node: Any) -> Any:
    """``node`` where every number, boolean, enumerated or patterned string may
    also be a ``${VAR}`` string: the loader substitutes variables before it
    validates, so ``until_eof: ${EOF:-false}`` is valid."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ONE_SCHEMA:
            out[key] = _with_variables(value)
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [_with_variables(item) for item in value]
        elif key in _SCHEMA_MAP and isinstance(value, dict):
            out[key] = {name: _with_variables(item) for name, item in value.items()}
        else:
            out[key] = value
    typed = out.get("type") in ("boolean", "integer", "number") or (
        out.get("type") == "string" and ("enum" in out or "pattern" in out)
    )
    return {"anyOf": [out, _VARIABLE]} if typed else out
