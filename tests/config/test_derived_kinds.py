"""Kinds derived from a function's signature and docstring (rxagent.config.kinds.derive).

Adding an operator to pipeline files is one module (tests/config/every_nth.py
here), one test module (this one) and one registry line: the kind's parameters,
defaults, reference text and JSON Schema all come from the function.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Hashable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from every_nth import every_nth
from pydantic import Field

from rxagent import operators as ops
from rxagent.backoff import Backoff
from rxagent.config import ConfigFileError, Registry, loads
from rxagent.config.kinds import derived, register_builtins
from rxagent.config.schema import json_schema, reference_markdown
from rxagent.exceptions import ConfigurationError


def _registry() -> Registry:
    registry = Registry()
    register_builtins(registry)
    registry.add(derived("operator", every_nth, shorthand="n"))  # the one line
    return registry


PIPELINE = """\
state:
  kept: {}
pipelines:
  feed:
    source: {memory: {items: [{i: 1}, {i: 2}, {i: 3}, {i: 4}, {i: 5}, {i: 6}, {i: 7}], key: i}}
    steps:
      - every_nth: %s
    sinks:
      - state: kept
"""


def test_one_registry_line_puts_the_operator_in_the_reference_and_the_schema() -> None:
    registry = _registry()
    reference = reference_markdown(registry)
    assert "every_nth" in reference
    assert "Keep every ``n``-th event and drop the others." in reference
    assert "keep one event in this many (the n-th, the 2n-th, ...)" in reference

    schema = json_schema(registry)
    text = json.dumps(schema)
    assert "every_nth" in text
    document = {
        "pipelines": {
            "feed": {
                "source": {"memory": [1]},
                "steps": [{"every_nth": 3}, {"every_nth": {"n": 2, "name": "halve"}}],
                "sinks": ["log"],
            }
        }
    }
    jsonschema.validate(document, schema)  # the shorthand and the mapping are both valid
    document["pipelines"]["feed"]["steps"] = [{"every_nth": {"m": 2}}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


async def test_the_derived_kind_runs_in_a_pipeline_file() -> None:
    built = loads(PIPELINE % 3, file="p.yaml", registry=_registry()).build()
    await built.app.run(duration=0.5)
    assert sorted(built.stores["kept"].snapshot) == [3, 6]


def test_its_parameters_are_checked_at_load_with_the_location() -> None:
    with pytest.raises(ConfigFileError) as info:
        loads(PIPELINE % "{n: 2, every: 3}", file="p.yaml", registry=_registry())
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("p.yaml:7:")
    assert "every" in problem

    with pytest.raises(ConfigFileError) as info:
        loads(PIPELINE % "two", file="p.yaml", registry=_registry())
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("p.yaml:7:")
    assert "n" in problem

    # what only the function checks is reported at load too, with the location
    with pytest.raises(ConfigFileError) as info:
        loads(PIPELINE % 0, file="p.yaml", registry=_registry())
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("p.yaml:7:")
    assert "n must be an int >= 1, got 0" in problem


# -- the conventions of parameter types ---------------------------------------------------

CALLS: list[dict[str, Any]] = []


class Opaque:
    """Something only code can give."""


def everything(
    size: int,
    interval: float | timedelta,
    *,
    key: str | int | Callable[[Any], Hashable] | None = None,
    value: Callable[[Any], Any] | None = None,
    backoff: Backoff | None = None,
    agg: ops.Aggregation | dict[str, ops.Aggregation] | None = None,
    path: Path | None = None,
    mode: Literal["a", "b"] = "a",
    opaque: Opaque | None = None,
    scheduler: Any = None,
    name: str | None = None,
) -> ops.Operator:
    """Record what the kind passed.

    Args:
        size: a count.
        interval: a duration.
        key: a key.
        value: a function of the value.
        backoff: retry delays.
        agg: what a window emits.
        path: a file.
        mode: one of two.
        opaque: nothing YAML can write.
        name: the stage's name.
    """
    CALLS.append(dict(locals()))
    return ops.map(lambda v: v, name=name)


def _build(params: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    registry = Registry()
    register_builtins(registry)
    registry.add(derived("operator", everything, size=Field(ge=1)))
    text = textwrap.dedent(
        f"""\
        pipelines:
          feed:
            source: {{memory: [{{px: 1}}]}}
            steps:
              - everything: {json.dumps(params)}
            sinks: [log]
        """
    )
    CALLS.clear()
    loads(text, file="p.yaml", base_dir=tmp_path, registry=registry).build()
    assert CALLS  # (loading builds once to check; build() builds again)
    return CALLS[-1]


def test_parameter_types_follow_the_pipeline_file_conventions(tmp_path: Path) -> None:
    call = _build(
        {
            "size": 2,
            "interval": "250ms",
            "key": "sym",
            "value": "value.px * 2",
            "backoff": {"initial": "1s", "max_attempts": 2},
            "agg": {"avg": {"mean": "px"}},
            "path": "out.jsonl",
            "mode": "b",
        },
        tmp_path,
    )
    assert call["size"] == 2
    assert call["interval"] == 0.25
    assert call["key"] == "sym"  # a field is passed by name (the operator's itemgetter)
    assert call["value"]({"px": 4}) == 8  # an expression, compiled
    assert isinstance(call["backoff"], Backoff)
    assert call["backoff"].max_attempts == 2
    assert isinstance(call["agg"]["avg"], ops.Aggregation)
    assert call["path"] == tmp_path / "out.jsonl"
    assert call["mode"] == "b"
    assert call["opaque"] is None  # left to its default
    assert call["name"] is None

    # a python function by reference, and the defaults
    call = _build({"size": 1, "interval": 1, "value": "json:dumps"}, tmp_path)
    assert call["value"] is json.dumps
    assert call["key"] is None
    assert call["backoff"] is None
    assert call["mode"] == "a"


def test_constraints_given_as_fields_and_docstrings_describe_parameters() -> None:
    kind = derived("operator", everything, size=Field(ge=1))
    fields = kind.params.model_fields
    assert fields["size"].description == "a count"
    assert fields["size"].is_required()
    assert fields["interval"].is_required()
    assert "opaque" not in fields
    assert "scheduler" not in fields
    assert kind.doc == "Record what the kind passed."
    schema = kind.params.model_json_schema()
    assert schema["properties"]["size"]["minimum"] == 1


def test_what_a_file_cannot_write_is_refused_when_the_kind_is_made() -> None:
    def needs_object(thing: Opaque, *, name: str | None = None) -> ops.Operator:
        return ops.map(lambda v: v)

    with pytest.raises(ConfigurationError, match=r"parameter 'thing' .* cannot be written"):
        derived("operator", needs_object)
    with pytest.raises(ConfigurationError, match="no parameter named nope"):
        derived("operator", every_nth, nope=Field(ge=1))


def test_excluded_parameters_are_left_to_their_defaults() -> None:
    kind = derived("operator", everything, exclude=["mode", "path"])
    assert "mode" not in kind.params.model_fields
    assert "path" not in kind.params.model_fields
    with pytest.raises(ConfigurationError, match="a required parameter cannot be excluded"):
        derived("operator", everything, exclude=["size"])
