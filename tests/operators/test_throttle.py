"""The throttle family in virtual time: marbles, and properties against plain models."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict, deque
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex import Observable
from reactivex.testing import TestScheduler

from rxagent import ConfigurationError
from rxagent.context import PipelineContext
from rxagent.events import Batch
from rxagent.flow import Flow
from rxagent.operators.base import Operator
from rxagent.operators.throttle import (
    debounce,
    rate_limit,
    sample,
    throttle_first,
    throttle_last,
    throttle_latest,
)
from rxagent.testing import run
from rxagent.testing.marbles import (
    Notification,
    assert_marbles,
    marble_batches,
    run_marbles,
)

F = 0.001  # one marble frame, in seconds
Op = Callable[[Observable[Batch]], Observable[Batch]]

# -- marbles: the docstring diagrams, and more ------------------------------------------


def test_throttle_first_passes_the_first_and_drops_for_the_interval() -> None:
    run = assert_marbles(throttle_first(3 * F), "-a-b-c-d-e-|", "-a---c---e-|")
    metrics = run.ctx.metrics["throttle_first"]
    assert (metrics.events_in, metrics.events_out, metrics.dropped) == (5, 3, 2)


def test_throttle_first_an_event_exactly_one_interval_later_passes() -> None:
    assert_marbles(throttle_first(2 * F), "a-b-c|", "a-b-c|")
    assert_marbles(throttle_first(2 * F), "(ab)-c|", "a----c|")


def test_throttle_first_per_key() -> None:
    assert_marbles(throttle_first(3 * F), "-aAbB-cC-|", "-aA---cC-|", keys=str.isupper)


def test_throttle_first_with_a_key_field_and_a_timedelta() -> None:
    run = run_marbles(
        throttle_first(timedelta(milliseconds=3), key="sym"),
        "-a-b-x-y-|",
        {"a": {"sym": "A"}, "b": {"sym": "B"}, "x": {"sym": "A"}, "y": {"sym": "B"}},
    )
    assert [(n.frame, n.value["sym"]) for n in run.notifications if n.kind == "N"] == [
        (1, "A"),
        (3, "B"),
        (5, "A"),
        (7, "B"),
    ]


def test_throttle_last_emits_the_latest_at_the_interval_end() -> None:
    run = assert_marbles(throttle_last(3 * F), "-a-b-----c---|", "----b-------c|")
    assert run.ctx.metrics["throttle_last"].dropped == 1


def test_throttle_last_completion_waits_for_the_held_event() -> None:
    assert_marbles(throttle_last(3 * F), "-a-|", "----(a|)")


def test_throttle_last_per_key_in_one_timer_batch() -> None:
    run = assert_marbles(throttle_last(3 * F), "-(abA)-----|", "----(bA)---|", keys=str.isupper)
    assert run.ctx.metrics["throttle_last"].dropped == 1


def test_throttle_latest_leads_and_trails() -> None:
    assert_marbles(throttle_latest(4 * F), "-ab-c------d--|", "-a---c-----d--|")


def test_throttle_latest_a_trailing_emission_starts_an_interval() -> None:
    # c trails at 5; d at 6 is inside the interval c started, so it trails at 9
    assert_marbles(throttle_latest(4 * F), "-ab---d-|", "-a---b---(d|)")


def test_debounce_emits_after_quiet_and_flushes_on_completion() -> None:
    assert_marbles(debounce(3 * F), "-a-b-----c--|", "------b-----(c|)")


def test_debounce_per_key() -> None:
    assert_marbles(debounce(3 * F), "-aAbB----|", "------bB-|", keys=str.isupper)


def test_sample_on_the_interval_grid() -> None:
    assert_marbles(sample(4 * F), "-a-b--c-d--|", "----b---c---(d|)")


def test_sample_per_key_emits_every_key_in_arrival_order() -> None:
    # in order of each key's latest arrival: b (replacing a) came before A (replacing B)
    assert_marbles(sample(4 * F), "aBbA-----|", "----(bA)-|", keys=str.isupper)


def test_sample_does_not_emit_when_nothing_came() -> None:
    assert_marbles(sample(2 * F), "-a-------b-|", "--a-------b|")


def test_rate_limit_delay_holds_the_excess() -> None:
    run = assert_marbles(rate_limit(2, 4 * F), "-(abc)--d---|", "-(ab)c--d---|")
    assert run.ctx.metrics["rate_limit"].dropped == 0


def test_rate_limit_drop_ends_the_excess() -> None:
    run = assert_marbles(rate_limit(2, 4 * F, "drop"), "-(abc)--d---|", "-(ab)---d---|")
    assert run.ctx.metrics["rate_limit"].dropped == 1


def test_rate_limit_delay_keeps_order_behind_the_delayed() -> None:
    # c waits for a's slot; d, arriving after a's slot freed, still goes after c
    assert_marbles(rate_limit(1, 3 * F), "-abcd---|", "-a--b--c--(d|)")


def test_rate_limit_per_key() -> None:
    assert_marbles(rate_limit(1, 3 * F, "drop"), "-aAbB--cC-|", "-aA----cC-|", keys=str.isupper)


# -- errors and disposal -----------------------------------------------------------------


# operator, its output for "-ab" before the end, events it still holds then
ENDINGS: list[tuple[Op, str, int]] = [
    (throttle_first(3 * F), "-a-", 0),
    (throttle_last(3 * F), "---", 1),
    (throttle_latest(3 * F), "-a-", 1),
    (debounce(3 * F), "---", 1),
    (sample(3 * F), "---", 1),
    (rate_limit(1, 3 * F), "-a-", 1),
    (rate_limit(1, 3 * F, "drop"), "-a-", 0),
]


@pytest.mark.parametrize(("op", "before", "held"), ENDINGS, ids=lambda x: repr(x))
def test_an_upstream_error_passes_at_once_and_held_events_stay_unended(
    op: Op, before: str, held: int
) -> None:
    run = assert_marbles(op, "-ab#", before + "#", check_flow=False)
    # never processed, so never ended: the watermark must not pass them
    assert run.flow.pending == held


@pytest.mark.parametrize(("op", "before", "held"), ENDINGS, ids=lambda x: repr(x))
def test_disposal_cancels_the_timers(op: Op, before: str, held: int) -> None:
    run = assert_marbles(op, "-ab-----|", before, unsubscribe="^--!")
    assert run.subscriptions == [(0, 3)]
    assert run.flow.pending == held


def test_a_raising_key_function_dead_letters_the_event() -> None:
    def key(v: str) -> str:
        if v == "x":
            raise ValueError("no key")
        return "one key"

    run = assert_marbles(throttle_last(3 * F, key=key), "-axb-|", "----b|")
    assert [d.error_type for d in run.dead_letters] == ["ValueError"]
    assert run.ctx.metrics["throttle_last"].dropped == 1


def test_a_downstream_raising_on_a_timer_emission_becomes_on_error() -> None:
    scheduler = TestScheduler()
    ctx = PipelineContext("t", scheduler=scheduler)
    notes = [Notification(1, "N", "a")]
    source, _ = marble_batches(scheduler, notes, ctx=ctx, flow=Flow("t", 100), frame=F)
    errors: list[Exception] = []

    def broken_sink(batch: Batch) -> None:
        raise RuntimeError("sink bug")

    # the held event goes out from the throttle's timer callback, which must not raise
    throttle_last(2 * F)(source).subscribe(broken_sink, errors.append, scheduler=scheduler)
    scheduler.advance_to(10 * F)
    assert [str(e) for e in errors] == ["sink bug"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: throttle_first(0), "throttle_first: interval must be a positive number"),
        (lambda: throttle_last(-1), "throttle_last: interval must be a positive"),
        (lambda: debounce(math.inf), "debounce: interval must be a positive"),
        (lambda: sample("1s"), "sample: interval must be a positive"),
        (lambda: throttle_latest(1, key=3.5), "throttle_latest: key must be a field name"),
        (lambda: rate_limit(0, 1), "rate_limit: n must be an int >= 1, got 0"),
        (lambda: rate_limit(True, 1), "rate_limit: n must be an int >= 1"),
        (lambda: rate_limit(1, 1, "queue"), "rate_limit: policy must be 'delay' or 'drop'"),
    ],
)
def test_bad_arguments_name_the_operator_and_the_argument(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_without_any_scheduler_the_stage_fails_clearly() -> None:
    scheduler = TestScheduler()
    ctx = PipelineContext("t")  # no scheduler anywhere
    source, _ = marble_batches(
        scheduler, [Notification(0, "N", "a")], ctx=ctx, flow=Flow("t", 10), frame=F
    )
    errors: list[Exception] = []
    throttle_last(F)(source).subscribe(on_error=errors.append)
    scheduler.advance_to(F)
    assert "throttle_last 'throttle_last' needs a scheduler" in str(errors[0])


def test_an_explicit_scheduler_is_used() -> None:
    mine = TestScheduler()
    run = run_marbles(throttle_last(2 * F, scheduler=mine), "-a-|")
    assert run.values == []  # its clock never moves: the held event waits on it
    mine.advance_to(1.0)
    assert run.flow.pending == 0


# -- in a real pipeline ---------------------------------------------------------------------


async def test_in_a_pipeline_on_the_asyncio_scheduler() -> None:
    items = [{"sym": s, "i": i} for i, s in enumerate("ababab")]
    result = await run(items, throttle_first(60.0, key="sym"), batch_size=2)
    assert [v["i"] for v in result.values] == [0, 1]
    result = await run(items, throttle_last(0.01, key="sym"), debounce(0.01, key="sym"))
    assert sorted(v["i"] for v in result.values) == [4, 5]
    assert result.status.flow["pending"] == 0
    assert result.status.stages["throttle_last"]["dropped"] == 4


# -- properties against plain per-event models -----------------------------------------------

Event = tuple[int, int, str]  # (frame, id, key)
Out = dict[str, list[tuple[int, int]]]  # key -> [(frame, id)]

events_st = st.lists(st.tuples(st.integers(0, 40), st.sampled_from("abc")), max_size=40).map(
    lambda evs: [(t, i, k) for i, (t, k) in enumerate(sorted(evs, key=lambda e: e[0]))]
)


def _run(op: Op, events: list[Event]) -> tuple[Out, int, Any]:
    """Events at their frames (frame = 1 s), keys from the values; outputs per key,
    the completion frame and the run's flow, after checking the flow rule."""
    scheduler = TestScheduler()
    ctx = PipelineContext("p", scheduler=scheduler)
    flow = Flow("p", 1 << 20)
    last = max((t for t, _, _ in events), default=0)
    notes = [Notification(t, "N", (i, k)) for t, i, k in events]
    notes.append(Notification(last + 1, "C"))
    source, _ = marble_batches(scheduler, notes, ctx=ctx, flow=flow, frame=1.0, keys=lambda v: v[1])
    out: Out = defaultdict(list)
    frames: list[int] = []
    done: list[int] = []

    def on_next(batch: Batch) -> None:
        now = round(scheduler.clock)
        for i, k in batch.values:
            out[k].append((now, i))
            frames.append(now)
        batch.end_all()

    op(source).subscribe(
        on_next,
        lambda e: pytest.fail(str(e)),
        lambda: done.append(round(scheduler.clock)),
        scheduler=scheduler,
    )
    scheduler.advance_to(last + 1000.0)
    assert frames == sorted(frames)
    assert len(done) == 1
    assert flow.pending == 0  # everything passed on was ended, everything else dropped
    metrics = next(iter(ctx.metrics.values()), None) or ctx.stage("no batch came")
    assert metrics.events_in == len(events)
    assert metrics.events_out + metrics.dropped == len(events)
    assert metrics.events_out == sum(map(len, out.values()))
    return dict(out), done[0], metrics


def _model(
    events: list[Event],
    on_event: Callable[[int, str, list[int]], list[int]],
    on_due: Callable[[int, str], list[int]],
    due: dict[str, int],
) -> Out:
    """Step the integer clock: deadlines due at t first, then the events at t."""
    out: Out = defaultdict(list)
    by_time: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for t, i, k in events:
        by_time[t][k].append(i)
    end = max(by_time, default=0) + 200
    for t in range(end):
        for k in sorted((k for k, d in due.items() if d <= t), key=lambda k: due[k]):
            del due[k]
            out[k].extend((t, i) for i in on_due(t, k))
        for k, ids in by_time.get(t, {}).items():
            out[k].extend((t, i) for i in on_event(t, k, ids))
    return dict(out)


def _spaced(out: Out, interval: int) -> bool:
    pairs = (pair for seq in out.values() for pair in itertools.pairwise(seq))
    return all(b[0] - a[0] >= interval for a, b in pairs)


@given(events=events_st, interval=st.integers(1, 6))
def test_throttle_first_model_and_spacing(events: list[Event], interval: int) -> None:
    got, _, _ = _run(throttle_first(float(interval)), events)
    until: dict[str, int] = {}

    def on_event(t: int, k: str, ids: list[int]) -> list[int]:
        if until.get(k, -1 << 30) <= t:
            until[k] = t + interval
            return ids[:1]
        return []

    assert got == _model(events, on_event, lambda t, k: [], {})
    assert _spaced(got, interval)


@given(events=events_st, interval=st.integers(1, 6))
def test_throttle_last_model_and_spacing(events: list[Event], interval: int) -> None:
    got, done, _ = _run(throttle_last(float(interval)), events)
    pending: dict[str, int] = {}
    due: dict[str, int] = {}

    def on_event(t: int, k: str, ids: list[int]) -> list[int]:
        pending[k] = ids[-1]
        due.setdefault(k, t + interval)
        return []

    assert got == _model(events, on_event, lambda t, k: [pending.pop(k)], due)
    assert _spaced(got, interval)
    assert done == max([events[-1][0] + 1 if events else 1] + [s[-1][0] for s in got.values()])


@given(events=events_st, interval=st.integers(1, 6))
def test_throttle_latest_model_and_spacing(events: list[Event], interval: int) -> None:
    got, _, _ = _run(throttle_latest(float(interval)), events)
    until: dict[str, int] = {}
    pending: dict[str, int] = {}
    due: dict[str, int] = {}

    def on_event(t: int, k: str, ids: list[int]) -> list[int]:
        out = []
        if until.get(k, -1 << 30) <= t:
            until[k] = t + interval
            out, ids = ids[:1], ids[1:]
        if ids:
            pending[k] = ids[-1]
            due[k] = until[k]
        return out

    def on_due(t: int, k: str) -> list[int]:
        until[k] = t + interval
        return [pending.pop(k)]

    assert got == _model(events, on_event, on_due, due)
    assert _spaced(got, interval)
    # the first event of a key always passes at once
    firsts = {k: min((i for _, i, kk in events if kk == k)) for _, _, k in events}
    assert all(got[k][0][1] == i for k, i in firsts.items())


@given(events=events_st, interval=st.integers(1, 6))
def test_debounce_model(events: list[Event], interval: int) -> None:
    got, done, _ = _run(debounce(float(interval)), events)
    pending: dict[str, int] = {}
    due: dict[str, int] = {}
    end = (events[-1][0] if events else 0) + 1

    def on_event(t: int, k: str, ids: list[int]) -> list[int]:
        pending[k] = ids[-1]
        due[k] = t + interval
        return []

    def on_due(t: int, k: str) -> list[int]:
        return [pending.pop(k)] if t < end else []

    want = _model(events, on_event, on_due, due)
    for k, i in pending.items():  # flushed at completion
        want.setdefault(k, []).append((end, i))
    assert got == {k: v for k, v in want.items() if v}
    assert done == end


@given(events=events_st, interval=st.integers(1, 6))
def test_sample_model(events: list[Event], interval: int) -> None:
    got, _, _ = _run(sample(float(interval)), events)
    pending: dict[str, int] = {}
    out: Out = defaultdict(list)
    by_time: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        by_time[e[0]].append(e)
    for t in range(200):
        if t % interval == 0:
            for k, i in pending.items():
                out[k].append((t, i))
            pending.clear()
        for _, i, k in by_time.get(t, []):
            pending[k] = i
    assert got == dict(out)
    assert all(t % interval == 0 for seq in got.values() for t, _ in seq)


@given(events=events_st, n=st.integers(1, 3), interval=st.integers(1, 6))
def test_rate_limit_drop_model_and_limit(events: list[Event], n: int, interval: int) -> None:
    got, _, metrics = _run(rate_limit(n, float(interval), "drop"), events)
    sent: dict[str, list[int]] = defaultdict(list)

    def on_event(t: int, k: str, ids: list[int]) -> list[int]:
        free = n - sum(1 for e in sent[k] if e > t - interval)
        sent[k].extend([t] * min(free, len(ids)))
        return ids[:free]

    assert got == _model(events, on_event, lambda t, k: [], {})
    _assert_rate(got, n, interval)
    assert metrics.events_out + metrics.dropped == len(events)


@given(events=events_st, n=st.integers(1, 3), interval=st.integers(1, 6))
def test_rate_limit_delay_model_order_and_limit(events: list[Event], n: int, interval: int) -> None:
    got, _, metrics = _run(rate_limit(n, float(interval)), events)
    sent: dict[str, list[int]] = defaultdict(list)
    queues: dict[str, deque[int]] = defaultdict(deque)
    out: Out = defaultdict(list)
    by_time: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for t, i, k in events:
        by_time[t][k].append(i)
    for t in range(len(events) * interval + 50):
        for k in "abc":
            queues[k].extend(by_time.get(t, {}).get(k, []))
            free = n - sum(1 for e in sent[k] if e > t - interval)
            while free > 0 and queues[k]:
                out[k].append((t, queues[k].popleft()))
                sent[k].append(t)
                free -= 1
    assert got == {k: v for k, v in out.items() if v}
    _assert_rate(got, n, interval)
    assert metrics.dropped == 0
    for k in got:  # everything, in order per key
        assert [i for _, i in got[k]] == [i for _, i, kk in events if kk == k]


def _assert_rate(out: Out, n: int, interval: int) -> None:
    for seq in out.values():
        times = [t for t, _ in seq]
        for t in times:
            assert sum(1 for u in times if t - interval < u <= t) <= n


@given(
    events=events_st,
    interval=st.integers(1, 6),
    which=st.sampled_from([throttle_first, throttle_last, throttle_latest]),
)
def test_throttles_never_emit_a_key_twice_within_the_interval(
    events: list[Event], interval: int, which: Callable[..., Op]
) -> None:
    got, _, _ = _run(which(float(interval)), events)
    assert _spaced(got, interval)
    for seq in got.values():  # a subsequence of the key's events, in order
        ids = [i for _, i in seq]
        assert ids == sorted(ids)


def test_key_types_are_hashable_values() -> None:
    keys: list[Hashable] = [None, 1, ("a", 2)]
    assert_marbles(throttle_first(5 * F), "abc|", "abc|", keys=lambda v: keys["abc".index(v)])


def test_a_deadline_set_on_a_timer_does_not_hide_an_earlier_one() -> None:
    # found by the model test: releasing a's second event set a's next deadline (4)
    # from inside the timer, which must not push b's deadline (3) back to 4
    got, _, _ = _run(
        rate_limit(1, 2.0), [(0, 0, "a"), (0, 1, "a"), (0, 2, "a"), (1, 3, "b"), (1, 4, "b")]
    )
    assert got == {"a": [(0, 0), (2, 1), (4, 2)], "b": [(1, 3), (3, 4)]}


# -- why didn't it fire: suppressions per key ---------------------------------------------


def _suppressed(run: Any, stage: str) -> list[tuple[Any, str, int, float, float | None]]:
    return [
        (
            e.key,
            e.reason,
            e.count,
            round(e.last_at / F),
            None if e.eligible_at is None else round(e.eligible_at / F),
        )
        for e in run.ctx.suppressions.entries(stage)
    ]


def test_throttle_first_records_throttled_keys_with_the_end_of_their_interval() -> None:
    run = assert_marbles(throttle_first(3 * F), "-a-b-c-d-e-|", "-a---c---e-|")
    # b (frame 3) and d (frame 7) were let go; the key is eligible at frame 4, then 8
    assert _suppressed(run, "throttle_first") == [(None, "throttled", 2, 7, 8)]
    assert run.ctx.suppressions.totals("throttle_first") == {"throttled": 2}


def test_throttle_first_records_per_key() -> None:
    run = run_marbles(throttle_first(3 * F), "-aAbB-cC-|", keys=str.isupper)
    assert sorted(_suppressed(run, "throttle_first"), key=repr) == [
        (False, "throttled", 1, 3, 4),
        (True, "throttled", 1, 4, 5),
    ]


def test_nothing_let_go_records_nothing() -> None:
    run = assert_marbles(throttle_first(2 * F), "a-b-c|", "a-b-c|")
    assert run.ctx.suppressions.entries() == []
    assert run.ctx.suppressions.as_dict() == {}


@pytest.mark.parametrize(
    ("operator", "source", "reason", "expected"),
    [
        # a (frame 1) is held; b (frame 2) replaces it: a is let go
        (throttle_last(3 * F), "-ab-----|", "throttled", (None, 1, 2, 4)),
        # a leads, b is held, c (frame 3) replaces b; the interval ends at 5
        (throttle_latest(4 * F), "-abc----|", "throttled", (None, 1, 3, 5)),
        (debounce(3 * F), "-ab-----|", "debounced", (None, 1, 2, 5)),
        (sample(4 * F), "-ab-----|", "sampled", (None, 1, 2, 4)),
    ],
)
def test_holding_operators_record_the_replaced_events(
    operator: Operator, source: str, reason: str, expected: tuple[Any, int, int, int]
) -> None:
    run = run_marbles(operator, source)
    [entry] = run.ctx.suppressions.entries(operator.kind)
    assert entry.reason == reason
    assert entry.eligible_at is not None
    got = (entry.key, entry.count, round(entry.last_at / F), round(entry.eligible_at / F))
    assert got == expected


def test_rate_limit_drop_records_when_the_key_has_room_again() -> None:
    run = assert_marbles(rate_limit(2, 4 * F, "drop"), "-(abc)--d---|", "-(ab)---d---|")
    [entry] = run.ctx.suppressions.entries("rate_limit")
    assert (entry.reason, entry.count, round(entry.last_at / F), round(entry.eligible_at / F)) == (
        "rate_limited",
        1,
        1,
        5,
    )


def test_rate_limit_delay_suppresses_nothing() -> None:
    run = run_marbles(rate_limit(2, 4 * F), "-(abc)--d---|")
    assert run.ctx.suppressions.entries() == []


def test_suppressions_keep_the_most_recent_keys_and_count_all() -> None:
    from rxagent.context import Suppressions

    table = Suppressions(max_keys=3)
    for i in range(10):
        table.record("s", f"k{i}", "throttled", at=float(i), until=i + 1.0)
    table.record("s", "k8", "throttled", at=20.0, until=21.0, count=2)
    assert [e.key for e in table.entries("s")] == ["k8", "k9", "k7"]
    assert table.entries("s")[0].count == 3
    assert table.entries("s")[0].first_at == 8.0
    assert table.totals("s") == {"throttled": 12}
    assert table.evicted == {"s": 7}
    assert table.as_dict()["s"]["entries"][0] == {
        "stage": "s",
        "key": "k8",
        "reason": "throttled",
        "count": 3,
        "first_at": 8.0,
        "last_at": 20.0,
        "eligible_at": 21.0,
    }
    table.record("s", ("tuple", 1), "debounced", at=30.0)
    assert table.as_dict()["s"]["entries"][0]["key"] == "('tuple', 1)"
    with pytest.raises(ConfigurationError, match="max_keys"):
        Suppressions(max_keys=0)


def test_high_cardinality_keys_stay_bounded_in_a_pipeline() -> None:
    values = {c: {"k": c} for c in "abcdefghij"}
    run = run_marbles(throttle_first(50 * F, key="k"), "-(abcdefghij)-(abcdefghij)-|", values)
    table = run.ctx.suppressions
    assert table.totals("throttle_first") == {"throttled": 10}
    assert len(table.entries("throttle_first")) == 10
    small = PipelineContext("p")
    from rxagent.context import Suppressions

    small.suppressions = Suppressions(max_keys=4)
    for i in range(100):
        small.suppressions.record("throttle_first", i, "throttled", at=0.0)
    assert len(small.suppressions) == 4
