"""The expression language of pipeline files: compile errors, results, batches, safety,
and the filter/map/key_by stages built on it."""

from __future__ import annotations

import textwrap
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxagent import PipelineError
from rxagent import operators as ops
from rxagent.config.expressions import (
    Expression,
    ExpressionError,
    ExpressionEvaluationError,
    compile_expression,
    expression_filter,
    expression_key_by,
    expression_map,
)
from rxagent.exceptions import ConfigurationError, RxAgentError
from rxagent.testing import run

# -- compiling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ('value.px > 100 && value.sym == "BTC"', 15, "write 'and'"),
        ("value.ok || value.px > 1", 9, "write 'or'"),
        ("!value.ok", 0, "write 'not'"),
        ("value.px >", 10, "ends too early"),
        ("  value.px +", 12, "ends too early"),
        ("(value.px", 0, "never closed"),
        ("px > 100", 0, "unknown name 'px'"),
        ("value.px > limit", 11, "unknown name 'limit'"),
        ("sqrt(value.px)", 0, "unknown function 'sqrt'"),
        ("value.sym.lower()", 10, "methods are not"),
        ("value.a | 1", 8, "operator '|' is not allowed"),
        ("value.a is None", 8, "'is' is not allowed"),
        ("[x for x in value]", 0, "list comprehension"),
        ("lambda: 1", 0, "lambda"),
        ("value.__class__", 6, "'__'"),
        ('value["__globals__"]', 6, "'__'"),
        ("len(value, 1)", 0, "takes 1 arguments, got 2"),
        ("max(*value)", 0, "positional arguments only"),
        ("value.px[1:2]", 9, "slices"),
        ("", 0, "empty expression"),
    ],
)
def test_compile_errors_say_what_and_where(text: str, column: int, fragment: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    error = caught.value
    assert error.text == text
    assert error.column == column, str(error)
    assert fragment in str(error)
    assert isinstance(error, ConfigurationError)
    assert isinstance(error, ValueError)  # what pydantic validators expect


def test_column_counts_characters_and_lines() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression('value.é == "€" and\n  value.x | 2')
    assert caught.value.column == 29
    with pytest.raises(ExpressionError) as caught:
        compile_expression("value.ok and\n  price > 1")
    assert caught.value.column == 15


def test_a_multiline_expression_compiles() -> None:
    expr = compile_expression("value.px > 100\n  and value.ok\n")
    assert expr({"px": 101, "ok": True}) is True


def test_names_lists_the_variables_used() -> None:
    assert compile_expression("value.px * 2").names() == frozenset({"value"})
    assert compile_expression("1 + 2").names() == frozenset()


def test_overlong_and_overdeep_expressions_are_refused() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        compile_expression("value.a + " * 1000 + "1")
    with pytest.raises(ExpressionError, match=r"nested deeper|cannot be parsed"):
        compile_expression("-" * 200 + "value.px")
    with pytest.raises(ExpressionError, match=r"nested deeper|cannot be parsed"):
        compile_expression("[" * 100 + "value.px" + "]" * 100)
    with pytest.raises(ExpressionError, match="too many nested parentheses"):
        compile_expression("(" * 250 + "value.px" + ")" * 250)


# -- results -------------------------------------------------------------------------------

TICK = {"sym": "BTC", "px": 101.5, "qty": 3, "tags": ["a", "b"], "meta": {"venue": "X"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('value.px > 100 and value.sym == "BTC"', True),
        ('value["px"] > 100', True),
        ("value.px * value.qty", 304.5),
        ("value.qty ** 2 - value.qty // 2 + value.qty % 2", 9 - 1 + 1),
        ("-value.qty", -3),
        ("not value.px", False),
        ("value.tags[0]", "a"),
        ("value.meta.venue", "X"),
        ('"b" in value.tags', True),
        ('"z" not in value.tags', True),
        ('"px" in value', True),
        ("100 < value.px < 102", True),
        ("100 < value.px < 101", False),
        ('lower(value.sym) + "-" + str(value.qty)', "btc-3"),
        ('startswith(value.sym, "B")', True),
        ('get(value, "missing", 0)', 0),
        ("len(value.tags)", 2),
        ("round(value.px)", 102),
        ("max(value.qty, 10)", 10),
        ('value.missing_flag if "missing_flag" in value else "n/a"', "n/a"),
        ("[value.sym, (value.qty, 1)]", ["BTC", [3, 1]]),
        ('{"symbol": value.sym, "n": value.qty}', {"symbol": "BTC", "n": 3}),
        ("{value.sym: value.qty}", {"BTC": 3}),
        ("true and not false", True),
        ("null", None),
        ("value.qty or 7", 3),
        ("0 or value.sym", "BTC"),
    ],
)
def test_results(text: str, expected: Any) -> None:
    expr = compile_expression(text)
    assert expr(TICK) == expected
    assert expr.evaluate_many([TICK, TICK]) == [expected, expected]


def test_predicates_always_give_bools() -> None:
    expr = compile_expression("value.qty", kind="predicate")
    assert expr({"qty": 3}) is True
    assert expr.evaluate_many([{"qty": 0}, {"qty": 2}]) == [False, True]
    assert all(type(r) is bool for r in expr.evaluate_many([{"qty": 0}, {"qty": 2}]))


def test_results_are_plain_python_values() -> None:
    got = compile_expression('{"a": (value.x, [value.x]), "b": value.x > 1}')({"x": 2})
    assert got == {"a": [2, [2]], "b": True}
    assert type(got["a"]) is list


def test_an_expression_is_a_callable_usable_anywhere() -> None:
    expr = compile_expression("value * 2")
    assert isinstance(expr, Expression)
    assert list(map(expr, [1, 2])) == [2, 4]
    assert "value * 2" in repr(expr)


# -- runtime errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "reason"),
    [
        ("value.px > 100", {"sym": "BTC"}, "no field 'px'"),
        ("value.px > 100", {"px": None}, "'>' not supported"),
        ("value.px / value.qty", {"px": 1, "qty": 0}, "division by zero"),
        ("value.tags[5]", {"tags": []}, "index out of range"),
        ("value.px", [1, 2], "list indices"),
    ],
)
def test_runtime_errors_name_the_expression_and_the_reason(
    text: str, value: Any, reason: str
) -> None:
    expr = compile_expression(text)
    for call in (lambda: expr(value), lambda: expr.evaluate_many([value])):
        with pytest.raises(ExpressionEvaluationError) as caught:
            call()
        error = caught.value
        assert error.text == text
        assert reason in error.reason
        assert text in str(error)
        assert isinstance(error, RxAgentError)
        assert not isinstance(error, ConfigurationError)


def test_a_guarded_field_evaluates_per_row_inside_a_batch() -> None:
    expr = compile_expression('"px" in value and value.px > 1')
    assert expr.evaluate_many([{"px": 2}, {}, {"px": 0}]) == [True, False, False]


# -- batches equal rows (property) ------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-1000, max_value=1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["BTC", "ETH", ""]),
)
records = st.fixed_dictionaries(
    {},
    optional={
        "px": scalars,
        "qty": scalars,
        "sym": scalars,
        "tags": st.lists(st.sampled_from(["a", "b"]), max_size=3),
    },
)

PROPERTY_EXPRESSIONS = [
    'value.px > 100 and value.sym == "BTC"',
    "value.px * 2 + value.qty",
    'get(value, "px", 0) or value.qty',
    "value.qty if value.px else -value.qty",
    '"a" in value.tags or not value.sym',
    "1 < value.px <= 50",
    '{"p": value.px, "t": len(value.tags)}',
    "[value.sym, value.px / value.qty]",
    '"px" in value and value.px != 0',
]


def _outcome(expr: Expression, value: Any) -> tuple[str, Any]:
    try:
        return ("ok", expr(value))
    except ExpressionEvaluationError:
        return ("error", None)


@settings(max_examples=150, deadline=None)
@given(
    text=st.sampled_from(PROPERTY_EXPRESSIONS),
    kind=st.sampled_from(["value", "predicate"]),
    values=st.lists(records, max_size=20),
)
def test_evaluate_many_equals_row_by_row(text: str, kind: Any, values: list[Any]) -> None:
    expr = compile_expression(text, kind=kind)
    rows = [_outcome(expr, v) for v in values]
    try:
        many = expr.evaluate_many(values)
    except ExpressionEvaluationError:
        assert any(status == "error" for status, _ in rows), "the batch failed, no row did"
        return
    assert rows == [("ok", r) for r in many]


# -- safety ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "value.__class__.__subclasses__()",
        "value.__class__",
        "(1).__class__",
        "getattr(value, 'x')",
        "open('/etc/passwd')",
        "eval('1')",
        "exec('x = 1')",
        "globals()",
        "[c for c in ().__class__.__bases__]",
        "type(value)",
        "f'{value}'",
        "value.x.__len__()",
        "(x := 1)",
    ],
)
def test_python_internals_are_out_of_reach(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(text)


def test_attribute_syntax_reads_items_never_attributes() -> None:
    class Spy(dict[str, Any]):
        secret = "attribute"

    expr = compile_expression("value.secret")
    with pytest.raises(ExpressionEvaluationError, match="no field 'secret'"):
        expr(Spy())
    with pytest.raises(ExpressionEvaluationError, match="not subscriptable"):
        compile_expression("value.real")(3)


@pytest.mark.parametrize(
    "text",
    [
        "10 ** 100000",
        "value.n ** value.n",
        "(2 ** 4000) ** 2",
        '"x" * 1000000000',
        "value.tags * 1000000000",
        "str(value.tags)",
    ],
)
def test_resource_bombs_fail_fast(text: str) -> None:
    expr = compile_expression(text)
    start = time.perf_counter()
    with pytest.raises(ExpressionEvaluationError):
        expr({"n": 10**6, "tags": ["a"]})
    assert time.perf_counter() - start < 0.5


# -- stages in a real pipeline --------------------------------------------------------------


async def test_expression_filter_keeps_matching_events_and_dead_letters_failures() -> None:
    ticks = [{"px": 101}, {"sym": "no px"}, {"px": 99}, {"px": "str"}, {"px": 150}] * 7
    result = await run(ticks, expression_filter("value.px > 100", name="hot"))
    assert result.values == [{"px": 101}, {"px": 150}] * 7
    assert len(result.dead_letters) == 14
    letters = result.dead_letters[:2]
    assert [d.stage for d in letters] == ["hot", "hot"]
    assert {d.error_type for d in letters} == {"ExpressionEvaluationError"}
    assert "no field 'px'" in letters[0].message
    assert "value.px > 100" in letters[0].message
    assert letters[0].event.value == {"sym": "no px"}
    stage = result.status.stages["hot"]
    assert stage["in"] == 35
    assert stage["out"] == 14
    assert stage["dropped"] == 7
    assert result.status.flow["pending"] == 0, "a row was not ended exactly once"


async def test_expression_map_builds_records_and_dead_letters_failures() -> None:
    expr = compile_expression('{"sym": value.sym, "notional": value.px * value.qty}')
    items = [
        {"sym": "A", "px": 2, "qty": 3},
        {"sym": "B", "px": 1},
        {"sym": "C", "px": 1, "qty": 1},
    ]
    result = await run(items, expression_map(expr))
    assert result.values == [{"sym": "A", "notional": 6}, {"sym": "C", "notional": 1}]
    assert [(d.stage, d.event.value["sym"]) for d in result.dead_letters] == [("map", "B")]
    assert [ev.position.offset for ev in result.events if ev.position] == [0, 2]
    assert result.status.flow["pending"] == 0


async def test_expression_key_by_sets_keys_and_refuses_unhashable_ones() -> None:
    items = [{"s": "a", "n": 1}, {"s": ["x"], "n": 2}, {"n": 3}, {"s": "b", "n": 4}]
    result = await run(items, expression_key_by("value.s"))
    assert result.keys == ["a", "b"]
    assert [d.event.value["n"] for d in result.dead_letters] == [2, 3]
    assert "a key must be a scalar" in result.dead_letters[0].message
    assert result.status.flow["pending"] == 0


async def test_fail_fast_turns_an_expression_failure_into_a_pipeline_failure() -> None:
    with pytest.raises(PipelineError, match="ExpressionEvaluationError"):
        await run([{"px": 1}, {}], expression_filter("value.px > 0"), fail_fast=True)


async def test_stages_take_compiled_expressions_and_strings_alike() -> None:
    compiled = await run(range(10), expression_filter(compile_expression("value % 2 == 0")))
    text = await run(range(10), expression_filter("value % 2 == 0"))
    assert compiled.values == text.values == [0, 2, 4, 6, 8]


def test_a_string_with_an_error_fails_when_the_stage_is_built() -> None:
    with pytest.raises(ExpressionError):
        expression_map("value.px +")


# -- the event's key and time ---------------------------------------------------------------


def test_key_and_time_are_variables_compiled_once() -> None:
    expr = compile_expression('{"sym": key, "px": value.px, "t": time}')
    assert expr.names() == {"value", "key", "time"}
    assert expr.uses_event
    assert expr.evaluate_event({"px": 1.0}, "BTC", 5.0) == {"sym": "BTC", "px": 1.0, "t": 5.0}
    # a batch's columns; None columns mean no event has a key (or a time)
    values = [{"px": 1.0}, {"px": 2.0}]
    assert expr.evaluate_events(values, ["A", "B"], None) == [
        {"sym": "A", "px": 1.0, "t": None},
        {"sym": "B", "px": 2.0, "t": None},
    ]
    assert expr.evaluate_events(values, None, [1.0, 2.0])[1] == {"sym": None, "px": 2.0, "t": 2.0}
    assert compile_expression("key[0]").evaluate_event(None, "XY", None) == "X"
    assert compile_expression("time > 0", kind="predicate").evaluate_events(
        [1, 2], None, [3.0, 0.0]
    ) == [True, False]
    # a value-only expression is the same under both calls, and not an event expression
    plain = compile_expression("value.px * 2")
    assert not plain.uses_event
    assert plain.evaluate_events(values, ["A", "B"], None) == plain.evaluate_many(values)
    assert plain.evaluate_event({"px": 3}, "A", 1.0) == plain({"px": 3}) == 6


def test_guards_on_key_and_time_work_inside_a_batch() -> None:
    expr = compile_expression("time != null and time > 10", kind="predicate")
    assert expr.evaluate_events([0, 1, 2], None, [None, 5.0, 20.0]) == [False, False, True]
    keyed = compile_expression('key != null and startswith(key, "T")', kind="predicate")
    assert keyed.evaluate_events([0, 1, 2], ["TEST", None, "A"], None) == [True, False, False]


def test_an_event_expression_without_key_or_time_fails_clearly() -> None:
    expr = compile_expression('key != "TEST"', kind="predicate")
    for call in (lambda: expr({"px": 1}), lambda: expr.evaluate_many([{"px": 1}])):
        with pytest.raises(ExpressionEvaluationError, match="reads the event's key, but only"):
            call()
    with pytest.raises(ExpressionEvaluationError, match="key and time"):
        compile_expression("[key, time]")(1)
    with pytest.raises(ExpressionEvaluationError, match="'<' not supported"):
        compile_expression("time < 1").evaluate_event(1, None, None)


def test_unknown_names_list_every_variable_and_callers_can_narrow_them() -> None:
    with pytest.raises(ExpressionError, match="the variables are value, key, time; for the field"):
        compile_expression("px > 1")
    with pytest.raises(ExpressionError) as caught:
        compile_expression("value.px > time", variables={"value"})
    assert caught.value.column == 11
    assert "the event's time is not available here: the variables here are value" in str(
        caught.value
    )


async def test_key_by_then_filter_on_key_and_map_with_time_in_a_pipeline() -> None:
    ticks = [{"sym": s, "px": float(i), "ts": 100.0 + i} for i, s in enumerate("ATBTA")]
    result = await run(
        ticks,
        ops.event_time("ts"),
        expression_key_by("value.sym + '-' + str(int(value.px) % 2)"),
        expression_filter('not startswith(key, "T")'),
        expression_map('{"k": key, "px": value.px, "age": 200 - time}', name="m"),
    )
    assert result.values == [
        {"k": "A-0", "px": 0.0, "age": 100.0},
        {"k": "B-0", "px": 2.0, "age": 98.0},
        {"k": "A-0", "px": 4.0, "age": 96.0},
    ]
    assert result.keys == ["A-0", "B-0", "A-0"]
    assert result.dead_letters == []
    assert result.status.flow["pending"] == 0


async def test_a_key_using_expression_dead_letters_only_the_failing_events() -> None:
    items = [{"n": i, "sym": s} for i, s in enumerate(["A", None, "B", "C", None])]
    result = await run(
        items,
        ops.key_by("sym"),
        expression_map('{"low": lower(key), "n": value.n}', name="low"),
        expression_key_by("key + time", name="k2"),  # time is None: every row fails
        batch_size=8,
    )
    assert result.values == []
    letters = result.dead_letters
    assert [(d.stage, d.event.value["n"]) for d in letters[:2]] == [("low", 1), ("low", 4)]
    assert letters[0].event.key is None
    assert "lower(key)" in letters[0].message
    assert [d.stage for d in letters[2:]] == ["k2"] * 3
    assert [d.event.key for d in letters[2:]] == ["A", "B", "C"]
    assert result.status.stages["low"]["out"] == 3
    assert result.status.flow["pending"] == 0

    kept = await run(
        items,
        ops.key_by("sym"),
        expression_filter('key > "A"', name="f"),  # None > "A" fails on rows 1 and 4
    )
    assert [v["n"] for v in kept.values] == [2, 3]
    assert [(d.stage, d.event.value["n"]) for d in kept.dead_letters] == [("f", 1), ("f", 4)]


def _built(text: str) -> Any:
    from rxagent.config import loads

    return loads(textwrap.dedent(text), file="t.yaml").build()


async def test_tool_args_read_the_event_key_and_time_from_a_yaml_file() -> None:
    built = _built(
        """\
        tools:
          alert: rxagent.demo:alert
        pipelines:
          p:
            source:
              memory:
                items:
                  - {sym: btc, move: 0.5, ts: 10}
                  - {sym: eth, move: 0.25, ts: 20}
            steps:
              - event_time: ts
              - key_by: upper(value.sym)
            sinks:
              - tool: {tool: alert, args: {symbol: key + "@" + str(time), move_pct: value.move}}
              - tool:
                  name: whole
                  tool: alert
                  args: '{"symbol": (key), "move_pct": value.move * 100}'
        """
    )
    sinks = built.sinks["p"]
    results: dict[str, list[Any]] = {"tool:alert": [], "whole": []}
    for name, got in results.items():
        sinks[name].results.subscribe(got.append)
    await built.app.run(duration=0.5)
    assert sorted(r.value for r in results["tool:alert"]) == [
        "ALERT BTC@10.0 moved +0.50%",
        "ALERT ETH@20.0 moved +0.25%",
    ]
    assert sorted(r.value for r in results["whole"]) == [
        "ALERT BTC moved +50.00%",
        "ALERT ETH moved +25.00%",
    ]


def test_value_only_places_refuse_key_and_time_when_the_file_is_built() -> None:
    with pytest.raises(ConfigurationError, match="the event's key is not available here"):
        _built(
            """\
            pipelines:
              p:
                source: {memory: {items: [{n: 1}]}}
                steps:
                  - event_time: value.n + len(key)
                sink: {log: {}}
            """
        )
