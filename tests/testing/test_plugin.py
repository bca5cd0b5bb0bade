"""The pytest plugin: registered by entry point, its fixtures work in a fresh pytest run."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from rxagent.testing.marbles import Marbles
from rxagent.testing.plugin import parse_frame

pytest_plugins = ["pytester"]

USES_THE_FIXTURES = """
from reactivex.testing import TestScheduler
from rxagent import operators as ops


def test_scheduler_is_fresh(test_scheduler):
    assert isinstance(test_scheduler, TestScheduler)
    assert test_scheduler.clock == 0


def test_marbles_are_bound_to_the_scheduler(marbles, test_scheduler, marble_frame):
    assert marbles.scheduler is test_scheduler
    assert marbles.frame == marble_frame == 0.001
    marbles.assert_marbles(ops.map(str.upper), "-a 1s b|", "-A 1s B|")
    assert test_scheduler.clock > 1.0
    assert marbles.parse("a-b") == marbles.run(ops.map(lambda v: v), "a-b").notifications


def test_a_failure_prints_the_diagrams(marbles):
    marbles.assert_marbles(ops.map(str.upper), "-a-b-|", "-A-C-|")
"""


def ini(pytester: pytest.Pytester, *lines: str) -> None:
    """The test run's ini file (pytest-asyncio wants its loop scope set)."""
    pytester.makeini(
        "\n".join(["[pytest]", "asyncio_default_fixture_loop_scope = function", *lines])
    )


def test_the_entry_point_names_the_plugin() -> None:
    (plugin,) = [ep for ep in entry_points(group="pytest11") if ep.name == "rxagent"]
    assert plugin.value == "rxagent.testing.plugin"


def test_the_fixtures_work_in_a_fresh_pytest_process(pytester: pytest.Pytester) -> None:
    # a subprocess loads plugins from entry points only: this is what users get
    ini(pytester)
    pytester.makepyfile(USES_THE_FIXTURES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*marble diagrams differ (one frame = 1ms)*",
            "*  source:   -a-b-|",
            "*  expected: -A-C-|",
            "*  actual:   -A-B-|",
        ]
    )


def test_cold_and_hot_assert_when_the_test_returns(pytester: pytest.Pytester) -> None:
    # the fixture makes its kit current: cold()/hot()/expect_observable() need no kit argument,
    # and a wrong to_be fails the test itself (its call), not its teardown
    ini(pytester)
    pytester.makepyfile(
        """
        import reactivex as rx
        from rxagent.testing import cold, expect_observable, expect_subscriptions, hot

        def test_merge_passes(marbles):
            a = cold("-a-c|")
            b = hot("^-b-d|")
            expect_observable(rx.merge(a, b)).to_be("-abcd|")
            expect_subscriptions(a).to_be("^---!")

        def test_merge_fails(marbles):
            expect_observable(rx.merge(cold("-a|"), hot("^-b|"))).to_be("-ax|")

        def test_forgotten_to_be_fails(marbles):
            expect_observable(cold("-a|"))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*^ frame 2: expected 'x', got 'b'*"])
    result.stdout.fnmatch_lines(["*1 expect_observable(...) never given a .to_be(...)*"])
    assert "error" not in result.stdout.lines[-1]  # no teardown errors


def test_the_frame_comes_from_the_ini_file(pytester: pytest.Pytester) -> None:
    ini(pytester, "rxagent_marble_frame = 0.5s")
    pytester.makepyfile(
        """
        def test_frame(marbles, marble_frame):
            assert marble_frame == 0.5
            assert marbles.time("--|") == 1.0
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_module_can_override_the_frame_fixture(pytester: pytest.Pytester) -> None:
    ini(pytester)
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def marble_frame():
            return 1.0

        def test_frame(marbles):
            assert marbles.parse("a 1m b")[1].frame == 61
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_bad_frame_is_a_usage_error(pytester: pytest.Pytester) -> None:
    ini(pytester, "rxagent_marble_frame = fast")
    pytester.makepyfile("def test_frame(marble_frame): pass")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*rxagent_marble_frame must be a positive duration*"])


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    ini(pytester)
    pytester.makepyfile("def test_needs_it(marbles): pass")
    result = pytester.runpytest("-p", "no:rxagent")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'marbles' not found*"])


def test_our_own_tests_get_the_fixtures_too(marbles: Marbles, marble_frame: float) -> None:
    assert marbles.frame == marble_frame == 0.001


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1ms", 0.001), ("0.5s", 0.5), ("2m", 120.0), ("0.001", 0.001), (" 3 ms ", 0.003)],
)
def test_frames_parse(text: str, seconds: float) -> None:
    assert parse_frame(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "-1ms", "1h", ""])
def test_bad_frames_are_refused(text: str) -> None:
    with pytest.raises(pytest.UsageError):
        parse_frame(text)
