"""Types flow through a pipeline file: ``rxagent validate`` checks expressions and tool
arguments against the shape the stages before them emit (rxagent.config.shapes), and
expressions read pydantic models by attribute and by field name alike."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from rxagent.config import ConfigFileError, loads
from rxagent.config.expressions import ExpressionEvaluationError, compile_expression

MODELS = """\
from pydantic import BaseModel


class Trade(BaseModel):
    sym: str
    px: float
    qty: int


def notify(sym: str, px: float, note: str = "") -> str:
    return f"{sym} {px} {note}"
"""

TRADES = ['{"sym": "AAPL", "px": 101.5, "qty": 3}', '{"sym": "MSFT", "px": 0.0, "qty": 1}']


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: a package beside the pipeline file."""
    (tmp_path / "shapes_pkg").mkdir()
    (tmp_path / "shapes_pkg" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "shapes_pkg" / "models.py").write_text(MODELS, encoding="utf-8")
    return tmp_path


EXE = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"


def _validate(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def _problems(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigFileError) as info:
        loads(textwrap.dedent(text), file="p.yaml", base_dir=base_dir)
    return [str(p) for p in info.value.problems]


# -- the case ------------------------------------------------------------------


def test_a_wrong_field_after_a_decode_model_is_a_located_validate_error(project: Path) -> None:
    pipeline = project / "feed.yaml"
    pipeline.write_text(
        textwrap.dedent(
            """\
            pipelines:
              feed:
                source:
                  memory: ['{"sym": "AAPL", "px": 101.5, "qty": 3}']
                steps:
                  - decode: {format: json, model: "shapes_pkg.models:Trade"}
                  - filter: value.price > 0
                sinks: [log]
            """
        ),
        encoding="utf-8",
    )
    proc = _validate(pipeline, cwd=project.parent)  # imports from the file's folder
    assert proc.returncode == 1
    assert (proc.stdout + proc.stderr).strip().splitlines()[-1] == (
        f"{pipeline}:7:17: pipelines.feed.steps[1].filter.predicate: value has no field "
        "'price' (fields of Trade: sym, px, qty); did you mean value.px?"
    )
    assert "Traceback" not in proc.stdout + proc.stderr

    pipeline.write_text(
        pipeline.read_text(encoding="utf-8").replace("value.price", "value.px"), encoding="utf-8"
    )
    proc = _validate(pipeline, cwd=project.parent)
    assert proc.returncode == 0, proc.stderr


async def test_a_model_reads_by_attribute_and_by_field_name_at_run_time(project: Path) -> None:
    config = loads(
        textwrap.dedent(
            f"""\
            state: {{last: {{}}}}
            pipelines:
              feed:
                source:
                  memory: {TRADES!r}
                steps:
                  - decode: {{format: json, model: "shapes_pkg.models:Trade"}}
                  - filter: 'value["px"] > 0 and "qty" in value'
                  - key_by: value.sym
                  - map: '{{"notional": value.px * value["qty"], "sym": value.sym}}'
                sinks:
                  - state: last
            """
        ),
        file="feed.yaml",
        base_dir=project,
    )
    built = config.build()
    await built.app.run(duration=0.5)
    assert built.dead_letters.letters == []  # type: ignore[attr-defined]
    assert built.stores["last"].snapshot.to_dict() == {"AAPL": {"notional": 304.5, "sym": "AAPL"}}


class Tick(BaseModel):
    sym: str
    px: float


def test_expressions_read_models_and_mappings_alike() -> None:
    tick = Tick(sym="A", px=2.0)
    expr = compile_expression('value.px > 1 and value["sym"] == "A"', kind="predicate")
    assert expr.evaluate_many([{"sym": "A", "px": 3}]) == [True]  # mappings, the fast forms
    assert expr(tick) is True
    assert expr.evaluate_many([tick, {"sym": "A", "px": 0}]) == [True, False]  # mixed
    low = Tick(sym="A", px=0.5)
    assert expr.evaluate_many([tick, low, tick]) == [True, False, True]  # one model class
    nested = compile_expression('{"px": value.px, "sym": value.sym}')
    assert nested.evaluate_many([tick, low]) == [{"px": 2.0, "sym": "A"}, {"px": 0.5, "sym": "A"}]
    assert expr.evaluate_event(tick, "k", None) is True
    assert compile_expression('get(value, "nope", 5)')(tick) == 5
    assert compile_expression('"px" in value')(tick) is True
    assert compile_expression('"__class__" in value')(tick) is False
    with pytest.raises(ExpressionEvaluationError, match=r"Tick has no field 'price'"):
        compile_expression("value.price")(tick)
    with pytest.raises(ExpressionEvaluationError, match="no field 'price'"):
        compile_expression("value.price")({"px": 1})
    with pytest.raises(ExpressionEvaluationError, match="no field 'model_dump'"):
        compile_expression("value.model_dump")(tick)  # fields only, never other attributes


# -- other certain errors --------------------------------------------------------------


def test_a_dict_literal_map_then_a_wrong_field() -> None:
    (problem,) = _problems(
        """\
        pipelines:
          feed:
            source: {memory: [{sym: A, px: 1.5, qty: 2}]}
            steps:
              - map: '{"sym": value.sym, "notional": value.px * value.qty}'
              - filter: value.notionl > 100
            sinks: [log]
        """
    )
    assert problem == (
        "p.yaml:6:17: pipelines.feed.steps[1].filter.predicate: value has no field 'notionl' "
        "(fields of map: sym, notional); did you mean value.notional?"
    )


def test_a_window_agg_then_a_wrong_field() -> None:
    (problem,) = _problems(
        """\
        pipelines:
          feed:
            source: {memory: [{sym: A, px: 1.5, qty: 2}]}
            steps:
              - key_by: sym
              - tumbling_window: {size: 1s, agg: {vwap: {mean: px}, trades: count}}
              - filter: value.value.vwp > 0 and value.count > 1
            sinks: [log]
        """
    )
    assert problem == (
        "p.yaml:7:17: pipelines.feed.steps[2].filter.predicate: value.value has no field 'vwp' "
        "(fields of agg: vwap, trades); did you mean value.value.vwap?"
    )


def test_a_window_agg_on_a_missing_field() -> None:
    (problem,) = _problems(
        """\
        pipelines:
          feed:
            source: {memory: [{sym: A, px: 1.5}]}
            steps:
              - count_window: {size: 2, agg: {mean: price}}
            sinks: [log]
        """
    )
    assert problem == (
        "p.yaml:5:45: pipelines.feed.steps[0].count_window.agg.mean: mean(price): value has "
        "no field 'price' (fields of item: sym, px); did you mean value.px?"
    )


def test_a_str_field_compared_with_a_number() -> None:
    (problem,) = _problems(
        """\
        pipelines:
          feed:
            source: {memory: [{sym: A, px: 1.5}]}
            steps:
              - filter: "value.px > 1 and value.sym >= 100"
            sinks: [log]
        """
    )
    assert problem == (
        "p.yaml:5:35: pipelines.feed.steps[0].filter.predicate: value.sym (str) >= 100 (int) "
        "compares types that have no order between them; every event would fail "
        "(convert one side: float(...), int(...) or str(...))"
    )


def test_a_plain_field_name_on_a_model(project: Path) -> None:
    problems = _problems(
        """\
        pipelines:
          feed:
            source: {memory: ['{"sym": "A", "px": 1, "qty": 1}']}
            steps:
              - decode: {model: "shapes_pkg.models:Trade"}
              - key_by: sym
              - count_window: {size: 2, agg: {sum: qty}}
            sinks: [log]
        """,
        base_dir=project,
    )
    assert problems == [
        "p.yaml:6:17: pipelines.feed.steps[1].key_by.key: Trade is a pydantic model, and a "
        "plain field name reads a mapping's item ('sym' is value['sym'] by item lookup, which "
        "a model does not have); write the expression value.sym",
        "p.yaml:7:44: pipelines.feed.steps[2].count_window.agg.sum: sum(qty) reads each "
        "value's item 'qty', and Trade is a pydantic model (no item lookup): add a step "
        "before the window that makes a mapping, e.g. map: '{\"qty\": value.qty}'",
    ]


def test_tool_arguments_against_the_tool_model(project: Path) -> None:
    problems = _problems(
        """\
        tools:
          notify: {function: "shapes_pkg.models:notify"}
        pipelines:
          feed:
            source: {memory: [{sym: A, px: 1.5, qty: 2}]}
            sinks:
              - tool: {tool: notify, args: {sym: value.sym, price: value.px}}
              - tool: {tool: notify, args: {sym: value.qty, px: value.px}}
              - tool: {tool: notify, args: '{"sym": value.sym, "px": value.px, "qty": 1}'}
              - tool: notify
        """,
        base_dir=project,
    )
    assert problems == [
        "p.yaml:7:53: pipelines.feed.sinks[0].tool.args.price: tool 'notify' has no argument "
        "'price'; did you mean 'px'? (its arguments: sym, px, note?)",
        "p.yaml:7:36: pipelines.feed.sinks[0].tool.args: tool 'notify' needs the argument "
        "'px', which args does not give (its arguments: sym, px, note?)",
        "p.yaml:8:42: pipelines.feed.sinks[1].tool.args.sym: argument 'sym' of tool 'notify' "
        "takes str, and pydantic cannot convert int",
        "p.yaml:9:36: pipelines.feed.sinks[2].tool.args: tool 'notify' has no argument 'qty', "
        "a field every map value has (its arguments: sym, px, note?); give args: a mapping "
        "of argument -> field or expression",
        "p.yaml:10:15: pipelines.feed.sinks[3].tool.args: tool 'notify' has no argument 'qty', a "
        "field every item value has (its arguments: sym, px, note?); give args: a mapping of "
        "argument -> field or expression",
    ]


def test_tool_argument_names_are_checked_when_the_value_is_unknown(project: Path) -> None:
    (problem,) = _problems(
        """\
        tools:
          notify: {function: "shapes_pkg.models:notify"}
        pipelines:
          feed:
            source: {websocket: "ws://127.0.0.1:9/"}
            sinks:
              - tool: {tool: notify, args: {sym: value.s, px: value.p, nte: value.n}}
        """,
        base_dir=project,
    )
    assert problem == (
        "p.yaml:7:64: pipelines.feed.sinks[0].tool.args.nte: tool 'notify' has no argument "
        "'nte'; did you mean 'note'? (its arguments: sym, px, note?)"
    )


def test_a_source_declares_its_shape_with_a_json_schema() -> None:
    problems = _problems(
        """\
        pipelines:
          feed:
            source:
              websocket:
                url: ws://127.0.0.1:9/
                value_schema:
                  type: object
                  properties: {sym: {type: string}, px: {type: number}}
                  required: [sym]
            steps:
              - filter: value.prc > 0
              - filter: value.sym > 1
            sinks: [log]
        """
    )
    assert problems == [
        "p.yaml:11:17: pipelines.feed.steps[0].filter.predicate: value has no field 'prc' "
        "(fields of value_schema: sym, px); did you mean value.px?",
        "p.yaml:12:17: pipelines.feed.steps[1].filter.predicate: value.sym (str) > 1 (int) "
        "compares types that have no order between them; every event would fail "
        "(convert one side: float(...), int(...) or str(...))",
    ]
    (problem,) = _problems(
        """\
        pipelines:
          feed:
            source: {memory: {items: [1], value_schema: {type: objet}}}
            sinks: [log]
        """
    )
    assert "value_schema.type: unknown type 'objet'" in problem


def test_only_what_is_certain_is_reported(project: Path) -> None:
    loads(
        textwrap.dedent(
            """\
            state: {s: {}}
            pipelines:
              feed:
                source: {memory: [{sym: A, px: 1.5}, {sym: B, px: 2, extra: 1}]}
                steps:
                  - filter: value.extra > 0 or value.px > 1  # 'extra' is in some items
                  - filter: '"bid" in value and value.bid > 1 or value.px > 0'  # guarded
                  - filter: get(value, "ask", 0) >= 0
                  - flat_map: '[value, value]'
                  - filter: value.anything > 0  # flat_map: unknown from here on
                sinks: [{state: {store: s, key: value.whatever}}]
            """
        ),
        file="p.yaml",
    )


# -- a property: fields drawn from the declared shape give no shape errors ------------

_FIELDS = {"sym": "str", "px": "float", "qty": "int", "ok": "bool"}
_VALUES = {"str": '"A"', "float": "1.5", "int": "2", "bool": "true"}
_ITEM = {"sym": "A", "px": 1.5, "qty": 2, "ok": True}


@st.composite
def _expressions(draw: Any) -> str:
    name = draw(st.sampled_from(sorted(_FIELDS)))
    access = draw(st.sampled_from(["value.{}", 'value["{}"]']))
    ref = access.format(name)
    kind = _FIELDS[name]
    if kind in ("float", "int"):
        op = draw(st.sampled_from([">", "<", ">=", "==", "!="]))
        other = draw(st.sampled_from(["1", "2.5", "value.px", "value.qty"]))
        return f"{ref} {op} {other}"
    if kind == "str":
        return draw(st.sampled_from([f'{ref} == "A"', f'{ref} < "B"', f'startswith({ref}, "A")']))
    return draw(st.sampled_from([ref, f"not {ref}", f"{ref} == true"]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_expressions(), min_size=1, max_size=4),
    st.booleans(),
    st.sampled_from(["memory", "schema"]),
)
def test_generated_valid_pipelines_give_no_shape_errors(
    predicates: list[str], window: bool, source: str
) -> None:
    if source == "memory":
        source_yaml = f"memory: [{_ITEM!r}]".replace("True", "true")
    else:
        props = {"sym": "string", "px": "number", "qty": "integer", "ok": "boolean"}
        properties = ", ".join(f"{k}: {{type: {t}}}" for k, t in props.items())
        source_yaml = (
            "websocket: {url: 'ws://127.0.0.1:9/', "
            f"value_schema: {{type: object, properties: {{{properties}}}}}}}"
        )
    steps = [f"      - filter: {p!r}" for p in predicates]
    steps.append('      - map: \'{"sym": value.sym, "px": value.px * 2, "big": value.qty > 1}\'')
    steps.append('      - filter: value.big and value.px > 0 and value.sym != ""')
    if window:
        steps.append("      - key_by: sym")
        steps.append("      - count_window: {size: 2, agg: {high: {max: px}, n: count}}")
        steps.append("      - filter: value.value.high > 1 and value.count >= 1")
    text = "\n".join(
        [
            "pipelines:",
            "  feed:",
            f"    source: {{{source_yaml}}}",
            "    steps:",
            *steps,
            "    sinks: [log]",
        ]
    )
    loads(text, file="gen.yaml")


def test_the_example_in_docs_yaml_is_what_validate_says() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "yaml.md").read_text(encoding="utf-8")
    section = doc.split("## Types flow through the file", 1)[1].split("\n## ", 1)[0]
    yaml_block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    text_block = section.split("```text\n", 1)[1].split("```", 1)[0]
    with pytest.raises(ConfigFileError) as info:
        loads(yaml_block, file="trades.yaml")
    assert [str(p) for p in info.value.problems] == text_block.strip().splitlines()
