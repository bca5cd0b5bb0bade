"""What every source is: an async ``run`` that emits batches while it holds credit.

A source never pushes more than it was granted: it awaits
:meth:`Emitter.credit`, reads at most that many events, and emits them. When a
slow sink holds the credit, the source stops reading, so the backlog stays in
the broker or the socket, not in memory.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from reactivex.scheduler import VirtualTimeScheduler

from ..clock import advance, next_due
from ..context import PipelineContext
from ..events import Batch, make_batch
from ..exceptions import ConfigurationError
from ..flow import DEFAULT_CREDIT_BYTES, Flow

__all__ = ["Emitter", "Source"]


class Emitter:
    """The runtime's side of a source: credit to await and a way to emit batches."""

    __slots__ = ("_push", "ctx", "flow", "name")

    def __init__(
        self, name: str, flow: Flow, ctx: PipelineContext, push: Callable[[Batch], None]
    ) -> None:
        self.name = name
        self.flow = flow
        self.ctx = ctx
        self._push = push

    async def credit(self, want: int) -> int:
        """Wait until credit is free and take up to ``want`` (at least 1)."""
        return await self.flow.acquire(want)

    async def virtual_credit(self, want: int) -> int:
        """:meth:`credit` for sources that drive a virtual clock (testing, replay).

        Waiting for credit on a virtual clock would deadlock when a timer holds it
        (a window, a delay): nothing advances the clock but the source. So while no
        credit is free, let the loop's own work run, then advance the clock to the
        next scheduled action, as time would pass for a live source.
        """
        scheduler = self.ctx.scheduler
        if not isinstance(scheduler, VirtualTimeScheduler):
            return await self.credit(want)
        while True:
            took = self.flow.try_acquire(want)
            if took:
                return took
            await asyncio.sleep(0)  # credit that the loop's work gives back
            took = self.flow.try_acquire(want)
            if took:
                return took
            due = next_due(scheduler)
            if due is None:  # only the loop's work can give credit back now
                return await self.credit(want)
            advance(scheduler, due, flush=True)

    def give_back(self, n: int) -> None:
        """Return credit taken but not used."""
        self.flow.give_back(n)

    def emit(
        self,
        values: list[Any],
        *,
        keys: list[Hashable] | None = None,
        times: list[float | None] | None = None,
        positions: Sequence[int] | None = None,
        headers: list[Mapping[str, Any] | None] | None = None,
        partition: Hashable = None,
        nbytes: int = 0,
    ) -> None:
        """Emit ``values`` (with optional columns of the same length) as one batch.

        The caller must hold credit for ``len(values)`` events. ``nbytes``: the size
        of their payload as received, when the source knows it (one ``sum(map(len,
        raws))`` per batch): it is held against the flow's byte credit until the
        events' credit returns. ``positions`` must be
        increasing within a partition across batches: they drive the watermark. A
        row may have none (``None``): the batch's span is that of the rows that do.
        """
        n = len(values)
        if n == 0:
            return
        first = last = None
        if positions is not None:
            first, last = positions[0], positions[-1]
            if first is None or last is None:  # rows without one (a WebSocket resend)
                first, last = _span(positions)
        ticket = self.flow.ticket(n, partition, first, last, nbytes)
        ctx = self.ctx
        batch = make_batch(
            values,
            ctx,
            self.name,
            ctx.now(),
            ticket,
            None,
            keys,
            times,
            positions,
            headers,
            partition,
        )
        self._push(batch)


class Source(abc.ABC):
    """Base of all sources. Subclasses implement :meth:`run`.

    ``credit`` bounds the events in flight from this source; ``credit_bytes`` bounds
    their payload bytes, for sources that charge them (WebSocket, Kafka; ``None``:
    no byte limit); ``batch_size`` bounds one emission. Example::

        class Countdown(Source):
            kind = "countdown"

            async def run(self, out: Emitter) -> None:
                n = 10
                while n:
                    k = await out.credit(n)
                    out.emit(list(range(n, n - k, -1)))
                    n -= k

    Args:
        name: the source's name in positions, status and dead letters (default:
            the class's ``kind``).
        credit: most events in flight from this source at once (read but not yet
            ended by every sink); the source waits for credit beyond it.
        batch_size: most events in one emission (a batch).
        credit_bytes: most payload bytes in flight, for sources that charge them
            (WebSocket, Kafka); None: no byte limit.
    """

    kind = "source"

    #: the byte limit of in-flight credit; a class default, so subclasses that do not
    #: pass it on keep it (set the attribute, or pass ``credit_bytes=``, to change it)
    credit_bytes: int | None = DEFAULT_CREDIT_BYTES
    #: what byte credit expects per event before the first batch is measured (the
    #: largest message, for sources that charge bytes; 0: no guess)
    event_bytes_hint = 0
    #: whether events whose processing did not end are read again after a restart
    #: (a Kafka consumer group's uncommitted offsets: True). On a stop, a pipeline's
    #: windows give the events of their open windows up uncommitted when it is True,
    #: and flush them marked ``partial`` when it is False (docs/operators.md,
    #: "Windows and stops").
    replays_uncommitted = False
    #: the transaction its pipeline's sinks write into (an exactly-once Kafka source's
    #: :class:`~rxagent.kafka.transaction.KafkaTransactions`); ``None``: none
    transactions: Any = None

    def __init__(
        self,
        name: str | None = None,
        *,
        credit: int = 4096,
        batch_size: int = 512,
        credit_bytes: int | None = DEFAULT_CREDIT_BYTES,
    ):
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        if credit < 1:
            raise ConfigurationError(f"credit must be >= 1, got {credit}")
        self.name = name or self.kind
        if credit_bytes is not None and credit_bytes < 1:
            raise ConfigurationError(f"credit_bytes must be >= 1 or None, got {credit_bytes}")
        self.credit = credit
        self.credit_bytes = credit_bytes
        self.batch_size = min(batch_size, credit)

    @abc.abstractmethod
    async def run(self, out: Emitter) -> None:
        """Emit batches until the source is exhausted (return) or cancelled."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what outlives :meth:`run` (a final commit, a connection).

        The pipeline awaits it last, after every event ended (or the drain timed
        out) and the sinks closed.
        """

    async def settle(self) -> None:  # noqa: B027 - optional hook
        """A stop begins: emit what was already received before :meth:`run` is
        cancelled (a state source's pending changes, so a change its store got from
        a pipeline stopped before this one still reaches this pipeline). The
        pipeline bounds the wait by its drain timeout. Default: nothing."""

    def checkpoint_meta(self) -> Mapping[str, Any] | None:
        """What this source adds to each checkpoint of its pipeline's durable sinks
        (a JSON object; ``None``: nothing), stored in the same transaction as their
        state. The pipeline reads it when a checkpoint *starts*, before any sink
        writes, so it must describe events that already ended (a resume position
        from the completion watermark, never merely what was received). On start,
        ``out.ctx.resume_meta()`` returns what each durable sink stored of it."""
        return None

    def changelog_for(self, store: str) -> Any:
        """The changelog a durable store written from this source keeps (``None``: the
        store is not partitioned by this source). Kafka sources return one, so a
        store's state follows the source's partitions across workers."""
        return None

    def describe(self) -> dict[str, Any]:
        """What status and logs show of this source (never secrets)."""
        return {"kind": self.kind, "name": self.name, "credit": self.credit}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _span(positions: Sequence[int | None]) -> tuple[int | None, int | None]:
    """The first and last positions of a batch whose rows may lack one."""
    found = [p for p in positions if p is not None]
    return (found[0], found[-1]) if found else (None, None)
