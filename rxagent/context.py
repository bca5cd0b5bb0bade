"""What a running pipeline lends to its stages: clock, scheduler, dead letters, metrics.

Every batch carries its pipeline's context, so an operator written as a plain
Rx operator still finds where to send dead letters and where to count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from reactivex.abc import SchedulerBase

from .clock import is_virtual, scheduler_seconds
from .deadletters import DeadLetter, DeadLetterSink, MemoryDeadLetters
from .events import Batch, Event
from .exceptions import StageError

__all__ = ["PipelineContext", "StageMetrics"]

log = logging.getLogger("rxagent")


class StageMetrics:
    """Counters of one stage. ``dropped`` counts events a stage ended on purpose
    (filtered, deduplicated, dropped by a lossy policy); ``dead_lettered`` counts
    events it gave up on."""

    __slots__ = (
        "dead_lettered",
        "dropped",
        "errors",
        "events_in",
        "events_out",
        "extra",
        "last_error",
        "last_error_time",
        "name",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.events_in = 0
        self.events_out = 0
        self.dropped = 0
        self.dead_lettered = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.extra: dict[str, int | float] = {}

    def record_error(self, error: BaseException | str) -> None:
        self.errors += 1
        self.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.last_error_time = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.events_in,
            "out": self.events_out,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
            "errors": self.errors,
            "last_error": self.last_error,
            **self.extra,
        }


class PipelineContext:
    """Shared by the stages of one pipeline run.

    ``fail_fast`` turns a user function's exception into a pipeline failure
    instead of a dead letter: for tests that must not pass by accident.
    """

    def __init__(
        self,
        pipeline: str,
        *,
        scheduler: SchedulerBase | None = None,
        dead_letters: DeadLetterSink | None = None,
        fail_fast: bool = False,
        on_failure: Callable[[BaseException, str | None], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.dead_letters: DeadLetterSink = (
            dead_letters if dead_letters is not None else MemoryDeadLetters()
        )
        self.fail_fast = fail_fast
        self._on_failure = on_failure
        self.metrics: dict[str, StageMetrics] = {}
        if clock is not None:
            self.now = clock
        elif scheduler is not None and not _is_wall_clock(scheduler):
            sched = scheduler
            self.now = lambda: scheduler_seconds(sched)
        else:
            self.now = time.time

    def stage(self, name: str) -> StageMetrics:
        metrics = self.metrics.get(name)
        if metrics is None:
            metrics = self.metrics[name] = StageMetrics(name)
        return metrics

    def dead_letter(self, event: Event, stage: str, error: BaseException | str) -> None:
        """Record ``event`` as a dead letter of ``stage`` and end it.

        In ``fail_fast`` mode the error is raised as :class:`StageError` instead.
        """
        metrics = self.stage(stage)
        metrics.dead_lettered += 1
        metrics.record_error(error)
        if self.fail_fast:
            event.end()
            message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            raise StageError(
                f"stage {stage!r} of pipeline {self.pipeline!r} failed on {event.value!r}: "
                f"{message}",
                pipeline=self.pipeline,
                stage=stage,
            ) from (error if isinstance(error, BaseException) else None)
        try:
            self.dead_letters.put(
                DeadLetter.from_error(event, stage, error, pipeline=self.pipeline)
            )
        except Exception:  # a broken dead-letter sink must not stop the stream
            log.exception("dead-letter sink of pipeline %r failed", self.pipeline)
        finally:
            event.end()

    def dead_letter_row(self, batch: Batch, i: int, stage: str, error: BaseException) -> None:
        self.dead_letter(batch.event(i, take=True), stage, error)

    def fail(self, error: BaseException, stage: str | None = None) -> None:
        """A stage hit an error it cannot route (a bug, or fail_fast): stop the pipeline."""
        if stage is not None:
            self.stage(stage).record_error(error)
        if self._on_failure is not None:
            self._on_failure(error, stage)
        else:
            log.error("pipeline %r failed in stage %r: %r", self.pipeline, stage, error)


def _is_wall_clock(scheduler: SchedulerBase) -> bool:
    # The asyncio and thread schedulers tell wall-clock time; virtual-time ones do not.
    return not is_virtual(scheduler)
