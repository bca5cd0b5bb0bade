"""Loading pipeline files: every problem located, secrets kept out of output."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxagent import operators as ops
from rxagent.config import (
    ConfigFileError,
    Kind,
    Registry,
    default_registry,
    load,
    loads,
)
from rxagent.config.kinds import Params
from rxagent.exceptions import ConfigurationError

GOOD = """\
version: 1
state:
  prices: {description: last window per symbol}
  big: {}
pipelines:
  feed:
    source:
      memory:
        items:
          - {sym: A, px: 1.0, seq: 1}
          - {sym: B, px: 2.0, seq: 2}
          - {sym: A, px: 3.0, seq: 3}
          - {sym: A, px: 3.0, seq: 3}
    steps:
      - dedup: {id: seq, horizon: 100}
      - key_by: sym
      - count_window: {size: 2, agg: {n: count, avg: {mean: px}, high: {max: px}}}
    sinks:
      - state: prices
  watch:
    source: {state: prices}
    sink: {state: {store: big}}
"""


def _problems(text: str, **options: object) -> list[str]:
    with pytest.raises(ConfigFileError) as info:
        loads(textwrap.dedent(text), file="p.yaml", **options)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


async def test_a_file_loads_builds_and_runs_into_state() -> None:
    config = loads(GOOD, file="good.yaml")
    assert list(config.pipelines) == ["feed", "watch"]
    built = config.build()
    await built.app.run(duration=0.3)
    prices = built.stores["prices"].snapshot
    assert prices["A"].value == {"n": 2, "avg": 2.0, "high": 3.0}
    assert prices["B"].value == {"n": 1, "avg": 2.0, "high": 2.0}  # partial at the end
    # the second pipeline reads the first's changes through the state source
    assert set(built.stores["big"].snapshot) == {"A", "B"}
    assert built.app.status()["feed"].state.value == "stopped"


def test_build_only_the_named_pipelines_and_refuse_unknown_names() -> None:
    config = loads(GOOD)
    assert list(config.build(pipelines=["feed"]).pipelines) == ["feed"]
    with pytest.raises(ConfigurationError, match="no pipeline named 'nope'"):
        config.build(pipelines=["nope"])


def test_every_problem_is_reported_with_file_line_and_column() -> None:
    problems = _problems(
        """\
        state:
          prices: {}
        tools:
          alert: rxagent.demo:no_such_function
        pipelines:
          feed:
            source:
              websockt: {url: "ws://127.0.0.1:1"}
            steps:
              - throttle_latest: {intervall: 5}
              - throttle_first: abc
              - tumbling_window: {size: 5, agg: {x: {median: px}}}
            sinks:
              - state: {store: pricez}
              - tool: {tool: alrt}
        """
    )
    text = "\n".join(problems)
    assert "p.yaml:4:10: tools.alert: module 'rxagent.demo' has no attribute" in text
    assert "p.yaml:8:7: pipelines.feed.source.websockt: unknown source kind 'websockt'; " in text
    assert "did you mean 'websocket'?" in text
    assert (
        "p.yaml:10:27: pipelines.feed.steps[0].throttle_latest.intervall: unknown parameter "
        "of throttle_latest 'intervall'; did you mean 'interval'?"
    ) in text
    assert "p.yaml:11:25: pipelines.feed.steps[1].throttle_first.interval: expected a duration" in (
        text
    )
    assert "unknown aggregation 'median'" in text
    assert "p.yaml:14:24: pipelines.feed.sinks[0].state.store: unknown state store 'pricez'" in text
    assert "p.yaml:15:22: pipelines.feed.sinks[1].tool.tool: unknown tool 'alrt'" in text
    assert "Traceback" not in text


def test_yaml_syntax_errors_are_located() -> None:
    [problem] = _problems("pipelines:\n  feed: [unclosed\n")
    assert problem.startswith("p.yaml:3:1: YAML syntax error")


def test_duplicate_keys_are_errors_not_silently_overwritten() -> None:
    problems = _problems(
        """\
        pipelines:
          feed:
            source: {memory: [1]}
            sinks: [log]
          feed:
            source: {memory: [2]}
            sinks: [log]
        """
    )
    assert problems == ["p.yaml:5:3: pipelines.feed: duplicate key 'feed'"]


def test_a_state_read_but_never_written_is_an_error() -> None:
    [problem] = _problems(
        """\
        state: {orphan: {}}
        pipelines:
          watch:
            source: {state: orphan}
            sinks: [log]
        """
    )
    assert problem == (
        "p.yaml:4:21: pipelines.watch.source.state.store: pipeline reads state store "
        "'orphan' but no pipeline writes it (add a sink - state: orphan)"
    )


def test_constructor_checks_are_reported_at_load_with_the_location() -> None:
    [problem] = _problems(
        """\
        pipelines:
          feed:
            source: {memory: [{seq: 1}, {seq: 2}]}
            steps:
              - dedup: seq
            sinks: [log]
        """
    )
    assert problem.startswith("p.yaml:5:16: pipelines.feed.steps[0].dedup: dedup: give horizon=")


def test_missing_sections_and_wrong_shapes() -> None:
    [problem] = _problems("version: 1\n")
    assert problem.startswith("p.yaml:1:1: pipelines: missing required parameter 'pipelines'")
    [problem] = _problems("- just\n- a list\n")
    assert "expected a mapping with pipelines:, got a list" in problem
    [problem] = _problems(
        """\
        pipelines:
          feed:
            source: {memory: [1], kafka: {}}
            sinks: [log]
        """
    )
    assert "a source must be {kind: parameters} with one kind" in problem
    assert "got a mapping with 2 keys (memory, kafka)" in problem


def test_environment_variables_fill_values_and_never_appear_in_errors() -> None:
    text = """\
    pipelines:
      feed:
        source:
          websocket:
            url: "ws://127.0.0.1:${PORT:-8765}/feed"
            token: "${FEED_TOKEN}"
            ping_interval: PING
        sinks: [log]
    """
    env = {"FEED_TOKEN": "s3cr3t-value"}
    problems = _problems(text.replace("PING", "not-a-duration-${FEED_TOKEN}"), environ=env)
    assert problems
    assert all("s3cr3t-value" not in p for p in problems)
    assert "not-a-duration-***" in "\n".join(problems)
    config = loads(textwrap.dedent(text.replace("PING", "5s")), environ=env)
    source = config.pipelines["feed"].source.params
    assert source.url == "ws://127.0.0.1:8765/feed"
    assert source.token == "s3cr3t-value"
    assert source.ping_interval == 5.0
    assert config.redact(f"token={source.token}") == "token=***"


def test_an_unset_variable_without_default_is_located() -> None:
    [problem] = _problems(
        """\
        pipelines:
          feed:
            source: {websocket: {url: "ws://127.0.0.1:1", token: "${NOT_SET_ANYWHERE}"}}
            sinks: [log]
        """,
        environ={},
    )
    assert problem.startswith("p.yaml:3:58: pipelines.feed.source.websocket.token:")
    assert "environment variable NOT_SET_ANYWHERE is not set" in problem


def test_load_reads_files_and_resolves_paths_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rec.jsonl").write_text("")
    (tmp_path / "p.yaml").write_text(
        "pipelines:\n  r:\n    source: {replay: data/rec.jsonl}\n    sinks: [log]\n"
    )
    config = load(tmp_path / "p.yaml")
    assert config.document.base_dir == tmp_path.resolve()
    with pytest.raises(ConfigurationError, match="cannot read pipeline file"):
        load(tmp_path / "missing.yaml")


def test_every_public_operator_has_a_yaml_kind() -> None:
    registry = default_registry()
    helpers = {
        "Aggregation", "BatchHandler", "CircuitBreaker", "CircuitOpenError", "CircuitOperator",
        "CircuitState", "CircuitTransition", "Gap", "Operator", "ReorderOperator",
        "RetryOperator", "RetryStatus", "Window", "WindowOperator", "batch_stage",
        # aggregations are YAML values of a window's agg:, not steps
        "collect", "count", "first", "last", "max_", "mean", "min_", "reduce", "sum_",
    }  # fmt: skip
    missing = [
        name
        for name in ops.__all__
        if name not in helpers and registry.get("operator", name) is None
    ]
    assert missing == []


def test_plugins_add_kinds_and_names_cannot_be_taken_twice() -> None:
    class UpperParams(Params):
        field: str

    registry = Registry()
    kind = Kind("operator", "upper", UpperParams, lambda p, ctx: ops.map(str.upper))
    registry.add(kind)
    assert registry.get("operator", "upper") is kind
    with pytest.raises(ConfigurationError, match="already registered"):
        registry.add(kind)
    registry.add(kind, replace=True)
    with pytest.raises(ConfigurationError, match="shorthand 'nope' is not a parameter"):
        Kind("operator", "bad", UpperParams, lambda p, ctx: None, shorthand="nope")


# -- the property: whatever is malformed, one located, readable error -----------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.sampled_from(["", "x", "5s", "ws://127.0.0.1:1", "value.px > 1", "sym", "]["]),
)
_names = st.sampled_from(
    ["pipelines", "source", "steps", "sinks", "sink", "state", "tools", "memory", "filter",
     "key_by", "throttle_latest", "tumbling_window", "log", "items", "size", "interval",
     "websocket", "url", "store", "prices", "feed", "version", "settings", "tool"]
)  # fmt: skip
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_names, children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_malformed_documents_give_located_errors_never_crashes(doc: object) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        loads(text, file="gen.yaml", environ={})
    except ConfigFileError as error:
        lines = str(error).splitlines()
    else:
        return
    assert lines
    for line in lines:
        assert re.match(r"^gen\.yaml:\d+:\d+: ", line), line
        assert "Traceback" not in line


def _mutations() -> st.SearchStrategy[str]:
    lines = GOOD.splitlines()

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(out) - 1))
            action = draw(st.sampled_from(["drop", "dup", "indent", "dedent", "garble"]))
            if action == "drop":
                del out[i]
            elif action == "dup":
                out.insert(i, out[i])
            elif action == "indent":
                out[i] = "  " + out[i]
            elif action == "dedent":
                out[i] = out[i][2:] if out[i].startswith("  ") else out[i]
            else:
                out[i] = out[i].replace(":", draw(st.sampled_from(["", " -", ": [", ":{"])), 1)
            if not out:
                out = ["x"]
        return "\n".join(out) + "\n"

    return mutate()


@settings(max_examples=300, deadline=None)
@given(_mutations())
def test_mutated_good_files_load_or_give_located_errors(text: str) -> None:
    try:
        loads(text, file="m.yaml")
    except ConfigFileError as error:
        lines = str(error).splitlines()
    else:
        return
    for line in lines:
        assert re.match(r"^m\.yaml:\d+:\d+: ", line), line


async def test_plain_names_are_fields_and_constants_are_expressions() -> None:
    text = """\
    state: {out: {}}
    pipelines:
      p:
        source: {memory: [{ok: 0, n: 1, k: a}, {ok: 1, n: 2, k: b}]}
        steps:
          - filter: ok          # the field ok
          - filter: "true"      # the constant, not a field named true
          - key_by: k
          - map: n
        sinks: [{state: out}]
    """
    built = loads(textwrap.dedent(text)).build()
    await built.app.run()
    assert built.stores["out"].snapshot.to_dict() == {"b": 2}


def test_a_plugin_registers_kinds_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a real installed distribution (a dist-info folder on sys.path), not a stub
    (tmp_path / "rxagent_upper_plugin.py").write_text(
        textwrap.dedent(
            """\
            from rxagent import operators as ops
            from rxagent.config import Kind
            from rxagent.config.kinds import StageParams


            class UpperParams(StageParams):
                field: str


            def register(registry):
                registry.add(
                    Kind(
                        "operator", "upper", UpperParams,
                        lambda p, ctx: ops.map(lambda v: {**v, p.field: v[p.field].upper()}),
                        shorthand="field",
                    )
                )
            """
        )
    )
    info = tmp_path / "rxagent_upper_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: rxagent-upper-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[rxagent.kinds]\nupper = rxagent_upper_plugin:register\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from rxagent.config.kinds import register_builtins

    registry = Registry()
    register_builtins(registry)
    config = loads(
        "state: {out: {}}\n"
        "pipelines:\n  p:\n    source: {memory: [{s: abc, k: 1}]}\n"
        "    steps: [{upper: s}, {key_by: k}]\n    sinks: [{state: out}]\n",
        registry=registry,
    )
    assert config.pipelines["p"].steps[0].kind.name == "upper"
    assert "upper" in registry.names("operator")


async def test_map_filter_and_key_by_take_a_python_function_instead() -> None:
    text = """\
    state: {out: {}}
    pipelines:
      p:
        source: {memory: [0, 3, 12]}
        steps:
          - filter: {function: "builtins:bool"}
          - map: {function: "builtins:str"}
          - key_by: {function: "builtins:len"}
        sinks: [{state: out}]
    """
    built = loads(textwrap.dedent(text)).build()
    await built.app.run()
    assert built.stores["out"].snapshot.to_dict() == {1: "3", 2: "12"}

    [both] = _problems(
        text.replace('{function: "builtins:str"}', '{expr: n, function: "builtins:str"}')
    )
    assert "pipelines.p.steps[1].map: give expr (a field or an expression) or function" in both
    [neither] = _problems(text.replace('{function: "builtins:len"}', "{name: k}"))
    assert "pipelines.p.steps[2].key_by: give key (a field or an expression) or function" in (
        neither
    )


def test_memory_bounds_are_options_of_pipeline_files() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        pipelines:
          p:
            source: {memory: {items: [{k: a, seq: 1}], credit_bytes: 4096}}
            steps:
              - reorder: {seq: seq, key: k, max_delay: 1s, key_idle: 30s, max_keys: 50}
            sinks: [{log: {}}]
          q:
            source: {memory: {items: [1], credit_bytes: null}}
            sinks: [{log: {}}]
        """
    )
    built = loads(text, file="bounds.yaml").build()
    assert built.pipelines["p"].source.credit_bytes == 4096
    assert built.pipelines["q"].source.credit_bytes is None
    with pytest.raises(
        ConfigFileError,
        match=r"bounds.yaml:6:77: .*reorder.max_keys: Input should be greater than or equal to 1",
    ):
        loads(text.replace("max_keys: 50", "max_keys: 0"), file="bounds.yaml").build()
