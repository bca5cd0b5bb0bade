"""Lossy policies for sources that must not be slowed down.

By default a source waits for credit, so a slow pipeline slows the feed (promise
1). Some feeds must not wait: market data where only the newest price matters, a
socket whose server drops slow clients. Such a source offers what it reads to an
:class:`Overflow` instead of awaiting credit:

- rows that find credit are emitted at once;
- the rest wait in a queue of at most ``capacity`` rows, emitted as credit returns;
- when the queue is full the policy decides what goes: ``drop_newest`` (the
  incoming row), ``drop_oldest`` (the head of the queue), or ``latest`` (the queue
  keeps only the newest row per key, each key keeping its place in line).

Every drop is counted in the source's stage metrics (``dropped`` and
``extra["dropped_<policy>"]``). A dropped row never gets a ticket, so the commit
watermark passes its position once a *later* row has been emitted and has ended:
dropping is how its processing ended, on purpose. Rows dropped after the last
emitted one stay uncommitted (a restart may see them again): conservative, never
early.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal

from ..exceptions import ConfigurationError
from .base import Emitter

__all__ = ["Overflow", "OverflowPolicy"]

OverflowPolicy = Literal["latest", "drop_oldest", "drop_newest"]
_POLICIES = ("latest", "drop_oldest", "drop_newest")

# value, key, event time, position, headers
_Row = tuple[Any, Hashable, float | None, int | None, Mapping[str, Any] | None]


class Overflow:
    """Never-waiting emission with a bounded queue and an explicit loss policy.

    ``key`` (a function of the value) groups rows for ``latest``; without it the
    row's own key is used. Call :meth:`offer` from a source's read loop, and
    :meth:`close` when the source stops.

    Args:
        policy: what a full queue does: ``"drop_newest"`` drops the arriving row,
            ``"drop_oldest"`` the oldest waiting one, ``"latest"`` keeps only the
            newest row per key.
        capacity: most rows waiting (for ``latest``: most keys); default 1024.
        key: a function of the value grouping rows for ``latest`` (default: the
            row's own key).
    """

    def __init__(
        self,
        policy: OverflowPolicy,
        capacity: int = 1024,
        *,
        key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        if policy not in _POLICIES:
            raise ConfigurationError(
                f"overflow policy must be one of {', '.join(_POLICIES)}, got {policy!r}"
            )
        if capacity < 1:
            raise ConfigurationError(f"overflow capacity must be >= 1, got {capacity}")
        self.policy = policy
        self.capacity = capacity
        self.key = key
        self.dropped = 0
        self._fifo: deque[_Row] = deque()
        self._latest: OrderedDict[Hashable, _Row] = OrderedDict()
        self._flusher: asyncio.Task[None] | None = None
        self._out: Emitter | None = None

    @property
    def waiting(self) -> int:
        """Rows waiting for credit now (for ``latest``: keys)."""
        return len(self._latest) if self.policy == "latest" else len(self._fifo)

    def offer(
        self,
        out: Emitter,
        values: Sequence[Any],
        *,
        keys: Sequence[Hashable] | None = None,
        times: Sequence[float | None] | None = None,
        positions: Sequence[int] | None = None,
        headers: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Emit what credit allows now; queue or drop the rest. Never waits."""
        n = len(values)
        if n == 0:
            return
        self._out = out
        start = 0
        if not self.waiting:  # nothing queued ahead of these rows: emit what fits
            took = out.flow.try_acquire(n)
            if took:
                out.emit(
                    list(values[:took]),
                    keys=None if keys is None else list(keys[:took]),
                    times=None if times is None else list(times[:took]),
                    positions=None if positions is None else positions[:took],
                    headers=None if headers is None else list(headers[:took]),
                )
                start = took
        for i in range(start, n):
            self._queue(
                (
                    values[i],
                    None if keys is None else keys[i],
                    None if times is None else times[i],
                    None if positions is None else positions[i],
                    None if headers is None else headers[i],
                ),
                out,
            )
        if self.waiting and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(out), name=f"rxagent-overflow-{out.name}"
            )

    def _queue(self, row: _Row, out: Emitter) -> None:
        if self.policy == "latest":
            k = self.key(row[0]) if self.key is not None else row[1]
            if k in self._latest:
                self._latest[k] = row  # the newer row takes the older one's place
                self._count(out)
            elif len(self._latest) >= self.capacity:
                self._latest.popitem(last=False)
                self._latest[k] = row
                self._count(out)
            else:
                self._latest[k] = row
            return
        if len(self._fifo) >= self.capacity:
            if self.policy == "drop_newest":
                self._count(out)
                return
            self._fifo.popleft()
            self._count(out)
        self._fifo.append(row)

    def _count(self, out: Emitter) -> None:
        self.dropped += 1
        metrics = out.ctx.stage(out.name)
        metrics.dropped += 1
        label = f"dropped_{self.policy}"
        metrics.extra[label] = int(metrics.extra.get(label, 0)) + 1

    async def _flush(self, out: Emitter) -> None:
        while self.waiting:
            granted = await out.flow.acquire(self.waiting)
            if self.policy == "latest":
                # positions must only increase, across emissions too (they drive the
                # watermark): take the oldest positions first, keep the rest queued
                queued = sorted(self._latest.items(), key=lambda kv: _order(kv[1]))
                take = min(granted, len(queued))
                rows = [row for _, row in queued[:take]]
                self._latest = OrderedDict(queued[take:])
            else:
                rows = [self._fifo.popleft() for _ in range(min(granted, self.waiting))]
            out.give_back(granted - len(rows))
            if not rows:
                continue
            positions = [r[3] for r in rows]
            out.emit(
                [r[0] for r in rows],
                keys=_column([r[1] for r in rows]),
                times=_column([r[2] for r in rows]),
                positions=None if all(p is None for p in positions) else positions,  # type: ignore[arg-type]
                headers=_column([r[4] for r in rows]),
            )

    async def flushed(self) -> None:
        """Wait until every queued row has been emitted."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def close(self) -> None:
        """Stop flushing; rows still queued are dropped (and counted)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._out is not None:
            for _ in range(self.waiting):
                self._count(self._out)
        self._fifo.clear()
        self._latest.clear()


def _order(row: _Row) -> int:
    return -1 if row[3] is None else row[3]


def _column(items: list[Any]) -> list[Any] | None:
    return items if any(x is not None for x in items) else None
