"""A file's test cases giving events keys and event times per marble letter
(``keys:`` and ``times:``), as a Kafka message's key and timestamp travel beside
its value."""

from __future__ import annotations

import textwrap

import pytest

from rxagent.config import loads
from rxagent.config.testing import check_cases, run_cases

KAFKA = '{kafka: {topics: ticks, bootstrap_servers: "127.0.0.1:9092", group_id: g}}'

# keyed by the Kafka message key: no key_by, no key: on the source
THROTTLED = f"""\
state:
  last: {{}}
pipelines:
  p:
    source: {KAFKA}
    steps:
      - throttle_first: 3s          # per the event's key
    sinks:
      - state: {{store: last, value: px, name: last}}
tests:
  - name: per message key
    pipeline: p
    tick: 1s
    values:
      a: {{px: 1}}
      b: {{px: 2}}
      m: {{px: 9}}
    keys: {{a: AAPL, b: AAPL, m: MSFT}}
    input: amb-b|
    expect:
      last: am--b|                  # b at 2 s is within AAPL's 3 s; m is another key
      state.last: {{AAPL: 2, MSFT: 9}}
"""


def window_file(late: str, expect: str) -> str:
    """Event-time windows of 10 s over Kafka timestamps; ``l`` (1003) arrives
    after ``c`` (1012) moved the watermark past the first window."""
    return f"""\
pipelines:
  w:
    source: {KAFKA}
    steps:
      - tumbling_window: {{size: 10s, time: event, agg: count, late: {late}}}
    sinks:
      - log
tests:
  - name: event time
    pipeline: w
    tick: 1s
    times: {{a: 1000, b: 1004, c: 1012, l: 1003, d: 1021}}
    input: abcld|
    expect:
      log: {expect}
    values:
      x: {{key: null, value: 2, count: 2, start: 1000.0, end: 1010.0, partial: false}}
      y: {{key: null, value: 1, count: 1, start: 1010.0, end: 1020.0, partial: false}}
      z: {{key: null, value: 1, count: 1, start: 1020.0, end: 1030.0, partial: false}}
"""


def reports(text: str) -> list[str]:
    return [r.report() for r in run_cases(loads(textwrap.dedent(text), file="t.yaml"))]


def test_a_pipeline_keyed_by_the_message_key_throttles_per_letter_key() -> None:
    assert reports(THROTTLED) == ["PASS per message key (pipeline p)"]


def test_without_keys_every_event_shares_one_key() -> None:
    [report] = reports(THROTTLED.replace("    keys: {a: AAPL, b: AAPL, m: MSFT}\n", ""))
    assert report.startswith("FAIL per message key (pipeline p)\n")
    assert "expected: am--b|" in report
    assert "actual:   a---b|" in report  # m fell in the one key's interval
    assert "event has no key for state 'last'" in report


@pytest.mark.parametrize("late", ["drop", "dead_letter"])
def test_an_event_time_window_over_letter_times_leaves_the_late_letter_out(late: str) -> None:
    # a and b close at c (watermark 1012); d (1021) closes c's window; d's flushes at the end
    assert reports(window_file(late, "--x-y(z|)")) == ["PASS event time (pipeline w)"]


def test_a_late_letter_is_a_dead_letter_under_that_policy() -> None:
    # a wrong expectation shows the run's dead letters: l, late, under the window's name
    [report] = reports(window_file("dead_letter", "--x-y|"))
    assert report.startswith("FAIL event time (pipeline w)")
    assert report.splitlines()[-1] == (
        "    1 dead letters, the first in stage 'tumbling_window': Rejected: late event: "
        "its windows closed when the watermark passed 1010"
    )
    [dropped] = reports(window_file("drop", "--x-y|"))
    assert "dead letters" not in dropped


def test_a_letter_key_wins_over_the_source_key_expression() -> None:
    text = """\
    state:
      last: {}
    pipelines:
      p:
        source: {memory: {items: [], key: sym}}
        sink: {state: {store: last, value: px}}
    tests:
      - name: b is re-keyed
        pipeline: p
        values:
          a: {sym: AAPL, px: 1}
          b: {sym: AAPL, px: 2}
        keys: {b: MSFT}
        input: ab|
        expect:
          state.last: {AAPL: 1, MSFT: 2}
    """
    assert reports(text) == ["PASS b is re-keyed (pipeline p)"]


def test_a_letter_not_in_the_input_is_a_located_problem() -> None:
    text = """\
    pipelines:
      p:
        source: {memory: []}
        sink: log
    tests:
      - name: typos
        pipeline: p
        input: a-(bc)|
        keys: {a: A, x: X}
        times: {bc: 5, "|": 1}
        expect: {log: a-(bc)|}
    """
    config = loads(textwrap.dedent(text), file="t.yaml")
    assert [str(p) for p in check_cases(config)] == [
        "t.yaml:9:18: tests[0].keys.x: letter 'x' is not a value of the input diagram "
        "'a-(bc)|' (its letters: a, b, c)",
        "t.yaml:10:13: tests[0].times.bc: letter 'bc' is not a value of the input diagram "
        "'a-(bc)|' (its letters: a, b, c)",
        "t.yaml:10:20: tests[0].times.|: letter '|' is not a value of the input diagram "
        "'a-(bc)|' (its letters: a, b, c)",
    ]
    [result] = run_cases(config)
    assert result.failures == [str(p) for p in check_cases(config)]
