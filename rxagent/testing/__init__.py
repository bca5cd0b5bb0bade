"""Testing kit shipped to users (and used by rxagent's own tests).

* :func:`run` pushes values through operators into a :class:`~rxagent.sinks.ListSink`
  and returns what came out, what was dead-lettered and the final status, in one
  call::

      result = await run([1, 2, 3], ops.filter(lambda v: v > 1))
      assert result.values == [2, 3]

* :mod:`~rxagent.testing.marbles`: RxJS marble diagrams, and
  :func:`assert_marbles` to run an operator on one in virtual time;
  :func:`cold`, :func:`hot` and :func:`expect_observable` for tests with
  several sources (a merge, inner observables).
* :mod:`~rxagent.testing.virtual`: whole pipelines in virtual time
  (:func:`marble_source`, :func:`virtual_source`, :class:`MarbleSink`).
* :mod:`~rxagent.testing.strategies`: hypothesis strategies (import it
  explicitly; it needs hypothesis).
* :mod:`~rxagent.testing.plugin`: the pytest fixtures ``test_scheduler``,
  ``marble_frame`` and ``marbles``, installed with rxagent.

The guide: docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..events import Event
from ..runtime import Pipeline, PipelineStatus
from ..sinks.base import ListSink, Sink
from ..sinks.deadletters import DeadLetter, MemoryDeadLetters
from ..sources.memory import memory
from .marbles import (
    Expectation,
    MarbleError,
    MarbleObservable,
    MarbleRun,
    Marbles,
    Notification,
    SubscriptionExpectation,
    assert_marbles,
    assert_notifications,
    cold,
    expect_observable,
    expect_subscriptions,
    hot,
    marble_time,
    parse_marbles,
    parse_subscription,
    render_marbles,
    run_marbles,
)
from .virtual import MarbleSink, TimedEvent, VirtualSource, marble_source, virtual_source

__all__ = [
    "Expectation",
    "MarbleError",
    "MarbleObservable",
    "MarbleRun",
    "MarbleSink",
    "Marbles",
    "Notification",
    "RunResult",
    "SubscriptionExpectation",
    "TimedEvent",
    "VirtualSource",
    "assert_marbles",
    "assert_notifications",
    "cold",
    "expect_observable",
    "expect_subscriptions",
    "hot",
    "marble_source",
    "marble_time",
    "parse_marbles",
    "parse_subscription",
    "render_marbles",
    "run",
    "run_marbles",
    "virtual_source",
]


@dataclass
class RunResult:
    """What a :func:`run` produced."""

    events: list[Event]
    dead_letters: list[DeadLetter]
    status: PipelineStatus
    pipeline: Pipeline

    @property
    def values(self) -> list[Any]:
        """The values of the events that reached the sink, in order."""
        return [ev.value for ev in self.events]

    @property
    def keys(self) -> list[Any]:
        """The keys of the events that reached the sink, in order."""
        return [ev.key for ev in self.events]


async def run(
    items: Iterable[Any],
    *operators: Callable[[Any], Any],
    sinks: Iterable[Sink] = (),
    credit: int = 64,
    batch_size: int = 16,
    fail_fast: bool = False,
    timeout: float | None = 30.0,
) -> RunResult:
    """Run ``items`` through ``operators`` into a list sink (plus ``sinks``) to completion.

    Small ``credit`` and ``batch_size`` defaults exercise flow control and batch
    boundaries even on short inputs.
    """
    collected = ListSink("collected")
    dead = MemoryDeadLetters()
    pipeline = (
        Pipeline(
            "test",
            memory(items, credit=credit, batch_size=batch_size),
            dead_letters=dead,
            fail_fast=fail_fast,
        )
        .pipe(*operators)
        .to(collected, *sinks)
    )
    status = await pipeline.run(timeout=timeout)
    return RunResult(collected.events, dead.letters, status, pipeline)
