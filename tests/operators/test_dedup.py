"""dedup: each id once within the horizon (ids or seconds); repeats ended and counted."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from _helpers import VIRTUAL_MS
from hypothesis import given
from hypothesis import strategies as st
from reactivex.testing import TestScheduler

from rxagent import ConfigurationError
from rxagent import operators as ops
from rxagent.operators.dedup import dedup
from rxagent.testing import run
from rxagent.testing.marbles import assert_marbles, parse_marbles, run_marbles


def test_a_count_horizon_remembers_the_last_ids() -> None:
    run_ = assert_marbles(dedup(horizon=2), "-a-b-a-c-a-|", "-a-b---c-a-|")
    metrics = run_.ctx.stage("dedup").as_dict()
    assert (metrics["in"], metrics["out"], metrics["dropped"]) == (5, 4, 1)
    assert metrics["remembered"] == 2


def test_repeats_inside_one_batch_are_dropped_in_order() -> None:
    assert_marbles(dedup(horizon=2), "-(abaca)-|", "-(abca)--|")
    assert_marbles(dedup(horizon=10), "-(aab)-(ba)-|", "-(ab)-------|")


def test_the_horizon_is_exact_per_row_even_inside_one_batch() -> None:
    # a, b, c let through: with a horizon of 2 the last a comes after b and c, so it is new
    assert_marbles(dedup(horizon=2), "-(abca)-|", "-(abca)-|")
    assert_marbles(dedup(horizon=3), "-(abca)-|", "-(abc)--|")
    # an old id pushed out by the new ones of the same batch
    assert_marbles(dedup(horizon=2), "-a-(bca)-|", "-a-(bca)-|")


def test_a_time_horizon_forgets_ids_after_ttl_seconds() -> None:
    assert_marbles(dedup(ttl=0.003), "-a-a-a-a-|", "-a---a---|")
    # a repeat does not extend the horizon: a at 1, 3 (dropped), 4 (let through)
    assert_marbles(dedup(ttl=0.003), "-a-aa---|", "-a--a---|")


def test_both_horizons_apply() -> None:
    assert_marbles(dedup(horizon=1, ttl=0.010), "-a-b-a-a-|", "-a-b-a---|")
    assert_marbles(dedup(horizon=5, ttl=0.003), "-a-b-a-a-|", "-a-b-a---|")


def test_id_field_and_function() -> None:
    values = {"a": {"id": 1, "v": "x"}, "b": {"id": 1, "v": "y"}, "c": {"id": 2, "v": "z"}}
    assert_marbles(dedup("id", horizon=10), "-a-b-c-|", "-a---c-|", values)
    assert_marbles(dedup(lambda v: v["id"] % 2, horizon=10), "-a-b-c-|", "-a---c-|", values)


def test_per_key_sequence_numbers() -> None:
    values = {
        "a": {"sensor": "s1", "seq": 1},
        "b": {"sensor": "s2", "seq": 1},
        "c": {"sensor": "s1", "seq": 1},
        "d": {"sensor": "s1", "seq": 2},
    }
    assert_marbles(dedup("seq", key="sensor", horizon=100), "-a-b-c-d-|", "-a-b---d-|", values)


def test_the_event_key_scopes_ids_by_default() -> None:
    # value "a1": id "1" under key "a"
    values = {"p": "a1", "q": "b1", "r": "a1"}
    assert_marbles(
        dedup(lambda v: v[1], horizon=10),
        "-p-q-r-|",
        "-p-q---|",
        values,
        keys=lambda v: v[0],
    )


def test_errors_pass_on_and_disposal_stops() -> None:
    assert_marbles(dedup(horizon=5), "-a-a-#", "-a---#")
    assert_marbles(dedup(horizon=5), "-a-b-a-c-|", "-a-b", unsubscribe="^---!")


def test_a_failing_id_function_and_unhashable_ids_go_to_dead_letters() -> None:
    values: dict[str, Any] = {"a": {"id": 1}, "b": {}, "c": {"id": [1]}, "d": {"id": 1}}
    result = assert_marbles(dedup("id", horizon=5, name="ids"), "-(abcd)-|", "-a------|", values)
    assert [(d.stage, d.error_type) for d in result.dead_letters] == [
        ("ids", "KeyError"),
        ("ids", "TypeError"),
    ]
    assert "unhashable" in result.dead_letters[1].message
    metrics = result.ctx.stage("ids").as_dict()
    assert (metrics["in"], metrics["out"], metrics["dropped"], metrics["dead_lettered"]) == (
        4,
        1,
        1,
        2,
    )


def test_an_explicit_scheduler_is_the_clock() -> None:
    clock = TestScheduler()
    clock.advance_to(100.0)  # frozen: everything happens at 100 s on this clock
    assert_marbles(dedup(ttl=0.003, scheduler=clock), "-a-a-a-a-|", "-a-------|")


def test_bad_arguments_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="dedup: give horizon="):
        dedup("id")
    with pytest.raises(ConfigurationError, match="dedup: horizon must be >= 1"):
        dedup(horizon=0)
    with pytest.raises(ConfigurationError, match="dedup: horizon must be an int"):
        dedup(horizon=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="dedup: ttl"):
        dedup(ttl=-1)
    with pytest.raises(ConfigurationError, match="dedup: id must be"):
        dedup(3.5, horizon=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="dedup: key must be"):
        dedup(horizon=1, key=3.5)  # type: ignore[arg-type]


async def test_in_a_pipeline_repeats_end_and_the_source_finishes() -> None:
    items = [{"id": i % 7} for i in range(100)]
    result = await run(items, ops.key_by(lambda v: "all"), dedup("id", horizon=50), credit=8)
    assert [v["id"] for v in result.values] == list(range(7))
    assert result.status.stages["dedup"]["dropped"] == 93
    assert result.status.flow["pending"] == 0


def _diagram(batches: list[tuple[int, str]]) -> str:
    parts = []
    for gap, ids in batches:
        parts.append("-" * gap)
        parts.append(ids if len(ids) == 1 else f"({ids})")
    return "".join(parts) + "-|"


def _model(diagram: str, horizon: int | None, ttl_ms: int | None) -> list[tuple[int, str]]:
    """The specification, one row at a time."""
    remembered: OrderedDict[str, int] = OrderedDict()
    out = []
    for n in parse_marbles(diagram):
        if n.kind != "N":
            continue
        if ttl_ms is not None:
            for ident, at in list(remembered.items()):
                if at <= n.frame - ttl_ms:
                    del remembered[ident]
        if n.value in remembered:
            continue
        out.append((n.frame, n.value))
        remembered[n.value] = n.frame
        if horizon is not None and len(remembered) > horizon:
            remembered.popitem(last=False)
    return out


@given(
    batches=st.lists(
        st.tuples(st.integers(0, 4), st.text("abcdef", min_size=1, max_size=8)), max_size=12
    ),
    horizon=st.none() | st.integers(1, 6),
    ttl_ms=st.none() | st.integers(1, 15),
)
def test_each_id_once_within_the_horizon_and_nothing_lost(
    batches: list[tuple[int, str]], horizon: int | None, ttl_ms: int | None
) -> None:
    if horizon is None and ttl_ms is None:
        horizon = 3
    diagram = _diagram(batches)
    result = run_marbles(
        dedup(horizon=horizon, ttl=None if ttl_ms is None else ttl_ms * VIRTUAL_MS), diagram
    )
    got = [(n.frame, n.value) for n in result.notifications if n.kind == "N"]
    assert got == _model(diagram, horizon, ttl_ms)
    # delivered + dropped = input, and every dropped event was ended
    metrics = result.ctx.stage("dedup")
    total = sum(len(ids) for _, ids in batches)
    assert metrics.events_out + metrics.dropped == total == metrics.events_in
    assert result.flow.pending == 0
    # never twice within the horizon
    for i, (frame, ident) in enumerate(got):
        for later_frame, other in got[i + 1 :]:
            if other == ident:
                let_through_since = got[i + 1 : got.index((later_frame, other), i + 1)]
                assert (ttl_ms is not None and later_frame - frame >= ttl_ms) or (
                    horizon is not None and len(let_through_since) >= horizon
                )
                break
