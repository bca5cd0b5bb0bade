"""The hypothesis strategies shipped to users keep the promises their docstrings make."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from rxagent.events import Event
from rxagent.testing.marbles import parse_marbles
from rxagent.testing.strategies import (
    events,
    keys,
    late_flags,
    marble_diagrams,
    marble_values,
    timed_events,
)
from rxagent.testing.virtual import TimedEvent

# -- marble diagrams -------------------------------------------------------------------------------


@given(diagram=marble_diagrams("xyz", groups=True, spaces=True, progressions=True))
def test_diagrams_always_parse(diagram: str) -> None:
    for n in parse_marbles(diagram):
        assert n.kind != "N" or n.value in "xyz"


@given(diagram=marble_diagrams(ending="complete"))
def test_a_complete_diagram_ends_with_completion(diagram: str) -> None:
    notes = parse_marbles(diagram)
    assert notes[-1].kind == "C"
    assert [n.kind for n in notes].count("C") == 1
    assert all(n.kind != "E" for n in notes)


@given(diagram=marble_diagrams(ending="error"))
def test_an_error_diagram_ends_with_an_error(diagram: str) -> None:
    notes = parse_marbles(diagram)
    assert notes[-1].kind == "E"
    assert all(n.kind == "N" for n in notes[:-1])


@given(diagram=marble_diagrams(ending="none", groups=False, min_size=3, max_size=5))
def test_an_open_diagram_has_only_values_and_sizes_count_tokens(diagram: str) -> None:
    assert all(n.kind == "N" for n in parse_marbles(diagram))
    assert 3 <= len(diagram) <= 5


@given(diagram=marble_diagrams(hot=True))
def test_a_hot_diagram_has_one_subscription_point(diagram: str) -> None:
    assert diagram.count("^") == 1
    parse_marbles(diagram)


@given(values=marble_values("ab", st.text(max_size=3)))
def test_marble_values_map_every_character(values: dict[str, str]) -> None:
    assert set(values) == {"a", "b"}


def test_diagram_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="alphabet"):
        marble_diagrams("a-b").example()
    with pytest.raises(InvalidArgument, match="ending"):
        marble_diagrams(ending="sometimes").example()  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="min_size"):
        marble_diagrams(min_size=3, max_size=2).example()


# -- keys ------------------------------------------------------------------------------------------


@given(key=keys(4, prefix="sym"))
def test_keys_come_from_a_fixed_set(key: str) -> None:
    assert key in {"sym0", "sym1", "sym2", "sym3"}


@given(drawn=st.lists(keys(3, hot=0.9), min_size=1))
def test_a_hot_key_is_one_of_the_keys(drawn: list[str]) -> None:
    assert set(drawn) <= {"k0", "k1", "k2"}


def test_key_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument):
        keys(0)
    with pytest.raises(InvalidArgument, match="probability"):
        keys(2, hot=1.5)


# -- timed event streams -------------------------------------------------------------------------


def _ticks(seconds: float, resolution: float = 0.001) -> bool:
    return math.isclose(seconds / resolution, round(seconds / resolution), abs_tol=1e-6)


@given(stream=timed_events(keys=2, max_size=40, burst_rate=0.3, silence_rate=0.1, max_silence=30))
def test_arrivals_are_in_order_on_the_resolution_grid(stream: list[TimedEvent]) -> None:
    arrivals = [ev.arrival for ev in stream]
    assert arrivals == sorted(arrivals)
    assert all(_ticks(a) for a in arrivals)
    assert all(b - a <= 30 + 1e-9 for a, b in itertools.pairwise(arrivals))
    assert {ev.key for ev in stream} <= {"k0", "k1"}
    # without disorder, events happen when they arrive
    assert all(ev.time == ev.arrival for ev in stream)
    assert [ev.seq for ev in stream] == list(range(len(stream)))


@given(stream=timed_events(max_disorder=2.0, late_rate=0.2, max_lateness=5.0, max_size=40))
def test_disorder_is_bounded_and_only_late_events_exceed_it(stream: list[TimedEvent]) -> None:
    for ev in stream:
        assert ev.time is not None
        delay = ev.arrival - ev.time
        assert -1e-9 <= delay <= 2.0 + 5.0 + 1e-9
    # an event late for the watermark was delayed beyond the disorder bound
    for ev, late in zip(stream, late_flags(stream, 2.0), strict=True):
        if late:
            assert ev.time is not None
            assert ev.arrival - ev.time > 2.0 - 1e-9


@given(stream=timed_events(max_disorder=1.0, max_size=40))
def test_without_late_events_nothing_is_late_for_the_disorder_bound(
    stream: list[TimedEvent],
) -> None:
    assert not any(late_flags(stream, 1.0))


@given(stream=timed_events(duplicate_rate=0.3, max_size=30))
def test_duplicates_repeat_an_event_no_earlier_than_it(stream: list[TimedEvent]) -> None:
    first: dict[int | None, TimedEvent] = {}
    for ev in stream:
        original = first.setdefault(ev.seq, ev)
        if original is not ev:
            assert (ev.value, ev.key, ev.time) == (original.value, original.key, original.time)
            assert ev.arrival >= original.arrival
    counts = [sum(1 for ev in stream if ev.seq == seq) for seq in first]
    assert all(c in (1, 2) for c in counts)


@given(stream=timed_events(keys=None, values=st.just("v"), min_size=2, max_size=5, epoch=1e9))
def test_unkeyed_streams_with_an_epoch(stream: list[TimedEvent]) -> None:
    assert 2 <= len(stream) <= 5
    assert all(ev.key is None and ev.value == "v" for ev in stream)
    assert all(ev.time is not None and ev.time >= 1e9 for ev in stream)


@given(stream=timed_events(keys=st.sampled_from(["only"]), max_size=5))
def test_keys_may_be_a_strategy(stream: list[TimedEvent]) -> None:
    assert all(ev.key == "only" for ev in stream)


@given(evs=events(keys=2, max_size=10))
def test_events_are_rxagent_events_positioned_by_seq(evs: list[Event]) -> None:
    for i, ev in enumerate(evs):
        assert isinstance(ev, Event)
        assert ev.position is not None
        assert ev.position.offset == i
        assert ev.time is not None


def test_late_flags_follow_the_greatest_time_seen() -> None:
    def at(t: float | None) -> TimedEvent:
        return TimedEvent(0.0, None, time=t)

    stream = [at(10.0), at(8.0), at(7.0), at(None), at(12.0), at(9.5), at(9.4)]
    assert late_flags(stream, 2.5) == [False, False, True, False, False, False, True]


def test_stream_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="duplicate_rate"):
        timed_events(duplicate_rate=-0.1)
    with pytest.raises(InvalidArgument, match="at most 1"):
        timed_events(burst_rate=0.7, silence_rate=0.5)
    with pytest.raises(InvalidArgument, match="max_disorder"):
        timed_events(max_disorder=-1)
    with pytest.raises(InvalidArgument, match="resolution"):
        timed_events(resolution=0)
    with pytest.raises(InvalidArgument, match="min_size"):
        timed_events(min_size=5, max_size=1)
