"""The marble toolkit: RxJS syntax, rendering, running operators in virtual time."""

from __future__ import annotations

import pytest
from reactivex import operators as rxops

from rxagent import operators as ops
from rxagent.testing.marbles import (
    MarbleError,
    assert_marbles,
    parse_marbles,
    parse_subscription,
    render_marbles,
    run_marbles,
)


def frames(diagram: str, **kw: object) -> list[tuple[int, str, object]]:
    return [(n.frame, n.kind, n.value) for n in parse_marbles(diagram, **kw)]  # type: ignore[arg-type]


def test_one_character_one_value_and_groups_take_their_width() -> None:
    assert frames("--a-(bc)-|") == [(2, "N", "a"), (4, "N", "b"), (4, "N", "c"), (9, "C", None)]


def test_spaces_are_ignored_and_never_merge() -> None:
    assert frames("a b  c") == frames("abc")


def test_time_progression_and_values() -> None:
    assert frames("a 10ms b 1.5s c|", values={"a": 1}) == [
        (0, "N", 1),
        (11, "N", "b"),
        (1512, "N", "c"),
        (1513, "C", None),
    ]
    assert frames("a 1s b", frame=0.5) == [(0, "N", "a"), (3, "N", "b")]


def test_hot_subscription_point_is_time_zero() -> None:
    assert frames("a-^-b-|") == [(-2, "N", "a"), (2, "N", "b"), (4, "C", None)]


def test_errors_name_the_column() -> None:
    with pytest.raises(MarbleError, match="nested group at column 2"):
        parse_marbles("((a))")
    with pytest.raises(MarbleError, match="not closed"):
        parse_marbles("(ab")
    with pytest.raises(MarbleError, match="subscription marbles"):
        parse_marbles("a!")


def test_subscription_marbles() -> None:
    assert parse_subscription("^---!") == (0, 4)
    assert parse_subscription("--^") == (2, None)


def test_render_round_trips() -> None:
    for diagram in ["--a-(bc)-|", "a---b--#", "-(ab)c|"]:
        assert render_marbles(parse_marbles(diagram))[0] == diagram


def test_assert_marbles_passes_and_checks_the_flow_rule() -> None:
    run = assert_marbles(ops.filter(lambda v: v != "b"), "-a-b-c-|", "-a---c-|")
    assert run.flow.pending == 0
    assert run.subscriptions == [(0, 7)]  # completion unsubscribes, as in RxJS


def test_a_mismatch_shows_both_diagrams_aligned() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(ops.map(str.upper), "-a-b-|", "-A-C-|")
    message = str(info.value)
    assert "  expected: -A-C-|" in message
    assert "  actual:   -A-B-|" in message


def test_an_operator_that_swallows_events_is_caught() -> None:
    def black_hole(source):  # type: ignore[no-untyped-def]
        return source.pipe(rxops.filter(lambda b: False))

    with pytest.raises(AssertionError, match="2 source events never ended"):
        assert_marbles(black_hole, "-a-b-|", "-----|")


def test_unsubscribe_marble_disposes() -> None:
    run = run_marbles(ops.map(str.upper), "-a-b-c-|", unsubscribe=4)
    assert run.values == ["A", "B"]
    assert run.subscriptions == [(0, 4)]


def test_virtual_time_makes_long_windows_fast() -> None:
    assert_marbles(
        ops.map(lambda v: v * 2),
        "a 5s b|",
        "x 5s y|",
        values={"a": 1, "b": 2},
        expected_values={"x": 2, "y": 4},
    )
