"""The marble toolkit: RxJS syntax, rendering, running operators in virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex import operators as rxops

from rxagent import operators as ops
from rxagent.testing.marbles import (
    MarbleError,
    Marbles,
    Notification,
    assert_marbles,
    assert_notifications,
    marble_time,
    parse_letters,
    parse_marbles,
    parse_subscription,
    render_aligned,
    render_marbles,
    run_marbles,
)
from rxagent.testing.strategies import marble_diagrams


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


def test_parse_letters_names_the_character_of_each_notification() -> None:
    parsed = parse_letters("x^(ab)-#", {"a": 1, "b": 1})
    assert [(n.frame, n.kind, n.value, c) for n, c in parsed] == [
        (-1, "N", "x", "x"),
        (1, "N", 1, "a"),
        (1, "N", 1, "b"),
        (6, "E", None, "#"),
    ]
    assert [n for n, _ in parsed] == parse_marbles("x^(ab)-#", {"a": 1, "b": 1})


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


# -- the RxJS syntax, piece by piece -------------------------------------------------------------


def test_completion_and_error_take_a_frame_and_groups_can_hold_them() -> None:
    assert frames("a|") == [(0, "N", "a"), (1, "C", None)]
    assert frames("-(a|)") == [(1, "N", "a"), (1, "C", None)]
    boom = ValueError("boom")
    assert frames("--#", error=boom) == [(2, "E", boom)]
    # a group is as wide as its characters: '(ab)' takes 4 frames
    assert frames("(ab)c") == [(0, "N", "a"), (0, "N", "b"), (4, "N", "c")]


def test_time_progression_needs_spaces_around_it_as_in_rxjs() -> None:
    # glued to a dash or a value, digits and letters are values
    assert [v for _, _, v in frames("-10ms")] == ["1", "0", "m", "s"]
    assert frames("1m a", frame=1.0) == [(60, "N", "a")]
    assert frames("10ms") == []  # the start and end of a diagram count as spaces


def test_time_progression_may_end_between_frames_as_in_rxjs() -> None:
    # RxJS's '10.2ms a': frames are fractional where a progression says so
    assert frames("a 1500ms b", frame=1.0) == [(0, "N", "a"), (2.5, "N", "b")]
    assert frames("a 1500ms b", frame=0.5) == [(0, "N", "a"), (4, "N", "b")]
    with pytest.raises(MarbleError, match="finer than the virtual clock's microsecond"):
        parse_marbles("a 0.0001ms b")


def test_a_cold_source_cannot_have_a_subscription_point() -> None:
    with pytest.raises(MarbleError, match="cold source"):
        run_marbles(ops.map(str.upper), "-^-a-|", hot=False)


def test_frame_must_be_positive() -> None:
    with pytest.raises(MarbleError, match="positive"):
        parse_marbles("a", frame=0)


def test_subscription_marbles_follow_rxjs() -> None:
    assert parse_subscription("(^!)") == (0, 0)
    assert parse_subscription("--(^!)") == (2, 2)
    assert parse_subscription("^ 10ms !") == (0, 11)
    assert parse_subscription("- ^-!") == (1, 3)  # spaces are ignored
    # no '^': never subscribed (RxJS's Infinity), with or without a '!'
    assert parse_subscription("---") == (None, None)
    assert parse_subscription("---!") == (None, 3)
    for bad, reason in [
        ("^-^", "second '\\^'"),
        ("^!-!", "second '!'"),
        ("!-^", "before"),
        ("^-a-!", "found 'a'"),
        ("(^!", "not closed"),
    ]:
        with pytest.raises(MarbleError, match=reason):
            parse_subscription(bad)


def test_marble_time_measures_up_to_the_completion() -> None:
    assert marble_time("-----|") == pytest.approx(0.005)
    assert marble_time("- 1s |", frame=0.5) == pytest.approx(1.5)
    with pytest.raises(MarbleError, match=r"needs a '\|'"):
        marble_time("---")


# -- running -------------------------------------------------------------------------------------


def test_a_hot_source_emits_nothing_from_before_the_subscription() -> None:
    run = assert_marbles(ops.map(str.upper), "a-b-^-c-(d|)", "--C-(D|)")
    assert run.subscriptions == [(0, 4)]


def test_a_later_subscription_shifts_a_cold_source_but_not_a_hot_one() -> None:
    assert_marbles(ops.map(str.upper), "a-b|", "---A-B|", unsubscribe="---^----!")
    assert_marbles(ops.map(str.upper), "^a-b-c|", "---B-C|", unsubscribe="---^---!")


def test_unsubscription_comes_before_source_values_of_the_same_frame() -> None:
    # as in RxJS: '!' at frame 3 means the value at frame 3 is not seen
    assert_marbles(ops.map(str.upper), "-a-b-|", "-A", unsubscribe="^--!", subscriptions="^--!")


def test_subscription_marbles_assert_every_subscription() -> None:
    # reactivex's retry resubscribes to the source when it fails
    assert_marbles(
        rxops.retry(2),
        "-a-#",
        "-a--a-#",
        subscriptions=["^--!", "---^--!"],
    )


def test_a_subscription_mismatch_shows_both_marbles_aligned() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(ops.map(str.upper), "-a-|", "-A-|", subscriptions="^-!")
    message = str(info.value)
    assert "subscriptions differ" in message
    assert "  expected: ^-!\n" in message
    assert "  actual:   ^--!\n" in message


def test_values_of_one_frame_must_come_in_order() -> None:
    def swap(source):  # type: ignore[no-untyped-def]
        return source.pipe(rxops.map(lambda b: b.with_values(b.values[::-1])))

    with pytest.raises(AssertionError, match="frame 0: expected 'a', got 'b'"):
        assert_marbles(swap, "(ab)|", "(ab)|")
    assert_marbles(swap, "(ab)|", "(ba)|")


def test_an_expected_error_matches_any_error() -> None:
    assert_marbles(ops.map(str.upper), "-a-#", "-A-#", error=ValueError("x"))


def test_the_clock_runs_past_the_last_expected_frame() -> None:
    # the output comes 5 s (5,000 frames) after the source's last notification
    assert_marbles(rxops.delay(5.0), "a|", "5s a|")


def test_a_user_function_error_is_a_dead_letter_in_the_run() -> None:
    run = assert_marbles(ops.map(int), "-1-x-2-|", "-1---2-|", expected_values={"1": 1, "2": 2})
    assert [letter.error_type for letter in run.dead_letters] == ["ValueError"]


def test_keys_and_times_columns_come_from_the_values() -> None:
    run = run_marbles(ops.key_by(str.upper), "ab|", keys=lambda v: v, times=lambda v: 1.0)
    assert run.keys == ["A", "B"]


# -- one scheduler, several runs -----------------------------------------------------------------


def test_a_marbles_kit_runs_one_after_another_on_its_scheduler() -> None:
    kit = Marbles(frame=0.01)
    kit.assert_marbles(ops.map(str.upper), "-a-|", "-A-|")
    first_end = kit.scheduler.clock
    assert first_end > 0
    # frames of the second run count from where the first left the clock
    run = kit.assert_marbles(ops.map(str.upper), "--b|", "--B|")
    assert run.subscriptions == [(0, 3)]
    assert kit.time("--|") == pytest.approx(0.02)
    assert kit.parse("a 1s b") == [Notification(0, "N", "a"), Notification(101, "N", "b")]
    assert kit.render(kit.parse("a 1s b")) == "a 1s b"
    assert kit.parse_subscription("^ 1s !") == (0, 101)
    assert kit.run(ops.map(str.upper), "ab|").values == ["A", "B"]


# -- failure messages ----------------------------------------------------------------------------


def test_long_silences_render_as_time_progressions_in_every_row() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(ops.map(str.upper), "a 5s b|", "A 5s C|")
    lines = str(info.value).splitlines()
    assert lines[1:4] == ["  source:   a 5s b|", "  expected: A 5s C|", "  actual:   A 5s B|"]
    assert lines[4] == " " * 17 + "^ frame 5001: expected 'C', got 'B'"


def test_a_hot_source_row_shows_its_subscription_point() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(ops.map(str.upper), "a-^-b-|", "--X-|")
    message = str(info.value)
    assert "  source:   a-^-b-|" in message
    assert "  expected:   --X-|" in message
    assert "  actual:     --B-|" in message


def test_values_without_a_character_get_one_in_a_legend() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(
            ops.map(len), "-a-b-|", "-x-y-|", {"b": "bb"}, expected_values={"x": 1, "y": 3}
        )
    message = str(info.value)
    assert "  actual:   -x-c-|" in message  # "y" means 3; 2 gets a spare character
    assert "where c=2" in message


def test_a_value_too_close_behind_a_group_is_flagged() -> None:
    # a group at frame 0 and a value at frame 1: no diagram can draw that exactly
    twice = ops.flat_map(lambda v: [v, v] if v == "a" else [v])
    with pytest.raises(AssertionError) as info:
        assert_marbles(twice, "ab|", "(aa)b|")
    assert "cannot place them exactly" in str(info.value)


def test_assert_notifications_checks_a_recording() -> None:
    notes = [Notification(1, "N", "a"), Notification(2, "C")]
    assert_notifications(notes, "-a|")
    with pytest.raises(AssertionError, match="frame 2: expected 'b', got completion"):
        assert_notifications(notes, "-ab|")


@given(
    case=st.sampled_from([0.001, 0.5]).flatmap(
        lambda frame: st.tuples(
            st.just(frame), marble_diagrams(progressions=True, spaces=True, hot=True, frame=frame)
        )
    )
)
def test_rendering_parses_back_to_the_same_notifications(case: tuple[float, str]) -> None:
    frame, diagram = case
    notes = parse_marbles(diagram, frame=frame)
    start = min([0] + [n.frame for n in notes])
    rendered, legend = render_marbles(notes, start=start, frame=frame)
    assert legend == {}
    again = parse_marbles(rendered, frame=frame)
    assert [(n.frame - start, n.kind, n.value) for n in notes] == [
        (n.frame, n.kind, n.value) for n in again
    ]


@given(
    rows=st.lists(marble_diagrams(max_size=8), min_size=2, max_size=3),
)
def test_aligned_rows_put_each_frame_in_one_column(rows: list[str]) -> None:
    parsed = [parse_marbles(d) for d in rows]
    lines, _ = render_aligned(parsed)
    for line, notes in zip(lines, parsed, strict=True):
        assert [(n.frame, n.kind, n.value) for n in parse_marbles(line)] == [
            (n.frame, n.kind, n.value) for n in notes
        ]
