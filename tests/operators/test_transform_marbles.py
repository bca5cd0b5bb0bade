"""Marble and property tests of the per-event transforms and count windows:
values, completion, error, disposal, and the flow-control rule (every event ends)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rxagent import operators as ops
from rxagent.testing.marbles import assert_marbles, run_marbles
from rxagent.testing.strategies import marble_diagrams

VALUES = {"a": 1, "b": 2, "c": 3, "d": 4}


def test_filter_marbles() -> None:
    even = ops.filter(lambda v: v % 2 == 0)
    assert_marbles(even, "-a-b-c-d-|", "---b---d-|", VALUES)
    assert_marbles(even, "-a-b-#", "---b-#", VALUES)
    assert_marbles(even, "-ab-c", "--b", VALUES, unsubscribe="^--!", subscriptions="^--!")


def test_map_marbles() -> None:
    ten = ops.map(lambda v: v * 10)
    assert_marbles(
        ten, "-a-(bc)-|", "-x-(yz)-|", VALUES, expected_values={"x": 10, "y": 20, "z": 30}
    )
    assert_marbles(ten, "-a-#", "-x-#", VALUES, expected_values={"x": 10})
    assert_marbles(ten, "-a-b-c-|", "-x-", VALUES, expected_values={"x": 10}, unsubscribe="^--!")


def test_a_raising_map_dead_letters_and_the_marbles_go_on() -> None:
    run = assert_marbles(
        ops.map(lambda v: 12 // (v - 2)),
        "-a-b-c-|",
        "-x---y-|",
        VALUES,
        expected_values={"x": -12, "y": 12},
    )
    assert [d.event.value for d in run.dead_letters] == [2]


def test_key_by_tap_flat_map_marbles() -> None:
    run = assert_marbles(ops.key_by(lambda v: v % 2), "-a-b-|", "-a-b-|", VALUES)
    assert run.keys == [1, 0]
    seen: list[int] = []
    assert_marbles(ops.tap(seen.append), "-a-b-|", "-a-b-|", VALUES)
    assert seen == [1, 2]
    run = run_marbles(ops.flat_map(lambda v: [v] * v), "-a---b---|", VALUES)
    assert [(n.frame, n.value) for n in run.notifications] == [(1, 1), (5, 2), (5, 2), (9, None)]
    assert run.flow.pending == 0


def test_decode_marbles() -> None:
    frames = {"a": '{"n": 1}', "b": "nope", "c": '{"n": 3}'}
    run = assert_marbles(
        ops.decode(),
        "-a-b-c-|",
        "-x---y-|",
        frames,
        expected_values={"x": {"n": 1}, "y": {"n": 3}},
    )
    assert run.dead_letters[0].error_type == "DecodeError"


def test_count_window_marbles() -> None:
    w = ops.count_window(2, agg=ops.sum_())
    run = run_marbles(w, "-a-b-c-|", VALUES)
    assert [(n.frame, n.kind) for n in run.notifications] == [(3, "N"), (7, "N"), (7, "C")]
    assert [n.value.value for n in run.notifications if n.kind == "N"] == [3, 3]
    assert run.flow.pending == 0
    # an error drops the open window without ending its events (nothing is committed)
    err = run_marbles(w, "-a-b-c-#", VALUES)
    assert [n.kind for n in err.notifications] == ["N", "E"]


@given(diagram=marble_diagrams(alphabet="abcd"), threshold=st.integers(0, 5))
def test_filter_delivers_exactly_the_matching_values(diagram: str, threshold: int) -> None:
    run = run_marbles(ops.filter(lambda v: v > threshold), diagram, VALUES)
    source = run_marbles(ops.tap(lambda v: None), diagram, VALUES)
    assert run.values == [v for v in source.values if v > threshold]
    # delivered + dropped = input, and every event ended unless the stream errored
    if not any(n.kind == "E" for n in run.notifications):
        assert run.flow.pending == 0


@given(diagram=marble_diagrams(alphabet="abcd"))
def test_map_keeps_frames_and_order(diagram: str) -> None:
    run = run_marbles(ops.map(lambda v: -v), diagram, VALUES)
    source = run_marbles(ops.tap(lambda v: None), diagram, VALUES)
    assert [(n.frame, n.kind, -n.value if n.kind == "N" else None) for n in run.notifications] == [
        (n.frame, n.kind, n.value if n.kind == "N" else None) for n in source.notifications
    ]
