"""The building block of rxagent operators: a named Rx operator over batches.

An :class:`Operator` is a plain callable ``Observable[Batch] -> Observable[Batch]``
(so it mixes with ``reactivex.operators`` in one ``pipe``) that also carries a
step name, used in metrics, dead letters and error messages.

:func:`batch_stage` writes the subscription boilerplate once: a stage gets each
batch and an ``emit`` callable, and whatever it raises becomes ``on_error``
downstream, never an exception thrown into the event loop. Given the stage's
name, it also counts the events coming in (``events_in``), once per batch, so
handlers count only what they pass on, drop or hold. :func:`holding_stage` is
the same for handlers that hold events past their source's completion.

The rest of an operator author's kit (argument checks, rows grouped by key,
publishing status records) is :mod:`rxagent.operators.toolkit`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import reactivex as rx
from reactivex import Observable
from reactivex import abc as rxabc
from reactivex.disposable import CompositeDisposable, Disposable

from ..events import Batch

__all__ = [
    "BatchHandler",
    "Emit",
    "HoldingHandler",
    "Observer",
    "Operator",
    "Scheduler",
    "batch_stage",
    "holding_stage",
]

Emit = Callable[[Batch], None]
Observer = rxabc.ObserverBase[Batch]
Scheduler = rxabc.SchedulerBase


class Operator:
    """A named operator over batches. Call it on an observable, or ``pipe`` it."""

    __slots__ = ("_build", "kind", "name")

    def __init__(
        self,
        kind: str,
        build: Callable[[str, Observable[Batch]], Observable[Batch]],
        name: str | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self._build = build

    def __call__(self, source: Observable[Batch]) -> Observable[Batch]:
        return self._build(self.name or self.kind, source)

    def named(self, name: str) -> Operator:
        """The same operator under another step name."""
        return Operator(self.kind, self._build, name)

    def __repr__(self) -> str:
        return f"<operator {self.kind} {self.name or ''}>".replace(" >", ">")


class BatchHandler(abc.ABC):
    """Per-subscription state of a stage. Override ``on_batch``; ``on_completed``
    flushes what the stage still holds; ``dispose`` cancels its timers."""

    @abc.abstractmethod
    def on_batch(self, batch: Batch, emit: Emit) -> None:
        """Handle one batch: pass rows on with ``emit``, end them, or fold them."""

    def on_completed(self, emit: Emit) -> None:
        """The upstream completed: emit what the handler still holds (windows, held events) through
        ``emit`` before completion goes on. Default: nothing."""
        return None

    def dispose(self) -> None:
        """The subscription ended: cancel timers and end what the handler still holds. Default:
        nothing."""
        return None


def batch_stage(
    source: Observable[Batch],
    make_handler: Callable[[Observer, Scheduler | None], BatchHandler],
    stage: str | None = None,
) -> Observable[Batch]:
    """An observable that runs a :class:`BatchHandler` on every batch of ``source``.

    With ``stage``, every batch that reaches the handler is counted in that
    stage's ``events_in`` first (one addition per batch); a batch arriving after
    the stage failed is ended without being counted or handled.
    """

    def subscribe(observer: Observer, scheduler: Scheduler | None = None) -> rxabc.DisposableBase:
        handler = make_handler(observer, scheduler)
        emit = observer.on_next
        failed = False
        # the stage's counters, looked up once per pipeline context (not per batch)
        counted: Any = None
        metrics: Any = None

        def on_next(batch: Batch) -> None:
            nonlocal failed, counted, metrics
            if failed:
                batch.end_all()
                return
            try:
                if stage is not None:
                    ctx = batch.ctx
                    if ctx is not counted:
                        counted, metrics = ctx, ctx.stage(stage)
                    metrics.events_in += len(batch.values)
                handler.on_batch(batch, emit)
            except Exception as error:  # route, never raise into the loop
                failed = True
                observer.on_error(error)

        def on_completed() -> None:
            try:
                handler.on_completed(emit)
            except Exception as error:
                observer.on_error(error)
                return
            observer.on_completed()

        subscription = source.subscribe(
            on_next, observer.on_error, on_completed, scheduler=scheduler
        )
        return CompositeDisposable(subscription, Disposable(handler.dispose))

    return rx.create(subscribe)


class HoldingHandler(BatchHandler):
    """A handler that may still hold events when its source completes."""

    def source_completed(self, complete: Callable[[], None]) -> None:
        """The source completed: emit what is held, or arrange to, and call
        ``complete`` once nothing is held any more (default: at once)."""
        complete()


def holding_stage(
    source: Observable[Batch],
    make_handler: Callable[[Observer, Scheduler | None], HoldingHandler],
    stage: str | None = None,
) -> Observable[Batch]:
    """:func:`batch_stage` for handlers that hold events past their source's completion.

    ``batch_stage`` completes its output right after ``on_completed``; here the
    source's completion reaches it only when the handler calls ``complete``.
    ``stage`` counts ``events_in`` as in :func:`batch_stage`.
    """

    def subscribe(observer: Observer, scheduler: Scheduler | None = None) -> rxabc.DisposableBase:
        made: list[HoldingHandler] = []  # this subscription's handler

        def make(downstream: Observer, sched: Scheduler | None) -> HoldingHandler:
            made.append(make_handler(downstream, sched))
            return made[0]

        def gate(inner: Observer, sched: Scheduler | None = None) -> rxabc.DisposableBase:
            def on_completed() -> None:
                try:
                    made[0].source_completed(inner.on_completed)
                except Exception as error:  # route, never raise into the source
                    inner.on_error(error)

            return source.subscribe(inner.on_next, inner.on_error, on_completed, scheduler=sched)

        gated = batch_stage(rx.create(gate), make, stage)
        return gated.subscribe(observer, scheduler=scheduler)

    return rx.create(subscribe)
