"""Windows release the events of revoked partitions at once (rxagent.flow.Flow.revoke).

A revoke must never wait for a window to close: what open windows hold of the
revoked partitions is given up (ended without counting as done), the watermark
stops before it, so those offsets are not committed and the new owner replays them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from reactivex.subject import Subject
from reactivex.testing import TestScheduler

from rxagent import Flow
from rxagent import operators as ops
from rxagent.context import PipelineContext
from rxagent.events import Batch
from rxagent.flow import release_tickets


def batch(ctx: PipelineContext, flow: Flow, part: int, first: int, keys: list[str]) -> Batch:
    n = len(keys)
    assert flow.try_acquire(n) == n
    ticket = flow.ticket(n, part, first, first + n - 1)
    return Batch(
        [{"k": k, "i": first + j} for j, k in enumerate(keys)],
        ctx=ctx,
        source="s",
        time=float(first),
        ticket=ticket,
        keys=list(keys),
        times=[float(first + j) for j in range(n)],
        positions=list(range(first, first + n)),
        partition=part,
    )


def test_a_released_ticket_stops_the_watermark_and_is_not_busy() -> None:
    flow = Flow("s", capacity=10)
    flow.try_acquire(6)
    done = flow.ticket(2, "p", 0, 1)
    held = flow.ticket(3, "p", 2, 4)
    later = flow.ticket(1, "p", 5, 5)
    done.end(2)
    assert flow.watermark("p") == 2
    held.end(1)
    assert flow.busy("p")
    flow.revoke(["p"])  # nobody listens: nothing released yet
    assert release_tickets({held: 2}, flow, frozenset({"p"})) is True
    later.end(1)
    assert not flow.busy("p")
    assert flow.watermark("p") == 2, "the watermark moved past released events"
    assert flow.pending == 0
    assert flow.in_flight == 0, "released events kept their credit"


def test_release_keeps_tickets_of_other_partitions_and_flows() -> None:
    flow, other = Flow("s", 10), Flow("t", 10)
    flow.try_acquire(2)
    other.try_acquire(1)
    mine, kept, foreign = flow.ticket(1, "p", 0, 0), flow.ticket(1, "q", 0, 0), other.ticket(1, "p")
    tickets = {mine: 1, kept: 1, foreign: 1}
    assert release_tickets(tickets, flow, frozenset({"p"})) is False, "window still holds others"
    assert tickets == {kept: 1, foreign: 1}
    assert kept.pending == 1
    assert foreign.pending == 1


Make = Callable[[], Any]
WINDOWS: dict[str, Make] = {
    "count": lambda: ops.count_window(5),
    "tumbling": lambda: ops.tumbling_window(100.0, time="event"),
    "sliding": lambda: ops.sliding_window(100.0, 50.0, time="event"),
    "session": lambda: ops.session_window(100.0, time="event"),
}


@pytest.mark.parametrize("kind", list(WINDOWS))
def test_a_revoke_releases_what_open_windows_hold_of_the_partition(kind: str) -> None:
    scheduler = TestScheduler()
    ctx = PipelineContext("p", scheduler=scheduler)
    flow = Flow("s", capacity=100)
    source: Subject[Batch] = Subject()
    out: list[Batch] = []
    WINDOWS[kind]()(source).subscribe(out.append, scheduler=scheduler)
    source.on_next(batch(ctx, flow, 0, 0, ["a", "a", "a"]))
    source.on_next(batch(ctx, flow, 1, 10, ["b", "b"]))
    assert flow.pending >= 5
    assert not out
    flow.revoke([0])
    # partition 0's events were given up, partition 1's are still held
    assert not flow.busy(0)
    assert flow.busy(1)
    assert flow.watermark(0) is None, "released events counted as done"
    source.on_completed()
    # the flush at the end emits only what partition 1 still holds
    windows = [w for b in out for w in b.values]
    assert windows, "partition 1's window was lost"
    assert {w.key for w in windows} == {"b"}
    assert all(w.count == 2 for w in windows)
    for b in out:
        b.end_all()
    assert flow.pending == 0
    assert flow.watermark(1) == 12


@pytest.mark.parametrize("kind", list(WINDOWS))
def test_windows_closed_at_the_end_keep_the_partition_of_their_events(kind: str) -> None:
    scheduler = TestScheduler()
    ctx = PipelineContext("p", scheduler=scheduler)
    flow = Flow("s", capacity=100)
    source: Subject[Batch] = Subject()
    out: list[Batch] = []
    WINDOWS[kind]()(source).subscribe(out.append, scheduler=scheduler)
    source.on_next(batch(ctx, flow, 0, 0, ["a", "a"]))
    source.on_next(batch(ctx, flow, 1, 10, ["b"]))
    source.on_completed()  # the last batch came from partition 1; a's window is 0's
    got = {(b.partition, w.key) for b in out for w in b.values}
    assert got == {(0, "a"), (1, "b")}
