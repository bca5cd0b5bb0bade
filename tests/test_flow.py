"""Credit and completion watermarks (rxagent.flow)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxagent import ConfigurationError, Flow, FlowError
from rxagent.flow import WAKE_DELAY


async def test_acquire_takes_at_most_what_is_free() -> None:
    flow = Flow("s", capacity=10)
    assert await flow.acquire(4) == 4
    assert await flow.acquire(100) == 6
    assert flow.in_flight == 10
    assert flow.peak_in_flight == 10


async def test_acquire_waits_until_events_end() -> None:
    flow = Flow("s", capacity=3)
    got = await flow.acquire(3)
    ticket = flow.ticket(got, first=0, last=2)
    waiter = asyncio.ensure_future(flow.acquire(3))
    await asyncio.sleep(0.01)
    assert not waiter.done(), "acquire returned without free credit"
    # events that ended are out of flight: their credit returns before the ticket completes
    ticket.end(2)
    assert await asyncio.wait_for(waiter, 1) == 2
    assert flow.waits == 1
    assert flow.in_flight == 3
    assert not ticket.done
    ticket.end(1)
    assert ticket.done
    assert flow.free == 1


async def test_a_little_credit_back_wakes_the_source_soon_with_what_follows() -> None:
    """A sink ending events one by one gives credit back one by one: the waiting
    source is not woken for each (it would read a few events at a time), but at once
    when what it wants is free, up to a quarter of its credit, else WAKE_DELAY after
    the first credit back, with all that came back meanwhile."""
    flow = Flow("s", capacity=64)  # a quarter: 16
    await flow.acquire(64)
    ticket = flow.ticket(64)
    waiter = asyncio.ensure_future(flow.acquire(64))
    await asyncio.sleep(0)
    ticket.end(1)
    assert flow._wake_timer is not None, "one credit back woke the source at once"
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(waiter, 1) == 1
    assert loop.time() - started >= WAKE_DELAY * 0.5
    assert flow._wake_timer is None
    # a quarter of the credit back wakes it at once
    waiter = asyncio.ensure_future(flow.acquire(64))
    await asyncio.sleep(0)
    ticket.end(3)
    assert flow._wake_timer is not None
    ticket.end(13)
    assert flow._waiter is not None
    assert flow._waiter.done(), "a quarter of the credit back did not wake the source"
    assert await asyncio.wait_for(waiter, 1) == 16
    assert flow._wake_timer is None, "the timer outlived the wait"
    # so does as much as it wants, when it wants less
    waiter = asyncio.ensure_future(flow.acquire(4))
    await asyncio.sleep(0)
    ticket.end(4)
    assert flow._waiter is not None
    assert flow._waiter.done()
    assert await asyncio.wait_for(waiter, 1) == 4


async def test_credit_held_is_never_below_the_events_not_yet_ended_or_folded() -> None:
    # a window folded 6 of 10 events (credit back at once, completion pending); a
    # filter ended 2 of the other 4: those 2 return, the 2 still in flight do not
    flow = Flow("s", capacity=10, capacity_bytes=1000)
    await flow.acquire(10)
    ticket = flow.ticket(10, first=0, last=9, nbytes=1000)
    ticket.fold(6)
    assert flow.in_flight == 4
    ticket.end(2)  # 8 ends pending: the 6 folded and 2 more, which keep their credit
    assert flow.in_flight == 4, "credit returned for events still in flight"
    ticket.end(6)  # the window's aggregate ended (or 2 in flight ended): 2 pending
    assert flow.in_flight == 2
    assert 0 < flow.bytes_in_flight < 1000
    ticket.end(2)
    assert (flow.in_flight, flow.bytes_in_flight, ticket.done) == (0, 0, True)


async def test_a_ticket_returns_its_credit_and_bytes_at_once_and_wakes_the_source() -> None:
    flow = Flow("s", capacity=10, capacity_bytes=100)
    assert await flow.acquire(1) == 1
    ticket = flow.ticket(1, nbytes=100)  # the byte credit is used up
    waiter = asyncio.ensure_future(flow.acquire(1))
    await asyncio.sleep(0.01)
    assert not waiter.done(), "acquire returned with the bytes in flight at the limit"
    ticket.end()
    assert (flow.in_flight, flow.bytes_in_flight) == (0, 0)
    assert await asyncio.wait_for(waiter, 1) == 1
    assert flow.waits == 1


async def test_give_back_returns_unused_credit() -> None:
    flow = Flow("s", capacity=5)
    await flow.acquire(5)
    flow.give_back(2)
    assert flow.free == 2


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="credit for source 's' must be >= 1"):
        Flow("s", capacity=0)


async def test_watermark_waits_for_the_lowest_incomplete_ticket() -> None:
    flow = Flow("s", capacity=100)
    seen: list[tuple[object, int]] = []
    flow.on_watermark(lambda p, pos: seen.append((p, pos)))
    await flow.acquire(30)
    a = flow.ticket(10, partition=0, first=0, last=9)
    b = flow.ticket(10, partition=0, first=10, last=19)
    c = flow.ticket(10, partition=1, first=0, last=9)
    b.end(10)
    assert flow.watermark(0) is None, "watermark passed an incomplete ticket"
    c.end(10)
    assert flow.watermark(1) == 10
    a.end(10)
    assert flow.watermark(0) == 20
    assert seen == [(1, 10), (0, 20)]


async def test_fold_returns_credit_but_keeps_completion_pending() -> None:
    flow = Flow("s", capacity=4)
    await flow.acquire(4)
    t = flow.ticket(4, first=0, last=3)
    t.fold(4)
    assert flow.free == 4
    assert flow.pending == 4
    assert flow.watermark() is None
    t.end(4)
    assert flow.free == 4, "folded credit returned twice"
    assert flow.watermark() == 4


async def test_ending_more_than_emitted_is_an_error() -> None:
    flow = Flow("s", capacity=4)
    await flow.acquire(2)
    t = flow.ticket(2, first=0, last=1)
    with pytest.raises(FlowError, match="ended more often than they were emitted"):
        t.end(3)


async def test_retain_expects_more_ends() -> None:
    flow = Flow("s", capacity=4)
    await flow.acquire(2)
    t = flow.ticket(2, first=0, last=1)
    t.retain(2)
    t.end(2)
    assert not t.done
    t.end(2)
    assert t.done
    assert flow.free == 4


async def test_idle_waits_for_every_pending_event() -> None:
    flow = Flow("s", capacity=4)
    await flow.acquire(2)
    t = flow.ticket(2)
    idle = asyncio.ensure_future(flow.idle())
    await asyncio.sleep(0)
    assert not idle.done()
    t.end(2)
    await asyncio.wait_for(idle, 1)


@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    data=st.data(),
)
def test_watermark_is_the_first_position_not_ended(sizes: list[int], data: st.DataObject) -> None:
    """Whatever order events end in, the watermark never passes an event that has
    not ended, and in-flight credit never exceeds capacity."""

    async def scenario() -> None:
        capacity = sum(sizes)
        flow = Flow("s", capacity=capacity)
        tickets = []
        pos = 0
        for n in sizes:
            await flow.acquire(n)
            tickets.append(flow.ticket(n, first=pos, last=pos + n - 1))
            pos += n
        # positions of every event, to be ended in a random order
        events = [(i, p) for i, t in enumerate(tickets) for p in range(t.first, t.last + 1)]  # type: ignore[arg-type, operator]
        order = data.draw(st.permutations(events))
        ended: set[int] = set()
        for i, p in order:
            tickets[i].end(1)
            ended.add(p)
            assert flow.in_flight <= capacity
            wm = flow.watermark()
            # every ticket fully before the watermark has ended completely
            if wm is not None:
                assert all(q in ended for q in range(wm))
            # and the watermark stops at the first incomplete ticket
            first_open = next((t for t in tickets if not t.done), None)
            if first_open is not None:
                assert wm is None or wm <= first_open.first  # type: ignore[operator]
        assert flow.watermark() == pos
        assert flow.free == capacity

    asyncio.run(scenario())


@given(
    n=st.integers(1, 40),
    steps=st.lists(
        st.tuples(st.sampled_from(["fold", "end", "end_folded"]), st.integers(1, 8)), max_size=30
    ),
)
def test_a_ticket_holds_credit_for_every_event_in_flight_and_no_more_than_its_pending_ends(
    n: int, steps: list[tuple[str, int]]
) -> None:
    """Events of one ticket are folded into aggregates and ended in any order (issue
    16: ended events give their credit back at once). The credit the ticket holds
    always covers its events neither ended nor folded, never exceeds its pending
    ends, and the bytes follow; when every event has ended, all of it is back."""

    async def scenario() -> None:
        flow = Flow("s", capacity=n, capacity_bytes=100 * n)
        await flow.acquire(n)
        ticket = flow.ticket(n, first=0, last=n - 1, nbytes=100 * n)
        live, folded = n, 0  # events in flight neither ended nor folded; folded, not ended
        for op, k in steps:
            if op == "fold":
                k = min(k, live)
                ticket.fold(k)
                live, folded = live - k, folded + k
            elif op == "end":
                k = min(k, live)
                if k:
                    ticket.end(k)
                live -= k
            else:
                k = min(k, folded)
                if k:
                    ticket.end(k)
                folded -= k
            held = flow.in_flight
            assert live <= held <= live + folded
            assert 0 <= flow.bytes_in_flight <= 100 * n
            assert (flow.bytes_in_flight == 0) == (held == 0)
        if live:
            ticket.end(live)
        if folded:
            ticket.end(folded)
        assert (flow.in_flight, flow.bytes_in_flight, ticket.done) == (0, 0, True)

    asyncio.run(scenario())
