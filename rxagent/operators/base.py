"""The building block of rxagent operators: a named Rx operator over batches.

An :class:`Operator` is a plain callable ``Observable[Batch] -> Observable[Batch]``
(so it mixes with ``reactivex.operators`` in one ``pipe``) that also carries a
step name, used in metrics, dead letters and error messages.

:func:`batch_stage` writes the subscription boilerplate once: a stage gets each
batch and an ``emit`` callable, and whatever it raises becomes ``on_error``
downstream, never an exception thrown into the event loop.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import reactivex as rx
from reactivex import Observable
from reactivex import abc as rxabc
from reactivex.disposable import CompositeDisposable, Disposable

from ..events import Batch

__all__ = ["BatchHandler", "Operator", "batch_stage"]

Emit = Callable[[Batch], None]


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
        return None

    def dispose(self) -> None:
        return None


def batch_stage(
    source: Observable[Batch],
    make_handler: Callable[[rxabc.ObserverBase[Batch], rxabc.SchedulerBase | None], BatchHandler],
) -> Observable[Batch]:
    """An observable that runs a :class:`BatchHandler` on every batch of ``source``."""

    def subscribe(
        observer: rxabc.ObserverBase[Batch], scheduler: rxabc.SchedulerBase | None = None
    ) -> rxabc.DisposableBase:
        handler = make_handler(observer, scheduler)
        emit = observer.on_next
        failed = False

        def on_next(batch: Batch) -> None:
            nonlocal failed
            if failed:
                batch.end_all()
                return
            try:
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
