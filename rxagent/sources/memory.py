"""In-memory sources: an iterable or async iterable, or a queue you push into."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterable, Callable, Hashable, Iterable
from typing import Any

from ..exceptions import ConfigurationError
from .base import Emitter, Source
from .overflow import Overflow

__all__ = ["MEMORY_BATCH", "MEMORY_CREDIT", "MemorySource", "PushSource", "memory", "push"]

#: ``memory()``'s default batch size: the items are all there, so a batch is read
#: at once; 2048 amortises each batch's fixed costs (a loop turn, per-key work in
#: keyed stages, a state write): ``python -m bench pipeline`` ran at 1.67x a plain
#: loop against 2.10x at 512 (CPU time; larger batches gained nothing more; see
#: docs/architecture.md, "Speed with defaults"); one batch holds the loop about 1 ms.
MEMORY_BATCH = 2048
#: ``memory()``'s default credit: four batches in flight.
MEMORY_CREDIT = 4 * MEMORY_BATCH


class MemorySource(Source):
    """Emits the items of an iterable (or async iterable), positions 0, 1, 2, ...

    Reading follows credit: a slow pipeline slows the iteration itself, so a
    generator producing events lazily is never run ahead of the pipeline.

    Args:
        items: the values to emit: any iterable (read lazily, as credit allows) or
            async iterable.
        name: the source's name in positions, status and dead letters (default:
            ``memory``).
        key: a function of the value giving each event's key (default: none; set
            one later with ``key_by``).
        credit: most events in flight from this source at once (read but not yet
            ended by every sink); the source waits for credit beyond it (default
            8192).
        batch_size: most events in one emission (a batch; default 2048: larger
            batches cost less per event, and each holds the event loop longer).
        overflow: an :class:`~rxagent.sources.Overflow` makes the source lossy: it
            never waits for credit and queues or drops by that policy instead
            (default None: wait for credit, lose nothing).
    """

    kind = "memory"

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        name: str | None = None,
        key: Callable[[Any], Hashable] | None = None,
        credit: int = MEMORY_CREDIT,
        batch_size: int = MEMORY_BATCH,
        overflow: Overflow | None = None,
    ) -> None:
        super().__init__(name, credit=credit, batch_size=batch_size)
        self.overflow = overflow
        if not isinstance(items, Iterable | AsyncIterable):
            raise ConfigurationError(
                f"memory source {self.name!r} needs an iterable or async iterable, got {items!r}"
            )
        self.items = items
        self.key = key

    async def run(self, out: Emitter) -> None:
        if isinstance(self.items, AsyncIterable):
            await self._run_async(out, self.items)
            return
        if self.overflow is not None:
            await self._run_lossy(out, self.overflow)
            return
        items = self.items
        # a list or tuple is sliced (a copy in C); anything else is iterated lazily
        sliceable = isinstance(items, list | tuple)
        iterator = iter(items)
        position = 0
        while True:
            granted = await out.credit(self.batch_size)
            if sliceable:
                chunk = items[position : position + granted]  # type: ignore[index]
                if not isinstance(chunk, list):
                    chunk = list(chunk)  # a tuple's slice
            else:
                chunk = list(itertools.islice(iterator, granted))
            if len(chunk) < granted:
                out.give_back(granted - len(chunk))
            if chunk:
                n = len(chunk)
                keys = None if self.key is None else [self.key(v) for v in chunk]
                out.emit(chunk, keys=keys, positions=range(position, position + n))
                position += n
            if len(chunk) < granted:
                return
            # let timers, tool calls and other pipelines run between batches
            await asyncio.sleep(0)

    async def _run_lossy(self, out: Emitter, overflow: Overflow) -> None:
        """Read as fast as the items come, never waiting for credit (see overflow.py)."""
        iterator = iter(self.items)  # type: ignore[arg-type]
        position = 0
        try:
            while chunk := list(itertools.islice(iterator, self.batch_size)):
                n = len(chunk)
                keys = None if self.key is None else [self.key(v) for v in chunk]
                overflow.offer(out, chunk, keys=keys, positions=range(position, position + n))
                position += n
                await asyncio.sleep(0)
            await overflow.flushed()  # exhausted: what is queued still goes out
        finally:
            await overflow.close()

    async def _run_async(self, out: Emitter, items: AsyncIterable[Any]) -> None:
        feeder = PushSource(name=self.name, credit=self.credit, batch_size=self.batch_size)
        feeder.key = self.key

        async def feed() -> None:
            try:
                async for item in items:
                    await feeder.send(item)
            except Exception as error:
                feeder.error(error)
            else:
                feeder.complete()

        task = asyncio.create_task(feed(), name=f"rxagent-feed-{self.name}")
        try:
            await feeder.run(out)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class PushSource(Source):
    """A source you push into from your own code (also an Rx observer).

    ``await send(value)`` waits while ``max_buffer`` values are waiting, so a
    producer that awaits is slowed by the pipeline. ``push(value)`` never waits:
    past ``max_buffer`` it raises :class:`BufferError`. ``complete()`` ends the
    stream once the buffer is drained; ``error(exc)`` fails it.

    Args:
        name: the source's name in positions, status and dead letters (default:
            ``push``).
        credit: most events in flight from this source at once (read but not yet
            ended by every sink); the source waits for credit beyond it.
        batch_size: most events in one emission (a batch).
        max_buffer: most values pushed but not yet emitted; ``send`` waits and
            ``push`` raises beyond it.
    """

    kind = "push"

    def __init__(
        self,
        *,
        name: str | None = None,
        credit: int = 4096,
        batch_size: int = 512,
        max_buffer: int = 4096,
    ) -> None:
        super().__init__(name, credit=credit, batch_size=batch_size)
        if max_buffer < 1:
            raise ConfigurationError(f"max_buffer must be >= 1, got {max_buffer}")
        self.max_buffer = max_buffer
        self.key: Callable[[Any], Hashable] | None = None
        self._buffer: deque[Any] = deque()
        self._done = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._position = 0

    # -- producer side ---------------------------------------------------------

    async def send(self, value: Any) -> None:
        """Push ``value``, waiting while ``max_buffer`` values are waiting (so an awaiting producer
        is slowed by the pipeline)."""
        while len(self._buffer) >= self.max_buffer:
            self._writable.clear()
            await self._writable.wait()
        self._put(value)

    def push(self, value: Any) -> None:
        """Push ``value`` without waiting; a :class:`BufferError` when ``max_buffer`` values are
        waiting already (use ``send`` to wait)."""
        if len(self._buffer) >= self.max_buffer:
            raise BufferError(
                f"push source {self.name!r} holds {self.max_buffer} values already; "
                "await send() to wait for room, or raise max_buffer"
            )
        self._put(value)

    def _put(self, value: Any) -> None:
        if self._done:
            raise ConfigurationError(f"push source {self.name!r} was already completed")
        self._buffer.append(value)
        self._readable.set()

    def complete(self) -> None:
        """End the stream once the values pushed so far are emitted."""
        self._done = True
        self._readable.set()

    def error(self, error: BaseException) -> None:
        """Fail the stream with ``error`` once the values pushed so far are emitted."""
        self._error = error
        self._done = True
        self._readable.set()

    # reactivex observer protocol, so ``observable.subscribe(source)`` works
    def on_next(self, value: Any) -> None:
        """As an Rx observer: :meth:`push` the value."""
        self.push(value)

    def on_completed(self) -> None:
        """As an Rx observer: :meth:`complete` the stream."""
        self.complete()

    def on_error(self, error: Exception) -> None:
        """As an Rx observer: fail the stream with ``error``."""
        self.error(error)

    # -- pipeline side -----------------------------------------------------------

    async def run(self, out: Emitter) -> None:
        buffer = self._buffer
        while True:
            while not buffer:
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return
                self._readable.clear()
                await self._readable.wait()
            granted = await out.credit(min(self.batch_size, len(buffer)))
            take = min(granted, len(buffer))
            chunk = [buffer.popleft() for _ in range(take)]
            out.give_back(granted - take)
            self._writable.set()
            keys = None if self.key is None else [self.key(v) for v in chunk]
            start = self._position
            self._position += take
            out.emit(chunk, keys=keys, positions=range(start, start + take))
            await asyncio.sleep(0)


def memory(
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    name: str | None = None,
    key: Callable[[Any], Hashable] | None = None,
    credit: int = MEMORY_CREDIT,
    batch_size: int = MEMORY_BATCH,
    overflow: Overflow | None = None,
) -> MemorySource:
    """A source over ``items`` (see :class:`MemorySource`); with ``overflow`` it
    never waits for credit and drops by that policy instead."""
    return MemorySource(
        items, name=name, key=key, credit=credit, batch_size=batch_size, overflow=overflow
    )


def push(
    *, name: str | None = None, credit: int = 4096, batch_size: int = 512, max_buffer: int = 4096
) -> PushSource:
    """A source you push into (see :class:`PushSource`)."""
    return PushSource(name=name, credit=credit, batch_size=batch_size, max_buffer=max_buffer)
