"""Memory and push sources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from rxagent import ConfigurationError, Pipeline
from rxagent.sinks import ListSink
from rxagent.sources import memory, push


async def test_iterable_source_emits_everything_with_positions() -> None:
    sink = ListSink()
    await Pipeline("p", memory("abcde", batch_size=2)).to(sink).run()
    assert sink.values == list("abcde")
    assert [e.position.offset for e in sink.events if e.position] == [0, 1, 2, 3, 4]


async def test_a_generator_is_not_read_ahead_of_the_credit() -> None:
    produced = 0

    def gen() -> Iterator[int]:
        nonlocal produced
        for i in range(1000):
            produced += 1
            yield i

    class Slow(ListSink):
        def on_batch(self, batch):  # type: ignore[no-untyped-def]
            self.events.extend(batch.events(take=True))  # hold the credit

    sink = Slow()
    pipeline = Pipeline("p", memory(gen(), credit=20, batch_size=5)).to(sink)
    await pipeline.start()
    await asyncio.sleep(0.05)
    assert produced <= 20 + 5, f"source read {produced} items with credit 20"
    for ev in sink.events:
        ev.end()
    sink.events.clear()
    await asyncio.sleep(0.05)
    assert produced <= 45
    await pipeline.stop()


async def test_async_iterable_source() -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(30):
            await asyncio.sleep(0)
            yield i

    sink = ListSink()
    await Pipeline("p", memory(agen(), credit=4, batch_size=2)).to(sink).run(timeout=5)
    assert sink.values == list(range(30))


async def test_push_source_send_push_complete() -> None:
    src = push(max_buffer=2)
    sink = ListSink()
    pipeline = Pipeline("p", src).to(sink)
    await pipeline.start()
    src.push(1)
    src.push(2)
    with pytest.raises(BufferError, match="holds 2 values already"):
        src.push(3)
    await src.send(3)  # waits for room instead
    src.complete()
    await asyncio.wait_for(pipeline.wait(), 5)
    assert sink.values == [1, 2, 3]


async def test_push_source_is_an_rx_observer() -> None:
    import reactivex as rx

    src = push()
    sink = ListSink()
    pipeline = Pipeline("p", src).to(sink)
    await pipeline.start()
    rx.from_iterable([1, 2, 3]).subscribe(src)
    await asyncio.wait_for(pipeline.wait(), 5)
    assert sink.values == [1, 2, 3]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="needs an iterable"):
        memory(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="batch_size must be >= 1"):
        memory([], batch_size=0)
