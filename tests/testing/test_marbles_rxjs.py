"""The marble kit against RxJS's own specification.

Each test mirrors a case of RxJS 7's ``spec/schedulers/TestScheduler-spec.ts``
(cited as ``spec > describe > it``) or an example of its guide
``docs_app/content/guide/testing/marble-testing.md`` (cited as ``guide > section``),
translated to the kit's ``run`` mode: one frame is one millisecond, as inside
RxJS's ``testScheduler.run`` (the spec's ``parseMarbles`` cases outside ``run``
count 10 per frame; their frames are divided by 10 here).

Where the translation must differ, the comment says why: RxPY's ``delay``
shifts the completion too, and RxJS's ``animate``/``asap`` schedulers have no
counterpart. The last section holds the cases that used to pass and should
not: each asserts that the kit fails with a message that says what is wrong.
"""

from __future__ import annotations

from typing import Any

import pytest
import reactivex as rx
from reactivex import operators as rxops

from rxagent import operators as ops
from rxagent.events import Batch
from rxagent.testing import (
    MarbleError,
    Marbles,
    Notification,
    assert_marbles,
    cold,
    expect_observable,
    expect_subscriptions,
    hot,
    marble_time,
    parse_marbles,
    parse_subscription,
)


def frames(diagram: str, values: Any = None, error: Any = None) -> list[tuple[float, str, Any]]:
    return [(n.frame, n.kind, n.value) for n in parse_marbles(diagram, values, error=error)]


def delayed_each(seconds: float, kit: Marbles) -> Any:
    """RxJS's ``concatMap(d => of(d).pipe(delay(10)))``, on batches."""
    return rxops.concat_map(
        lambda batch: rx.of(batch).pipe(rxops.delay(seconds, scheduler=kit.scheduler))
    )


# -- spec > parseMarbles() -------------------------------------------------------------------------


def test_parse_a_marble_string_into_notifications() -> None:
    # spec > parseMarbles() > should parse a marble string into a series of notifications and types
    assert frames("-------a---b---|", {"a": "A", "b": "B"}) == [
        (7, "N", "A"),
        (11, "N", "B"),
        (15, "C", None),
    ]


def test_parse_allowing_spaces() -> None:
    # spec > parseMarbles() > should parse a marble string, allowing spaces too
    assert frames("--a--b--|   ", {"a": "A", "b": "B"}) == [
        (2, "N", "A"),
        (5, "N", "B"),
        (8, "C", None),
    ]


def test_parse_with_a_subscription_point() -> None:
    # spec > parseMarbles() > should parse a marble string with a subscription point
    assert frames("---^---a---b---|", {"a": "A", "b": "B"}) == [
        (4, "N", "A"),
        (8, "N", "B"),
        (12, "C", None),
    ]


def test_parse_with_an_error() -> None:
    # spec > parseMarbles() > should parse a marble string with an error
    assert frames("-------a---b---#", {"a": "A", "b": "B"}, "omg error!") == [
        (7, "N", "A"),
        (11, "N", "B"),
        (15, "E", "omg error!"),
    ]


def test_parse_defaults_to_the_letter() -> None:
    # spec > parseMarbles() > should default in the letter for the value if no value hash was passed
    assert frames("--a--b--c--") == [(2, "N", "a"), (5, "N", "b"), (8, "N", "c")]


def test_parse_grouped_values() -> None:
    # spec > parseMarbles() > should handle grouped values
    assert frames("---(abc)---") == [(3, "N", "a"), (3, "N", "b"), (3, "N", "c")]


def test_parse_ignores_whitespace_in_run_mode() -> None:
    # spec > parseMarbles() > should ignore whitespace when runMode=true
    assert frames("  -a - b -    c |       ", {"a": "A", "b": "B", "c": "C"}) == [
        (1, "N", "A"),
        (3, "N", "B"),
        (5, "N", "C"),
        (6, "C", None),
    ]


def test_parse_fractional_time_progressions() -> None:
    # spec > parseMarbles() > should support time progression syntax when runMode=true
    b = 10.2 + 1 + 1.2 * 1000
    c = b + 1 + 1000 * 60
    assert frames("10.2ms a 1.2s b 1m c|", {"a": "A", "b": "B", "c": "C"}) == [
        (10.2, "N", "A"),
        (pytest.approx(b), "N", "B"),
        (pytest.approx(c), "N", "C"),
        (pytest.approx(c + 1), "C", None),
    ]


def test_parse_emoji() -> None:
    # spec > parseMarbles() > should support emoji characters
    assert frames("--🙈--🙉--🙊--|") == [
        (2, "N", "🙈"),
        (5, "N", "🙉"),
        (8, "N", "🙊"),
        (11, "C", None),
    ]


# -- spec > parseMarblesAsSubscriptions() ----------------------------------------------------------


def test_parse_a_subscription_marble() -> None:
    # spec > parseMarblesAsSubscriptions() > should parse a subscription marble string into a
    # subscriptionLog
    assert parse_subscription("---^---!-") == (3, 7)


def test_parse_a_subscription_with_no_unsubscription() -> None:
    # spec > parseMarblesAsSubscriptions() > should parse a subscription marble string with an
    # unsubscription (unsubscribedFrame Infinity: None here)
    assert parse_subscription("---^-") == (3, None)


def test_parse_a_synchronous_unsubscription() -> None:
    # spec > parseMarblesAsSubscriptions() > should parse a subscription marble string with a
    # synchronous unsubscription
    assert parse_subscription("---(^!)-") == (3, 3)


def test_parse_subscriptions_ignoring_whitespace() -> None:
    # spec > parseMarblesAsSubscriptions() > should ignore whitespace when runMode=true
    assert parse_subscription("  - -  - -  ^ -   - !  -- -      ") == (4, 7)


def test_parse_subscriptions_with_fractional_progressions() -> None:
    # spec > parseMarblesAsSubscriptions() > should support time progression syntax when
    # runMode=true
    sub, unsub = parse_subscription("10.2ms ^ 1.2s - 1m !")
    assert sub == 10.2
    assert unsub == pytest.approx(10.2 + 1 + 1.2 * 1000 + 1 + 1000 * 60)


def test_a_second_subscription_point_throws() -> None:
    # spec > parseMarblesAsSubscriptions() > should throw if found more than one subscription point
    with pytest.raises(MarbleError, match="second '\\^'"):
        parse_subscription("---^-^-!-")


def test_a_second_unsubscription_point_throws() -> None:
    # spec > parseMarblesAsSubscriptions() > should throw if found more than one unsubscription
    # point
    with pytest.raises(MarbleError, match="second '!'"):
        parse_subscription("---^---!-!")


def test_subscription_marbles_with_no_subscription_point() -> None:
    # guide > Subscription marbles > Examples: "'-' or '------': no subscription ever happened"
    assert parse_subscription("-") == (None, None)
    assert parse_subscription("------") == (None, None)
    # spec > expectObservable() > should accept an unsubscription marble diagram: '---!' alone
    assert parse_subscription("---!") == (None, 3)


# -- spec > createTime() and TestScheduler.run() > time --------------------------------------------


def test_time_of_a_simple_marble() -> None:
    # spec > createTime() > should parse a simple time marble string to a number (50 at 10 per
    # frame); spec > run() > time > should parse a simple time marble string to a number
    assert marble_time("-----|") == pytest.approx(0.005)
    assert Marbles().time("--|") == pytest.approx(0.002)


def test_time_ignores_whitespace() -> None:
    # spec > run() > time > should ignore whitespace
    assert marble_time("  --|") == pytest.approx(0.002)


def test_time_throws_without_a_completion() -> None:
    # spec > createTime() > should throw if not given good marble input;
    # spec > run() > time > should throw if not given good marble input
    with pytest.raises(MarbleError, match="needs a '\\|'"):
        marble_time("-a-b-#")


# -- spec > createColdObservable(), createHotObservable(), cold(), hot() ---------------------------


def test_create_a_cold_observable() -> None:
    # spec > createColdObservable() > should create a cold observable
    seen: list[Any] = []
    with Marbles() as m:
        source = cold("--a---b--|", {"a": "A", "b": "B"})
        source.subscribe(lambda batch: seen.extend(batch.values))
        m.flush()
    assert seen == ["A", "B"]


def test_create_a_hot_observable() -> None:
    # spec > createHotObservable() > should create a hot observable
    seen: list[Any] = []
    with Marbles() as m:
        source = hot("--a---b--|", {"a": "A", "b": "B"})
        source.subscribe(lambda batch: seen.extend(batch.values))
        m.flush()
    assert seen == ["A", "B"]


def test_cold_helper_creates_a_cold_observable() -> None:
    # spec > jasmine helpers > cold() > should create a cold observable
    with Marbles():
        source = cold("-a-b-|", {"a": 1, "b": 2})
        expect_observable(source).to_be("-a-b-|", {"a": 1, "b": 2})


def test_hot_helper_creates_a_hot_observable() -> None:
    # spec > jasmine helpers > hot() > should create a hot observable
    with Marbles():
        source = hot("---^-a-b-|", {"a": 1, "b": 2})
        expect_observable(source).to_be("--a-b-|", {"a": 1, "b": 2})


def test_cold_cannot_have_a_subscription_point() -> None:
    # TestScheduler.ts > createColdObservable: 'cold observable cannot have subscription offset "^"'
    with Marbles(), pytest.raises(MarbleError, match="cold source cannot have"):
        cold("-^-a|")


def test_sources_cannot_have_an_unsubscription_point() -> None:
    # TestScheduler.ts > createColdObservable and createHotObservable: no '!'
    with Marbles():
        for make in (cold, hot):
            with pytest.raises(MarbleError, match="subscription marbles"):
                make("-a-!")


def test_cold_and_hot_need_a_kit() -> None:
    # the helpers of RxJS's run() exist only inside it; here, inside `with Marbles()`
    with pytest.raises(MarbleError, match="needs a marble kit"):
        cold("-a|")


# -- spec > jasmine helpers > expectObservable() ---------------------------------------------------


def test_expect_empty() -> None:
    # spec > expectObservable() > should handle empty
    with Marbles():
        expect_observable(rx.empty()).to_be("|", {})


def test_expect_never() -> None:
    # spec > expectObservable() > should handle never
    with Marbles():
        expect_observable(rx.never()).to_be("-", {})
        expect_observable(rx.never()).to_be("---", {})


def test_expect_with_an_unsubscription_marble() -> None:
    # spec > expectObservable() > should accept an unsubscription marble diagram
    with Marbles():
        source = hot("---^-a-b-|")
        unsubscribe = "---!"
        expected = "--a"
        expect_observable(source, unsubscribe).to_be(expected)


def test_expect_with_a_subscription_marble() -> None:
    # spec > expectObservable() > should accept a subscription marble diagram
    with Marbles():
        source = hot("-a-b-c|")
        subscribe = "---^"
        expected = "---b-c|"
        expect_observable(source, subscribe).to_be(expected)


def test_a_late_subscriber_to_a_finished_hot_source_ends_at_once() -> None:
    # HotObservable.ts: a hot source is a Subject, so subscribing after its '|' (or '#') completes
    # (or fails) the subscriber at once
    with Marbles():
        expect_observable(hot("-a|"), "---^").to_be("---|")
        expect_observable(hot("-a#", error=ValueError("v")), "----^").to_be(
            "----#", error=ValueError("v")
        )


# -- spec > jasmine helpers > expectSubscriptions() ------------------------------------------------


def test_assert_subscriptions_of_a_cold_observable() -> None:
    # spec > expectSubscriptions() > should assert subscriptions of a cold observable
    with Marbles():
        source = cold("---a---b-|")
        subs = "^--------!"
        expect_subscriptions(source).to_be(subs)
        source.subscribe(lambda batch: batch.end_all())


def test_empty_subscription_marbles() -> None:
    # spec > expectSubscriptions() > should support empty subscription marbles
    with Marbles():
        source = cold("---a---b-|")
        expect_subscriptions(source).to_be("----------")


def test_empty_subscription_marbles_within_lists() -> None:
    # spec > expectSubscriptions() > should support empty subscription marbles within arrays
    with Marbles():
        source = cold("---a---b-|")
        expect_subscriptions(source).to_be(["----------"])


def test_end_to_end_helpers() -> None:
    # spec > end-to-end helper tests > should be awesome
    with Marbles():
        values = {"a": 1, "b": 2}
        my_observable = cold("---a---b--|", values)
        subs = "^---------!"
        expect_observable(my_observable).to_be("---a---b--|", values)
        expect_subscriptions(my_observable).to_be(subs)


# -- spec > TestScheduler.run() --------------------------------------------------------------------


def test_run_ignores_whitespace() -> None:
    # spec > run() > marble diagrams > should ignore whitespace
    with Marbles() as m:
        source = cold("  -a - b -    c |       ")
        output = source.pipe(delayed_each(0.010, m))
        expected = "     -- 9ms a 9ms b 9ms (c|) "
        expect_observable(output).to_be(expected)
        expect_subscriptions(source).to_be("  ^- - - - - !")


def test_run_supports_fractional_time_progressions() -> None:
    # spec > run() > marble diagrams > should support time progression syntax
    with Marbles():
        output = cold("10.2ms a 1.2s b 1m c|")
        expected = "   10.2ms a 1.2s b 1m c|"
        expect_observable(output).to_be(expected)


def test_run_provides_the_helpers_for_several_sources() -> None:
    # spec > run() > should provide the correct helpers: a merge of a cold and a hot source,
    # expected twice (RxJS's toEqual(cold(expected)) is a second toBe here)
    with Marbles():
        obs1 = cold("-a-c-e|")
        obs2 = hot(" ^-b-d-f|")
        output = rx.merge(obs1, obs2)
        expected = " -abcdef|"
        expect_observable(output).to_be(expected)
        expect_observable(output).to_be(expected)
        expect_subscriptions(obs1).to_be(["^-----!", "^-----!"])
        expect_subscriptions(obs2).to_be(["^------!", "^------!"])


def test_each_frame_is_one_virtual_millisecond() -> None:
    # spec > run() > should have each frame represent a single virtual millisecond
    with Marbles():
        output = cold("-a-b-c--------|").pipe(ops.debounce(0.005))
        expected = "   ------ 4ms c---|"
        expect_observable(output).to_be(expected)


def test_there_is_no_maximum_frame_count() -> None:
    # spec > run() > should have no maximum frame count. RxJS's delay completes with its last
    # delayed value ('- 10s (a|)'); RxPY's shifts the completion by the delay too
    with Marbles() as m:
        output = cold("-a|").pipe(rxops.delay(10.0, scheduler=m.scheduler))
        expected = "   - 10s a|"
        expect_observable(output).to_be(expected)


def test_time_based_operators_run_on_the_test_scheduler() -> None:
    # spec > run() > should make operators that use AsyncScheduler automatically use TestScheduler
    with Marbles():
        output = cold("-a-b-c--------|").pipe(ops.debounce(0.005))
        expected = "   ----------c---|"
        expect_observable(output).to_be(expected)


def test_run_flushes_automatically() -> None:
    # spec > run() > should flush automatically: the assertion runs when the block ends
    with Marbles() as m:
        output = cold("-a-b-c|").pipe(delayed_each(0.010, m))
        expected = "   -- 9ms a 9ms b 9ms (c|)"
        expectation = expect_observable(output)
        expectation.to_be(expected)
        assert expectation.notifications == []  # nothing ran yet
    assert [n.frame for n in expectation.notifications] == [11, 21, 31, 31]


def test_run_supports_explicit_flushing() -> None:
    # spec > run() > should support explicit flushing
    with Marbles() as m:
        output = cold("-a-b-c|").pipe(delayed_each(0.010, m))
        expected = "   -- 9ms a 9ms b 9ms (c|)"
        expectation = expect_observable(output)
        expectation.to_be(expected)
        m.flush()
        assert [n.frame for n in expectation.notifications] == [11, 21, 31, 31]


def test_run_flushes_expectations_correctly() -> None:
    # spec > run() > should flush expectations correctly: a to_be given after a flush still
    # asserts (at the end of the block), and fails
    m = Marbles()
    m.activate()
    try:
        expect_observable(cold("-x")).to_be("-x")
        expect_observable(cold("-y")).to_be("-y")
        expectation = expect_observable(cold("-z"))
        m.flush()
        expectation.to_be("-q")
    finally:
        m.deactivate()
    with pytest.raises(AssertionError, match="expected 'q', got 'z'"):
        m.close()


def test_run_fails_an_expectation_without_to_be() -> None:
    # RxJS keeps an expectation with no toBe and never asserts it; here it fails
    with pytest.raises(AssertionError, match=r"never given a \.to_be"), Marbles():
        expect_observable(cold("-x"))


# -- guide -----------------------------------------------------------------------------------------


def test_guide_generates_the_stream_correctly() -> None:
    # guide > (introduction) 'generates the stream correctly': throttleTime(3). rxagent's
    # throttle_first lets 'b' through at exactly 3 frames after 'a' (its period is over); RxJS's
    # throttleTime drops it because its timer runs after the source's action of that frame
    with Marbles() as m:
        e1 = cold(" -a--b--c---|")
        e1subs = "  ^----------!"
        t = m.time("   ---|       ")
        assert t == pytest.approx(0.003)
        expected = "-a--b--c---|"
        expect_observable(e1.pipe(ops.throttle_first(t))).to_be(expected)
        expect_subscriptions(e1).to_be(e1subs)


def test_guide_time_helper_with_delay() -> None:
    # guide > API > time(): delay(t) with t = time('--|'). RxJS completes with the last delayed
    # value ('-----a--b|'); RxPY's delay shifts the completion by t as well
    with Marbles() as m:
        source = cold("---a--b--|")
        t = m.time("        --|    ")
        expected = "   -----a--b--|"
        expect_observable(source.pipe(rxops.delay(t, scheduler=m.scheduler))).to_be(expected)


def test_guide_dash_inside_a_group_with_values() -> None:
    # guide > Marble syntax > '400ms (a-b|)' with values as a mapping
    values = {"a": "value emitted", "b": "another value emitted"}
    assert frames("400ms (a-b|)", values) == [
        (400, "N", "value emitted"),
        (400, "N", "another value emitted"),
        (400, "C", None),
    ]
    with Marbles():
        expect_observable(cold("400ms (a-b|)", values)).to_be("400ms (a-b|)", values)


def test_guide_values_as_a_list() -> None:
    # guide > Marble syntax > "This would work also": '400ms (0-1|)' with values as an array
    values = ["value emitted", "another value emitted"]
    assert frames("400ms (0-1|)", values) == [
        (400, "N", "value emitted"),
        (400, "N", "another value emitted"),
        (400, "C", None),
    ]
    with Marbles():
        expect_observable(cold("400ms (0-1|)", values)).to_be("400ms (0-1|)", values)


def test_values_with_number_keys_stand_for_digits() -> None:
    # JavaScript object keys are strings: RxJS reads { 0: x } for the marble '0'
    assert frames("-0-1|", {0: "x", 1: "y"}) == [(1, "N", "x"), (3, "N", "y"), (4, "C", None)]
    assert_marbles(
        ops.map(str.upper), "-0-1|", "-0-1|", {0: "x", 1: "y"}, expected_values=["X", "Y"]
    )


def test_guide_groups_take_their_width() -> None:
    # guide > Marble syntax > '()': '(abc)' emits together, then 5 frames have passed
    assert frames("(abc)d") == [(0, "N", "a"), (0, "N", "b"), (0, "N", "c"), (5, "N", "d")]


def test_guide_hot_subscription_point() -> None:
    # guide > Marble syntax > '^': frames before it are negative
    assert frames("-a-^-b--|") == [(-2, "N", "a"), (2, "N", "b"), (5, "C", None)]


def test_guide_time_progression_subtracting_a_frame() -> None:
    # guide > Time progression syntax: the three equivalent expected diagrams
    for expected in [
        "-- 9ms a 9ms b 9ms (c|)",
        "------- 4ms a 9ms b 9ms (c|)",
        "-----------a 9ms b 9ms (c|)",
    ]:
        with Marbles() as m:
            result = cold(" -a-b-c|").pipe(delayed_each(0.010, m))
            expect_observable(result).to_be(expected)


@pytest.mark.parametrize(
    ("diagram", "expected"),
    [
        # guide > Examples: each diagram and what it does, frame by frame
        ("-", []),
        ("------", []),
        ("|", [(0, "C", None)]),
        ("#", [(0, "E", None)]),
        ("--a--", [(2, "N", "a")]),
        ("--a--b--|", [(2, "N", "a"), (5, "N", "b"), (8, "C", None)]),
        ("--a--b--#", [(2, "N", "a"), (5, "N", "b"), (8, "E", None)]),
        ("-a-^-b--|", [(-2, "N", "a"), (2, "N", "b"), (5, "C", None)]),
        ("--(abc)-|", [(2, "N", "a"), (2, "N", "b"), (2, "N", "c"), (8, "C", None)]),
        ("-----(a|)", [(5, "N", "a"), (5, "C", None)]),
        ("a 9ms b 9s c|", [(0, "N", "a"), (10, "N", "b"), (9011, "N", "c"), (9012, "C", None)]),
        ("--a 2.5m b", [(2, "N", "a"), (150003, "N", "b")]),
    ],
)
def test_guide_examples(diagram: str, expected: list[tuple[float, str, Any]]) -> None:
    assert frames(diagram) == expected


@pytest.mark.parametrize(
    ("marble", "expected"),
    [
        # guide > Subscription marbles > Examples
        ("-", (None, None)),
        ("------", (None, None)),
        ("--^--", (2, None)),
        ("--^--!-", (2, 5)),
        ("500ms ^ 1s !", (500, 1501)),
    ],
)
def test_guide_subscription_examples(marble: str, expected: tuple[Any, Any]) -> None:
    assert parse_subscription(marble) == expected


def test_guide_several_subscribers_to_a_hot_source() -> None:
    # guide > Subscription marbles: a hot source, two subscribers subscribing at different times
    with Marbles():
        source = hot("--a--a--a--a--a--a--a--")
        sub1 = "      --^-----------!"
        sub2 = "      ---------^--------!"
        expect1 = "   --a--a--a--a--"
        expect2 = "   -----------a--a--a-"
        expect_observable(source, sub1).to_be(expect1)
        expect_observable(source, sub2).to_be(expect2)


def test_guide_unsubscribe_from_a_source_that_never_completes() -> None:
    # guide > Subscription marbles: 'should repeat forever', interval(1) with unsub '------!'
    with Marbles() as m:
        forever = rx.interval(0.001, scheduler=m.scheduler).pipe(rxops.map(lambda _: "a"))
        unsub = "------!"
        expect_observable(forever, unsub).to_be("-aaaaa")


def test_guide_synchronous_assertion_after_flush() -> None:
    # guide > Synchronous Assertion: a side effect checked after flush()
    count = [0]
    with Marbles() as m:
        s1 = cold("--a--b|", {"a": "x", "b": "y"})
        result = s1.pipe(rxops.do_action(lambda batch: count.__setitem__(0, count[0] + 1)))
        expect_observable(result).to_be("--a--b|", {"a": "x", "b": "y"})
        m.flush()
        assert count[0] == 2


def test_inner_observables_are_cold_sources_too() -> None:
    # spec > end-to-end helper tests > metastreams, as far as batches go: each outer value
    # subscribes to an inner cold source (the inner's subscriptions are asserted, not its values
    # as a nested diagram)
    with Marbles():
        inner = cold("-x-y|")
        outer = hot("-a---b----|")

        def to_inner(batch: Batch) -> Any:
            batch.end_all()  # the outer event is done once it has started its inner source
            return inner

        expect_observable(outer.pipe(rxops.concat_map(to_inner))).to_be("--x-y-x-y-|")
        expect_subscriptions(inner).to_be(["-^---!", "-----^---!"])


def test_the_marbles_fixture_is_the_current_kit(marbles: Marbles) -> None:
    # the fixture plays the part of testScheduler.run(): cold/hot/expect_observable use it, and the
    # assertions run when the test returns
    left = cold("-a--c|")
    right = hot("--b--d|")
    expect_observable(rx.merge(left, right)).to_be("-ab-cd|")
    assert marbles.sources == [left, right]


# -- what used to pass and should not --------------------------------------------------------------


def raise_instead(error: Exception) -> Any:
    """An operator that replaces the source's error with ``error``."""
    return rxops.catch(lambda _e, _src: rx.throw(error))


def test_a_different_error_fails_with_both_shown() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(raise_instead(KeyError("other")), "-a-#", "-a-#", error=ValueError("boom"))
    message = str(info.value)
    assert "^ frame 3: expected error ValueError('boom'), got error KeyError('other')" in message
    assert "    type ValueError expected, got KeyError" in message


def test_same_error_type_with_other_arguments_fails() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(raise_instead(ValueError("bam")), "-a-#", "-a-#", error=ValueError("boom"))
    assert "same type ValueError, arguments ('boom',) != ('bam',)" in str(info.value)


def test_an_equal_error_passes() -> None:
    assert_marbles(raise_instead(ValueError("boom")), "-a-#", "-a-#", error=ValueError("boom"))


def test_an_error_type_or_predicate_matches_loosely() -> None:
    source_error = ValueError("boom")
    assert_marbles(
        ops.map(str.upper), "-a-#", "-A-#", error=source_error, expected_error=ValueError
    )
    assert_marbles(
        ops.map(str.upper),
        "-a-#",
        "-A-#",
        error=source_error,
        expected_error=lambda e: "boom" in str(e),
    )
    with pytest.raises(AssertionError, match="expected an error of type KeyError"):
        assert_marbles(
            ops.map(str.upper), "-a-#", "-A-#", error=source_error, expected_error=KeyError
        )
    with pytest.raises(MarbleError, match="is a predicate"):
        assert_marbles(ops.map(str.upper), "-a-#", "-A-#", error=lambda e: True)


def test_expect_observable_compares_errors_too() -> None:
    with pytest.raises(AssertionError, match="got error KeyError"), Marbles():
        expect_observable(cold("-a-#", error=KeyError("k"))).to_be("-a-#", error=ValueError("v"))


def test_output_past_the_diagram_fails_saying_so() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(rxops.delay(5.0), "-a|", "-")
    message = str(info.value)
    assert message.splitlines()[1] == (
        "output continued past the diagram at frame 5001: 'a' "
        "(the expected diagram ends at frame 1)"
    )
    # the diagram failure comes first: flow control is not blamed
    assert "never ended" not in message


def test_output_past_the_diagram_fails_in_expect_observable() -> None:
    m = Marbles()
    late = m.cold("-a|").pipe(rxops.delay(5.0, scheduler=m.scheduler))
    # a kit used without `with` asserts at once
    with pytest.raises(AssertionError, match="output continued past the diagram at frame 5001"):
        m.expect_observable(late).to_be("-")


def test_a_subscription_mismatch_points_at_the_frame() -> None:
    with pytest.raises(AssertionError) as info:
        assert_marbles(ops.map(str.upper), "-a-|", "-A-|", subscriptions="^-!")
    lines = str(info.value).splitlines()
    assert lines[1:3] == ["  expected: ^-!", "  actual:   ^--!"]
    assert lines[3] == (
        " " * 14 + "^ frame 2: the subscription: expected subscribed at 0, unsubscribed at 2, "
        "got subscribed at 0, unsubscribed at 3"
    )


def test_a_subscription_mismatch_among_several_names_which() -> None:
    with pytest.raises(AssertionError, match="subscription 1: expected subscribed at 4"):
        assert_marbles(rxops.retry(2), "-a-#", "-a--a-#", subscriptions=["^--!", "----^--!"])


def test_endless_output_is_cut_off_and_the_message_stays_short() -> None:
    m = Marbles()
    ticks = rx.interval(0.001, scheduler=m.scheduler)
    with pytest.raises(AssertionError) as info:
        m.expect_observable(ticks).to_be("-abc", ["a", "b", "c"])
    message = str(info.value)
    assert "^ frame 1: expected 'a', got 0" in message
    assert "more actual notifications, up to frame" in message
    assert "the run stopped at frame" in message
    assert len(message) < 2000


def test_values_of_the_wrong_type_are_a_marble_error() -> None:
    with pytest.raises(MarbleError, match="values must be a mapping"):
        parse_marbles("-a-", "abc")  # type: ignore[arg-type]
    with pytest.raises(MarbleError, match="values keys are the characters"):
        parse_marbles("-a-", {("a",): 1})
    with pytest.raises(MarbleError, match="gives '0' twice"):
        parse_marbles("-0-", {0: "x", "0": "y"})


def test_no_subscription_point_means_never_subscribed() -> None:
    # an operator that never subscribes to its source; '----' expects no subscription
    assert_marbles(lambda _source: rx.never(), "-a-|", "----", subscriptions="----")
    # and as the test's own subscription, '---!' subscribes at 0 and disposes at frame 3
    run = assert_marbles(ops.map(str.upper), "-a-b-|", "-A-", unsubscribe="---!")
    assert run.subscriptions == [(0, 3)]


def test_fractional_frames_survive_a_run_and_a_failure_message() -> None:
    run = assert_marbles(ops.map(str.upper), "10.2ms a 1.2s b|", "10.2ms A 1.2s B|")
    assert run.notifications[0] == Notification(10.2, "N", "A")
    with pytest.raises(AssertionError) as info:
        assert_marbles(ops.map(str.upper), "10.2ms a 1.2s b|", "10.2ms A 1.2s C|")
    assert "  actual:    10.2ms A 1.2s B|" in str(info.value)
