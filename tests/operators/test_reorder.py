"""reorder: sequence order per key, held events keep their credit, gaps after max_delay."""

from __future__ import annotations

import string
from typing import Any

import pytest
from _helpers import VIRTUAL_MS
from hypothesis import given
from hypothesis import strategies as st
from reactivex import operators as rxops

from rxagent import ConfigurationError
from rxagent import operators as ops
from rxagent.operators.reorder import Gap, reorder
from rxagent.testing import run
from rxagent.testing.marbles import assert_marbles, parse_marbles, run_marbles


def numbered(**chars: int) -> dict[str, dict[str, int]]:
    return {c: {"n": n} for c, n in chars.items()}


V = numbered(a=1, b=2, c=3, d=4, e=5, f=6)


def test_early_events_wait_for_the_missing_ones() -> None:
    run_ = assert_marbles(reorder("n", max_delay=0.010), "-a-c-b---d-|", "-a---(bc)d-|", V)
    metrics = run_.ctx.stage("reorder").as_dict()
    assert (metrics["in"], metrics["out"], metrics["dropped"], metrics["held"]) == (4, 4, 0, 0)


def test_events_in_order_pass_unchanged() -> None:
    assert_marbles(reorder("n", max_delay=0.010), "-a-(bc)-d-|", "-a-(bc)-d-|", V)


def test_after_max_delay_a_gap_is_reported_and_the_stream_moves_on() -> None:
    op = reorder("n", max_delay=0.005, emit_gaps=True)
    gaps: list[Gap] = []
    op.gaps.subscribe(gaps.append)
    run_ = assert_marbles(
        op,
        "-a-c-b-e---------|",
        "-a---(bc)---(ge)-|",
        V,
        expected_values={**V, "g": Gap(None, 4, 5)},
    )
    assert gaps == [Gap(None, 4, 5)]
    assert gaps[0].missing == 1
    extra = run_.ctx.stage("reorder").extra
    assert (extra["gaps"], extra["missing"]) == (1, 1)


def test_gaps_stay_out_of_the_main_stream_by_default() -> None:
    op = reorder("n", max_delay=0.002)
    gaps: list[Gap] = []
    op.gaps.subscribe(gaps.append)
    assert_marbles(op, "-a-d-----|", "-a---d---|", V)
    assert gaps == [Gap(None, 2, 4)]


def test_a_late_number_after_its_gap_is_dropped_and_counted() -> None:
    run_ = assert_marbles(reorder("n", max_delay=0.002), "-a-c---b-|", "-a---c---|", V)
    assert run_.ctx.stage("reorder").dropped == 1


def test_duplicates_of_emitted_and_of_held_numbers_are_dropped() -> None:
    values = {**V, "A": {"n": 1}, "C": {"n": 3}}
    run_ = assert_marbles(
        reorder("n", max_delay=0.010), "-a-A-c-C-b-----|", "-a-------(bc)--|", values
    )
    assert run_.ctx.stage("reorder").dropped == 2
    assert [v["n"] for v in run_.values] == [1, 2, 3]
    assert run_.values[2] is values["c"], "the first of two held duplicates is kept"


def test_sequences_are_per_key() -> None:
    values = {
        "a": {"k": "x", "n": 1},
        "b": {"k": "y", "n": 7},
        "c": {"k": "x", "n": 3},
        "d": {"k": "y", "n": 8},
        "e": {"k": "x", "n": 2},
    }
    assert_marbles(reorder("n", key="k", max_delay=0.010), "-(abcde)-|", "-(abdec)-|", values)


def test_the_event_key_is_the_default_scope() -> None:
    values = {"a": ("x", 1), "b": ("y", 5), "c": ("x", 3), "d": ("x", 2)}
    assert_marbles(
        reorder(1, max_delay=0.010),
        "-a-b-c-d----|",
        "-a-b---(dc)-|",
        values,
        keys=lambda v: v[0],
    )


def test_start_makes_the_first_number_known() -> None:
    op = reorder("n", max_delay=0.004, start=1, emit_gaps=True)
    assert_marbles(op, "-b-a----|", "---(ab)-|", V)
    assert_marbles(op, "-b-------|", "-----(gb)|", V, expected_values={**V, "g": Gap(None, 1, 2)})


def test_max_delay_zero_never_holds() -> None:
    op = reorder("n", max_delay=0, emit_gaps=True)
    assert_marbles(op, "-a-c-b-|", "-a-(gc)|", V, expected_values={**V, "g": Gap(None, 2, 3)})


def test_completion_flushes_what_is_held_in_order_with_gaps() -> None:
    op = reorder("n", max_delay=1.0, emit_gaps=True)
    assert_marbles(
        op,
        "-a-f-d-|",
        "-a-----(gdhf|)",
        V,
        expected_values={**V, "g": Gap(None, 2, 4), "h": Gap(None, 5, 6)},
    )


def test_an_upstream_error_passes_on_and_held_events_are_ended() -> None:
    run_ = assert_marbles(reorder("n", max_delay=1.0), "-a-c-#", "-a---#", V)
    assert run_.flow.pending == 0


def test_disposal_ends_held_events_and_cancels_the_timer() -> None:
    run_ = run_marbles(reorder("n", max_delay=0.005), "-a-c-d-----|", V, unsubscribe=4)
    assert [v["n"] for v in run_.values] == [1]
    assert run_.flow.pending == 0, "held events are ended on disposal"
    assert_marbles(reorder("n", max_delay=0.005), "-a-b-c-|", "-a-b", V, unsubscribe="^---!")


def test_a_downstream_error_on_the_timer_is_routed_not_raised() -> None:
    def fragile(source: Any) -> Any:
        def boom(batch: Any) -> Any:
            if any(v["n"] == 3 for v in batch.values):
                raise RuntimeError("sink broke")
            return batch

        return source.pipe(rxops.map(boom))

    run_ = run_marbles(
        lambda s: fragile(reorder("n", max_delay=0.002)(s)), "-a-c-----|", V, end_outputs=False
    )
    assert [n.kind for n in run_.notifications] == ["N", "E"]
    assert run_.notifications[1].frame == 5, "the timer's emission failed at its deadline"


def test_bad_sequence_numbers_go_to_dead_letters() -> None:
    values: dict[str, Any] = {**V, "x": {"n": "3"}, "y": {}}
    run_ = assert_marbles(
        reorder("n", max_delay=0.010, name="seq"), "-a-x-y-b-|", "-a-----b-|", values
    )
    assert [(d.stage, d.error_type) for d in run_.dead_letters] == [
        ("seq", "TypeError"),
        ("seq", "KeyError"),
    ]
    assert "seq must be an int" in run_.dead_letters[0].message


def test_bad_arguments_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="reorder: max_delay"):
        reorder("n", max_delay=-1)
    with pytest.raises(ConfigurationError, match="reorder: max_delay"):
        reorder("n", max_delay=float("inf"))
    with pytest.raises(ConfigurationError, match="reorder: seq must be"):
        reorder(2.5, max_delay=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="reorder: key must be"):
        reorder("n", max_delay=1, key=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="reorder: start"):
        reorder("n", max_delay=1, start="1")  # type: ignore[arg-type]


async def test_in_a_pipeline_pairs_swapped_come_out_sorted() -> None:
    items = []
    for i in range(0, 200, 2):
        items += [{"n": i + 1}, {"n": i}]
    result = await run(items, reorder("n", max_delay=30.0, start=0), credit=8, batch_size=3)
    assert [v["n"] for v in result.values] == list(range(200))
    assert result.status.flow["pending"] == 0
    assert result.status.flow["peak_in_flight"] <= 8


async def test_in_a_pipeline_with_key_by() -> None:
    items = [{"k": k, "n": n} for n in (2, 1, 3) for k in "ab"]
    result = await run(items, ops.key_by("k"), reorder("n", max_delay=30.0, start=1))
    assert [(v["k"], v["n"]) for v in result.values] == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
        ("a", 3),
        ("b", 3),
    ]


# -- properties ---------------------------------------------------------------------

UNIT = 10  # frames between possible arrival times: room for a group of up to 8 events


def _diagram(arrivals: dict[int, list[str]]) -> str:
    """Events at ``unit * UNIT`` frames, written with time progressions."""
    parts: list[str] = []
    t = 0
    for unit in sorted(arrivals):
        chars = arrivals[unit]
        at = unit * UNIT
        if at > t:
            parts.append(f" {at - t}ms ")
        parts.append(chars[0] if len(chars) == 1 else "(" + "".join(chars) + ")")
        t = at + (1 if len(chars) == 1 else len(chars) + 2)
    return "".join(parts) + " 100ms |"


@st.composite
def _feeds(
    draw: st.DrawFn, *, max_disorder: int | None, keys: str = "xy"
) -> tuple[dict[str, Any], str, int]:
    """Two keys' sequences 0..n-1 sent one unit apart, each delayed a few units.

    With ``max_disorder`` the delays stay under it (and there are no repeats);
    without, anything goes: long delays and duplicates."""
    values: dict[str, Any] = {}
    arrivals: dict[int, list[str]] = {}
    letters = iter(string.ascii_letters)
    disorder = max_disorder if max_disorder is not None else 6
    for k in keys:
        n = draw(st.integers(0, 6 if len(keys) > 1 else 12))
        for s in range(n):
            copies = 1 if max_disorder is not None else draw(st.integers(1, 2))
            for _ in range(copies):
                c = next(letters)
                values[c] = {"k": k, "n": s, "id": c}
                unit = s + draw(st.integers(0, disorder - 1))
                arrivals.setdefault(unit, []).append(c)
    for unit in arrivals:
        arrivals[unit] = draw(st.permutations(arrivals[unit]))
    return values, _diagram(arrivals), disorder


def _per_key(out: list[Any]) -> dict[str, list[Any]]:
    keys: dict[str, list[Any]] = {"x": [], "y": []}
    for v in out:
        # without keys, a gap's key is None: the one sequence is "x"
        keys[(v.key or "x") if isinstance(v, Gap) else v["k"]].append(v)
    return keys


@given(keyed=st.booleans(), data=st.data())
def test_bounded_disorder_comes_out_in_order_with_nothing_missing(
    keyed: bool, data: st.DataObject
) -> None:
    feed = data.draw(_feeds(max_disorder=3, keys="xy" if keyed else "x"))
    values, diagram, disorder = feed
    op = reorder(
        "n",
        key="k" if keyed else None,
        max_delay=disorder * UNIT * VIRTUAL_MS,
        start=0,
        emit_gaps=True,
    )
    result = run_marbles(op, diagram, values)
    for k, out in _per_key(result.values).items():
        sent = sorted(v["n"] for v in values.values() if v["k"] == k)
        assert [v["n"] for v in out] == sent, f"key {k}: {out}"
    metrics = result.ctx.stage("reorder")
    assert metrics.dropped == 0
    assert metrics.events_out == len(values)
    assert result.flow.pending == 0


@given(
    keyed=st.booleans(),
    data=st.data(),
    max_delay_units=st.integers(0, 4),
)
def test_any_disorder_stays_in_order_accounts_for_every_event_and_every_gap(
    keyed: bool, data: st.DataObject, max_delay_units: int
) -> None:
    # keyed: two sequences by the "k" field; else one sequence (no keys at all)
    feed = data.draw(_feeds(max_disorder=None, keys="xy" if keyed else "x"))
    values, diagram, _ = feed
    op = reorder(
        "n",
        key="k" if keyed else None,
        max_delay=max_delay_units * UNIT * VIRTUAL_MS,
        start=0,
        emit_gaps=True,
    )
    result = run_marbles(op, diagram, values)
    metrics = result.ctx.stage("reorder")
    assert metrics.events_out + metrics.dropped == len(values) == metrics.events_in
    assert result.flow.pending == 0
    for out in _per_key(result.values).values():
        covered = 0  # every number up to the last emitted is emitted or inside a gap
        for v in out:
            if isinstance(v, Gap):
                assert v.expected == covered < v.got
                covered = v.got
            else:
                assert v["n"] == covered, "in order, each gap announced before it"
                covered += 1
    # no event waits longer than max_delay (to the frame) before it is emitted
    arrived = {n.value["id"]: n.frame for n in _parse(diagram, values)}
    for n in result.notifications:
        if n.kind == "N" and not isinstance(n.value, Gap) and n.frame < _end(diagram):
            assert n.frame - arrived[n.value["id"]] <= max_delay_units * UNIT + 1


def _parse(diagram: str, values: dict[str, Any]) -> list[Any]:
    return [n for n in parse_marbles(diagram, values) if n.kind == "N"]


def _end(diagram: str) -> int:
    return next(n.frame for n in parse_marbles(diagram) if n.kind == "C")
