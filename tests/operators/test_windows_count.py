"""Count windows and aggregations; windows fold credit and hold completion."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxagent import Pipeline, StateStore
from rxagent import operators as ops
from rxagent.exceptions import PipelineError
from rxagent.operators import Aggregation, Window
from rxagent.sinks import ListSink
from rxagent.sources import memory
from rxagent.sources.base import Emitter, Source
from rxagent.testing import run


async def test_count_window_per_key_with_partial_flush() -> None:
    items = [{"k": k, "v": i} for i, k in enumerate("aabbaab")]
    result = await run(items, ops.count_window(2, key="k", agg=ops.sum_("v")))
    windows: list[Window] = result.values
    assert [(w.key, w.value, w.count) for w in windows] == [
        ("a", 0 + 1, 2),
        ("b", 2 + 3, 2),
        ("a", 4 + 5, 2),
        ("b", 6, 1),
    ]
    assert result.status.flow["pending"] == 0


async def test_count_window_without_partial_flush_ends_the_rest() -> None:
    result = await run(range(5), ops.count_window(2, emit_partial=False))
    assert [w.value for w in result.values] == [[0, 1], [2, 3]]
    assert result.status.flow["pending"] == 0


async def test_aggregations() -> None:
    items = [{"px": p} for p in (3.0, 1.0, 2.0)]
    agg = {
        "n": ops.count(),
        "mean": ops.mean("px"),
        "min": ops.min_("px"),
        "max": ops.max_("px"),
        "first": ops.first("px"),
        "last": ops.last("px"),
        "sum": ops.sum_("px"),
        "r": ops.reduce(lambda acc, v: [*acc, v["px"]], []),
    }
    result = await run(items, ops.count_window(3, agg=agg))
    assert result.values[0].value == {
        "n": 3,
        "mean": 2.0,
        "min": 1.0,
        "max": 3.0,
        "first": 3.0,
        "last": 2.0,
        "sum": 6.0,
        "r": [3.0, 1.0, 2.0],
    }


async def test_a_window_larger_than_the_credit_does_not_stall() -> None:
    # credit 8, window 50: without folding the source would wait forever
    result = await run(range(200), ops.count_window(50), credit=8, batch_size=4, timeout=10)
    assert [w.count for w in result.values] == [50, 50, 50, 50]
    assert result.status.flow["peak_in_flight"] <= 8


async def test_watermark_waits_for_the_window_aggregate() -> None:
    """Events folded into an open window are not reported complete."""
    gate = asyncio.Event()
    store = StateStore("s")
    sink = ListSink()
    pipeline = (
        Pipeline("p", memory(_slow_source(gate), credit=16, batch_size=1))
        .pipe(ops.count_window(3, key=lambda v: "all"))
        .to(sink, store.sink(value="count"))
    )
    await pipeline.start()
    for _ in range(50):
        await asyncio.sleep(0.005)
        if pipeline.flow and pipeline.flow.emitted >= 4:
            break
    assert pipeline.flow is not None
    # 4 events emitted: one window of 3 closed and ended, one event still open
    assert pipeline.flow.watermark() == 3
    gate.set()
    await pipeline.wait()
    assert pipeline.flow.watermark() == 6


async def _slow_source(gate: asyncio.Event):  # type: ignore[no-untyped-def]
    for i in range(4):
        yield i
    await gate.wait()
    for i in range(4, 6):
        yield i


@given(
    keys=st.lists(st.sampled_from("abc"), max_size=60),
    size=st.integers(1, 7),
)
def test_count_windows_partition_the_input(keys: list[str], size: int) -> None:
    """Every event lands in exactly one window; windows of a key are full but the last."""
    items = list(enumerate(keys))
    result = asyncio.run(run(items, ops.count_window(size, key=1), batch_size=5, credit=11))
    windows: list[Window] = result.values
    assert sorted(i for w in windows for i, _ in w.value) == list(range(len(items)))
    for key in set(keys):
        counts = [w.count for w in windows if w.key == key]
        assert all(c == size for c in counts[:-1])
        assert 1 <= counts[-1] <= size
    assert result.status.flow["pending"] == 0


def _reference(keys: list[int], size: int) -> list[tuple[int, list[int], int | None]]:
    """Count windows by hand: (key, the rows' indices, position of the closing row),
    closed windows in the order of their closing rows, then the rest at the end."""
    open_: dict[int, list[int]] = {}
    out: list[tuple[int, list[int], int | None]] = []
    for i, k in enumerate(keys):
        rows = open_.setdefault(k, [])
        rows.append(i)
        if len(rows) == size:
            out.append((k, rows, i))
            del open_[k]
    out.extend((k, rows, rows[-1]) for k, rows in open_.items())
    return out


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(0, 400), min_size=20, max_size=300),
    size=st.integers(1, 4),
    batch_size=st.integers(2, 40),
    with_key_fn=st.booleans(),
)
def test_many_keys_take_the_same_windows(
    keys: list[int], size: int, batch_size: int, with_key_fn: bool
) -> None:
    """Batches whose keys are all distinct (many keys) take a path of their own
    (issue 16); what comes out is what per-key windows by hand give: the same
    windows, order and positions, every event ended."""
    items = [{"k": k, "i": i, "t": i / 2} for i, k in enumerate(keys)]
    timed = [ops.event_time("t")] if with_key_fn else []
    if with_key_fn:
        stages = [*timed, ops.count_window(size, key="k", agg=ops.reduce(_rows, []))]
    else:
        stages = [ops.key_by("k"), ops.count_window(size, agg=ops.reduce(_rows, []))]
    result = asyncio.run(run(items, *stages, batch_size=batch_size, credit=4 * batch_size))
    got = [
        (w.key, w.value, None if e.position is None else e.position.offset)
        for e in result.events
        for w in [e.value]
    ]
    if timed:  # each window's first and last event's time
        assert all(
            (w.start, w.end) == (w.value[0] / 2, w.value[-1] / 2)
            for w in (e.value for e in result.events)
        )
    want = _reference(keys, size)
    closed = [row for row in want if len(row[1]) == size]
    partial = [row for row in want if len(row[1]) < size]
    assert got[: len(closed)] == closed
    assert sorted(got[len(closed) :]) == sorted(partial)
    assert result.status.flow["pending"] == 0


def _rows(acc: list[int], value: dict[str, int]) -> list[int]:
    return [*acc, value["i"]]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 120), batch_size=st.integers(1, 30))
def test_windows_of_windows_hold_every_event(n: int, batch_size: int) -> None:
    """A count window over aggregates (rows holding other windows' tickets) takes whole
    windows out of one batch too; every event still ends once."""
    stages = [
        ops.count_window(2, key=lambda v: v % 3, agg=ops.sum_()),
        ops.count_window(3, key=lambda w: w.key, agg=ops.reduce(lambda a, w: a + w.value, 0)),
    ]
    result = asyncio.run(run(range(n), *stages, batch_size=batch_size, credit=2 * batch_size))
    assert sum(w.value for w in result.values) == sum(range(n))
    assert result.status.flow["pending"] == 0


_REFERENCE: dict[str, Callable[[list[float]], object]] = {
    "sum": sum,
    "mean": lambda xs: sum(xs) / len(xs) if xs else None,
    "min": lambda xs: min(xs) if xs else None,
    "max": lambda xs: max(xs) if xs else None,
    "first": lambda xs: xs[0] if xs else None,
    "last": lambda xs: xs[-1] if xs else None,
}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=20),
    st.sampled_from([ops.sum_, ops.mean, ops.min_, ops.max_, ops.first, ops.last]),
)
def test_a_built_in_over_a_field_gives_the_same_whole_or_picked(
    xs: list[float], make: Callable[..., Aggregation]
) -> None:
    agg = make("px")
    expected = _REFERENCE[agg.name.partition("(")[0]](xs)
    values = [{"px": x, "other": [x]} for x in xs]
    assert agg.fn(values) == expected
    # what a count window computes from the parts it kept
    assert agg.pick is not None
    assert agg.of_picked is not None
    assert agg.of_picked(list(map(agg.pick, values))) == expected
    # over whole values: the same, and nothing smaller to keep
    whole = make()
    assert whole.fn(xs) == expected
    assert whole.pick is None


class _Tick(dict):  # type: ignore[type-arg]
    """A dict that can be weakly referenced: is the window still holding it?"""


async def test_an_open_window_keeps_only_what_its_aggregation_reads() -> None:
    import gc
    import weakref

    alive: list[weakref.ref[_Tick]] = []

    def ticks() -> Iterator[_Tick]:  # nothing else keeps them
        for i in range(15):
            tick = _Tick(sym="a" if i % 2 else "b", px=float(i), blob="x" * 100)
            alive.append(weakref.ref(tick))
            yield tick

    store = StateStore("means")
    pipeline = (
        Pipeline("p", memory(ticks(), batch_size=4))
        .pipe(ops.count_window(10, key="sym", agg=ops.mean("px"), emit_partial=False))
        .to(store.sink(value="value"))
    )
    await pipeline.start()
    await asyncio.sleep(0.05)
    gc.collect()
    # 15 events, no window closed yet (7 and 8 per key): their values are gone, the
    # windows hold their prices only
    assert [ref() for ref in alive] == [None] * 15
    await pipeline.stop()


async def test_a_value_without_the_aggregated_field_fails_the_stage() -> None:
    items = [{"k": "a", "px": 1.0}, {"k": "a"}]
    pipeline = (
        Pipeline("p", memory(items))
        .pipe(ops.count_window(5, key="k", agg=ops.mean("px")))
        .to(ListSink())
    )
    # (the windows keep the prices only: the value without one fails where it is read)
    with pytest.raises(PipelineError, match="KeyError: 'px'"):
        await pipeline.run()


def test_the_window_keeps_no_batch_of_values_alive_between_batches() -> None:
    # what the stage keeps to build its batches at the end is a shell of the last
    # batch, not the batch: with an aggregation over a field, a batch's values die as
    # soon as the batch is through (only the picked floats stay in the windows)
    import gc
    import weakref

    from rxagent import Flow
    from rxagent.context import PipelineContext
    from rxagent.events import Batch
    from rxagent.operators.aggregate import resolve_aggregation
    from rxagent.operators.windows.count import CountWindowHandler

    class Value(dict[str, float]):
        pass

    async def main() -> None:
        flow = Flow("src", capacity=100)
        await flow.acquire(4)
        handler = CountWindowHandler("w", 10, None, resolve_aggregation(ops.mean("v")), "emit")
        values = [Value(v=float(i)) for i in range(4)]
        refs = [weakref.ref(v) for v in values]
        batch = Batch(
            values,
            ctx=PipelineContext("p"),
            source="src",
            time=1.0,
            ticket=flow.ticket(4, first=0, last=3),
            positions=range(4),
            partition=0,
        )
        handler.on_batch(batch, lambda _b: None)
        del batch, values
        gc.collect()
        assert all(r() is None for r in refs)
        like = handler.last_batch
        assert like is not None
        assert (like.values, like.positions, like.partition, like.time) == ([], (), 0, 1.0)

    asyncio.run(main())


def _drive(
    script: list[tuple[int, list[int], bool]],
    size: int,
    revoke_after: int | None,
    fast: bool,
) -> tuple[list[tuple[object, ...]], dict[object, int | None], int]:
    """Batches of ``script`` (partition, keys, whether its rows hold per-row holds)
    through one count window's handler, with its distinct-keys path (``fast``) or
    only the general one; partition 0 revoked after batch ``revoke_after``. Returns
    the windows out (key, values, count, start, end, position, partition, tickets
    held by (partition, first position)), the watermarks and the events pending
    once every window out ended (those flushed at the end sorted)."""
    from rxagent import Flow
    from rxagent.context import PipelineContext
    from rxagent.events import Batch
    from rxagent.operators.aggregate import resolve_aggregation
    from rxagent.operators.windows.count import CountWindowHandler

    ctx = PipelineContext("p")
    flow = Flow("s", capacity=10_000)
    handler = CountWindowHandler("w", size, None, resolve_aggregation(ops.collect()), "emit")
    out: list[Batch] = []
    position = 0
    for step, (part, keys, per_row) in enumerate(script):
        n = len(keys)
        assert flow.try_acquire(n) == n
        ticket = flow.ticket(n, part, position, position + n - 1)
        batch = Batch(
            [position + j for j in range(n)],
            ctx=ctx,
            source="s",
            time=float(step),
            ticket=None if per_row else ticket,
            holds=[((ticket, 1),)] * n if per_row else None,
            keys=list(keys),
            times=[position + j / 2 for j in range(n)] if step % 2 else None,
            positions=list(range(position, position + n)),
            partition=part,
        )
        position += n
        if not fast:
            handler.distinct = False  # never tried: every batch takes the general path
        handler.on_batch(batch, out.append)
        if step == revoke_after:
            flow.revoke([0])
    closed = len(out)
    handler.on_completed(out.append)
    got = []
    for b in out:
        for i, w in enumerate(b.values):
            held: dict[tuple[object, object], int] = {}
            hold = b.holds[i] if b.holds is not None else None
            for t, c in hold or ():
                held[(t.partition, t.first)] = held.get((t.partition, t.first), 0) + c
            got.append((w.key, w.value, w.count, w.start, w.end, b.positions[i], b.partition, held))
        b.end_all()
    # the windows flushed at the end come in no promised order
    flushed = sum(len(b.values) for b in out[closed:])
    got[len(got) - flushed :] = sorted(got[len(got) - flushed :], key=lambda row: repr(row))
    return got, flow.watermarks(), flow.pending


@settings(max_examples=300, deadline=None)
@given(
    script=st.lists(
        st.tuples(
            st.integers(0, 1),
            st.one_of(
                st.lists(st.integers(0, 30), min_size=1, max_size=12, unique=True),
                st.lists(st.integers(0, 6), min_size=1, max_size=12),
            ),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    ),
    size=st.integers(1, 5),
    revoke_after=st.one_of(st.none(), st.integers(0, 24)),
)
def test_the_distinct_keys_path_is_the_general_path(
    script: list[tuple[int, list[int], bool]], size: int, revoke_after: int | None
) -> None:
    """Batches of distinct keys (many keys) take their own path, a step per row
    into windows that keep their rows' values and ticket pairs in one list (issue
    16); batches of repeated keys, or of rows holding their own tickets, take the
    general one, into the same windows. Random mixes of both, from two partitions,
    one of them revoked midway, give what the general path alone gives: the same
    windows (values, times, positions, the tickets each holds), the same watermarks,
    every event ended."""
    fast = _drive(script, size, revoke_after, fast=True)
    slow = _drive(script, size, revoke_after, fast=False)
    assert fast == slow
    assert fast[2] == 0


async def test_rows_a_filter_drops_give_their_credit_back_while_a_window_holds_the_rest() -> None:
    """A source with little credit keeps reading whole batches when a filter drops
    rows ahead of a window: the dropped rows' credit returns when they end, not when
    the windows holding their batch's other rows close (before, the source took the
    few credits left and read batches of one or two events, issue 16)."""

    class Recording(Source):
        def __init__(self) -> None:
            super().__init__("recording", credit=256, batch_size=64)
            self.granted: list[int] = []

        async def run(self, out: Emitter) -> None:
            items = list(range(6400))
            position = 0
            while position < len(items):
                granted = await out.credit(self.batch_size)
                self.granted.append(granted)
                chunk = items[position : position + granted]
                out.emit(chunk, positions=range(position, position + len(chunk)))
                position += len(chunk)
                await asyncio.sleep(0)

    source = Recording()
    sink = ListSink()
    pipeline = (
        Pipeline("p", source)
        .pipe(ops.filter(lambda v: v % 5 != 0), ops.count_window(100, key=lambda v: v % 10))
        .to(sink)
    )
    await asyncio.wait_for(pipeline.run(), 10)
    assert source.granted == [64] * 100
    assert sum(w.count for w in sink.values) == 6400 * 4 // 5
    assert pipeline.flow is not None
    assert pipeline.flow.in_flight == 0
