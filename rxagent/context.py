"""What a running pipeline lends to its stages: clock, scheduler, dead letters, metrics.

Every batch carries its pipeline's context, so an operator written as a plain
Rx operator still finds where to send dead letters and where to count, and
where to say why it held an event back (:class:`Suppressions`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Protocol

from reactivex.abc import SchedulerBase

from .clock import is_virtual, scheduler_seconds
from .deadletters import DeadLetter, DeadLetterSink, MemoryDeadLetters
from .envelope import Event
from .exceptions import ConfigurationError, DeadLetterStormError, StageError

__all__ = [
    "RECENT_DEAD_LETTERS",
    "STORM_MIN_EVENTS",
    "STORM_SHARE",
    "PipelineContext",
    "StageMetrics",
    "Suppression",
    "Suppressions",
    "dead_letter_summary",
]

log = logging.getLogger("rxagent")

#: Dead letters a context keeps for status pages (:attr:`PipelineContext.recent_dead_letters`).
RECENT_DEAD_LETTERS = 50
#: A recent dead letter's ``str``/``bytes`` value is cut to this length.
_RECENT_VALUE_LIMIT = 1000
#: A stage that dead-lettered at least this many events, and more than
#: :data:`STORM_SHARE` of what it received, is in a dead-letter storm: logged once.
STORM_MIN_EVENTS = 100
STORM_SHARE = 0.5
#: Distinct errors a stage counts apart (the rest count as one "other").
_ERROR_KINDS = 16
#: An error's text and its example value are cut to this length in status.
_ERROR_TEXT_LIMIT = 200


class Rows(Protocol):
    """What :meth:`PipelineContext.dead_letter_row` needs of a batch: a row as an
    event. (A :class:`~rxagent.events.Batch` carries its context, so it stands
    above this module, which knows events only.)"""

    def event(self, i: int, *, take: bool = False) -> Event: ...


class StageMetrics:
    """Counters of one stage. ``dropped`` counts events a stage ended on purpose
    (filtered, deduplicated, dropped by a lossy policy); ``dead_lettered`` counts
    events it gave up on."""

    __slots__ = (
        "dead_lettered",
        "dropped",
        "error_kinds",
        "errors",
        "events_in",
        "events_out",
        "extra",
        "last_error",
        "last_error_time",
        "name",
        "storm_reported",
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
        #: error text -> [count, an example value's text]: what fails most, not only last
        self.error_kinds: dict[str, list[Any]] = {}
        self.storm_reported = False

    def record_error(self, error: BaseException | str, example: Any = None) -> None:
        """Count ``error`` (its type and message); ``example`` is the value that
        failed, kept (as cut text) for the first error of each kind."""
        self.errors += 1
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.last_error = text
        self.last_error_time = time.time()
        kinds = self.error_kinds
        seen = kinds.get(text)
        if seen is not None:
            seen[0] += 1
        elif len(kinds) < _ERROR_KINDS:
            kinds[text] = [1, None if example is None else _cut(repr(example))]
        else:
            other = kinds.setdefault("(other errors)", [0, None])
            other[0] += 1

    def top_errors(self, n: int = 3) -> list[dict[str, Any]]:
        """The ``n`` most frequent errors: ``error`` (type: message, cut), ``count``
        and ``example`` (the first value that failed so, as cut text, or None)."""
        ranked = sorted(self.error_kinds.items(), key=lambda item: -item[1][0])[:n]
        return [
            {"error": _cut(text), "count": count, "example": example}
            for text, (count, example) in ranked
        ]

    def dead_letter_summary(self) -> str:
        """How many events this stage dead-lettered of those it received, and its
        most frequent error with an example (:func:`dead_letter_summary`)."""
        return dead_letter_summary(
            self.name, self.dead_lettered, self.events_in, self.top_errors(1)
        )

    def as_dict(self) -> dict[str, Any]:
        """The counters as JSON-friendly data: in, out, dropped, dead_lettered,
        errors, last_error, top_errors and the stage's own extras."""
        return {
            "name": self.name,
            "in": self.events_in,
            "out": self.events_out,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
            "errors": self.errors,
            "last_error": self.last_error,
            "top_errors": self.top_errors(),
            **self.extra,
        }


class Suppression:
    """Why one key of one stage was held back: the answer to "why didn't it fire?".

    ``count`` events of ``key`` were suppressed by ``stage`` for ``reason``;
    ``first_at`` and ``last_at`` are the first and latest of them, and
    ``eligible_at`` when the key may pass again as of the latest one (``None``
    when that is not a time: the key waits for a running call, say). Times are
    the stage's clock: the pipeline's (virtual in tests and virtual replays).
    """

    __slots__ = ("count", "eligible_at", "first_at", "key", "last_at", "reason", "stage")

    def __init__(
        self, stage: str, key: Hashable, reason: str, at: float, until: float | None, count: int
    ) -> None:
        self.stage = stage
        self.key = key
        self.reason = reason
        self.count = count
        self.first_at = at
        self.last_at = at
        self.eligible_at = until

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (keys that are not plain scalars become their ``repr``)."""
        return {
            "stage": self.stage,
            "key": json_key(self.key),
            "reason": self.reason,
            "count": self.count,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "eligible_at": self.eligible_at,
        }

    def __repr__(self) -> str:
        return (
            f"Suppression({self.stage!r}, key={self.key!r}, reason={self.reason!r}, "
            f"count={self.count}, last_at={self.last_at}, eligible_at={self.eligible_at})"
        )


def json_key(key: Hashable) -> str | int | float | bool | None:
    """A key as JSON can carry it: scalars as they are, anything else as its ``repr``."""
    if key is None or isinstance(key, str | int | float | bool):
        return key
    return repr(key)


class Suppressions:
    """Why events were held back, per stage and key, for status pages and dry runs.

    Stages call :meth:`record` only when they suppress something (a throttled,
    debounced or rate-limited event, an activation dropped in cooldown or while
    busy, replaced under ``latest``, refused by an open circuit), so the table
    costs nothing on the pass-through path. One :class:`Suppression` is kept per
    ``(key, reason)`` of a stage; each stage keeps the ``max_keys`` most recently
    suppressed of them, so high-cardinality keys cannot grow it without bound.
    :meth:`totals` counts every suppression per stage and reason, evicted or not.

    Not locked: stages write on the event loop; a reader on another thread gets
    copies that may miss the latest few records, never a broken table.
    """

    __slots__ = ("_stages", "_totals", "evicted", "max_keys")

    def __init__(self, max_keys: int = 256) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError(
                f"Suppressions: max_keys must be an int >= 1, got {max_keys!r}"
            )
        self.max_keys = max_keys
        self._stages: dict[str, dict[tuple[Hashable, str], Suppression]] = {}
        self._totals: dict[str, dict[str, int]] = {}  # counts of evicted entries
        #: Entries forgotten to keep each stage within ``max_keys``, per stage.
        self.evicted: dict[str, int] = {}

    def record(
        self,
        stage: str,
        key: Hashable,
        reason: str,
        *,
        at: float,
        until: float | None = None,
        count: int = 1,
    ) -> None:
        """``count`` events of ``key`` were suppressed by ``stage`` at ``at`` for
        ``reason``; the key is eligible again at ``until`` (``None``: not a time)."""
        table = self._stages.get(stage)
        if table is None:
            table = self._stages[stage] = {}
        slot = (key, reason)
        entry = table.pop(slot, None)  # re-inserted below: the newest stays last
        if entry is not None:
            entry.count += count
            entry.last_at = at
            entry.eligible_at = until
            table[slot] = entry
            return
        if len(table) >= self.max_keys:  # forget the least recently suppressed
            old = table.pop(next(iter(table)))
            self.evicted[stage] = self.evicted.get(stage, 0) + 1
            gone = self._totals.setdefault(stage, {})
            gone[old.reason] = gone.get(old.reason, 0) + old.count
        table[slot] = Suppression(stage, key, reason, at, until, count)

    def entries(self, stage: str | None = None) -> list[Suppression]:
        """The kept entries of ``stage`` (or of every stage), most recent first."""
        stages = [stage] if stage is not None else list(self._stages)
        found: list[Suppression] = []
        for name in stages:
            found.extend(reversed(list(self._stages.get(name, {}).values())))
        if stage is None:
            found.sort(key=lambda e: e.last_at, reverse=True)
        return found

    def totals(self, stage: str | None = None) -> dict[str, int]:
        """Suppressed events per reason, of ``stage`` or summed over every stage."""
        summed: dict[str, int] = {}
        for name in [stage] if stage is not None else list(self._stages):
            for reason, n in list(self._totals.get(name, {}).items()):
                summed[reason] = summed.get(reason, 0) + n
            for entry in list(self._stages.get(name, {}).values()):
                summed[entry.reason] = summed.get(entry.reason, 0) + entry.count
        return summed

    def stages(self) -> list[str]:
        """The stages that suppressed anything, in order of their first suppression."""
        return list(self._stages)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Per stage: ``totals`` per reason, ``evicted`` and the kept ``entries``
        (dicts, most recent first): what a status page shows."""
        return {
            stage: {
                "totals": self.totals(stage),
                "evicted": self.evicted.get(stage, 0),
                "entries": [e.as_dict() for e in self.entries(stage)],
            }
            for stage in self.stages()
        }

    def clear(self, stage: str | None = None) -> None:
        """Forget everything (or one stage's records)."""
        if stage is None:
            self._stages.clear()
            self._totals.clear()
            self.evicted.clear()
        else:
            self._stages.pop(stage, None)
            self._totals.pop(stage, None)
            self.evicted.pop(stage, None)

    def __len__(self) -> int:
        return sum(len(t) for t in list(self._stages.values()))

    def __repr__(self) -> str:
        return f"<Suppressions stages={len(self._stages)} entries={len(self)}>"


class PipelineContext:
    """Shared by the stages of one pipeline run.

    ``fail_fast`` turns a user function's exception into a pipeline failure
    instead of a dead letter: for tests that must not pass by accident.
    ``suppressions`` is the table stages record held-back events in (a new
    :class:`Suppressions` by default).
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
        suppressions: Suppressions | None = None,
        max_dead_letter_ratio: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        #: A stage dead-lettering more than this share of what it received (after
        #: :data:`STORM_MIN_EVENTS`) fails the pipeline (``--max-dead-letter-ratio``).
        self.max_dead_letter_ratio = max_dead_letter_ratio
        self.scheduler = scheduler
        self.dead_letters: DeadLetterSink = (
            dead_letters if dead_letters is not None else MemoryDeadLetters()
        )
        self.fail_fast = fail_fast
        self._on_failure = on_failure
        #: Makes every sink's work so far durable; sources await it before they
        #: commit offsets (set by the pipeline; a no-op outside one).
        self.checkpoint: Callable[[], Awaitable[None]] = _nothing_to_checkpoint
        #: Partitions of the source assigned to / revoked from this worker: sinks
        #: restore / release their state (set by the pipeline).
        self.partitions_assigned: Callable[[list[Hashable]], Awaitable[None]] = _no_partitions
        self.partitions_revoked: Callable[[list[Hashable]], Awaitable[None]] = _no_partitions
        #: The changelog a durable store written here keeps (``Source.changelog_for``).
        self.changelog_for: Callable[[str], Any] = lambda _store: None
        #: The source's transaction (exactly-once Kafka, ``Source.transactions``): its
        #: Kafka sinks produce into it. ``None``: at least once.
        self.transactions: Any = None
        #: What the pipeline's durable sinks stored of the source's
        #: ``checkpoint_meta()`` at their last checkpoint: one entry per durable sink,
        #: ``None`` for one that holds none (a new or emptied store). Empty when no
        #: sink is durable. Valid once the sinks recovered, before the source runs.
        self.resume_meta: Callable[[], list[Mapping[str, Any] | None]] = list
        #: Set by the pipeline when a *stop* begins (drain, SIGTERM, ``--duration``):
        #: the stream completes because reading stopped, not because the input ended,
        #: so windows still open are not final (docs/operators.md, "Windows and stops").
        self.stopping = False
        #: The source reads again, after a restart, what was not committed
        #: (``Source.replays_uncommitted``; set by the pipeline): on a stop, open
        #: windows give their events up uncommitted instead of flushing them.
        self.replays_uncommitted = False
        self.metrics: dict[str, StageMetrics] = {}
        #: The latest dead letters, newest last, whatever the dead-letter sink keeps
        #: (appended once per dead letter; raw values cut to 1,000 items).
        self.recent_dead_letters: deque[DeadLetter] = deque(maxlen=RECENT_DEAD_LETTERS)
        #: Why stages held events back, per key (see :class:`Suppressions`).
        self.suppressions = suppressions if suppressions is not None else Suppressions()
        if clock is not None:
            self.now = clock
        elif scheduler is not None and not _is_wall_clock(scheduler):
            sched = scheduler
            self.now = lambda: scheduler_seconds(sched)
        else:
            self.now = time.time

    def stage(self, name: str) -> StageMetrics:
        """The counters of stage ``name`` (made on first use)."""
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
        metrics.record_error(error, event.value)
        if metrics.dead_lettered >= STORM_MIN_EVENTS:
            self._check_storm(metrics)
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
            letter = DeadLetter.from_error(event, stage, error, pipeline=self.pipeline)
            self.recent_dead_letters.append(letter.truncated(_RECENT_VALUE_LIMIT))
            self.dead_letters.put(letter)
        except Exception:  # a broken dead-letter sink must not stop the stream
            log.exception("dead-letter sink of pipeline %r failed", self.pipeline)
        finally:
            event.end()

    def _check_storm(self, metrics: StageMetrics) -> None:
        """Log a dead-letter storm once per stage; fail the pipeline past the limit.
        Called per dead letter once a stage has :data:`STORM_MIN_EVENTS`: two
        comparisons, the text only when something is said."""
        received = max(metrics.events_in, metrics.dead_lettered)
        if not metrics.storm_reported and metrics.dead_lettered > STORM_SHARE * received:
            metrics.storm_reported = True
            log.warning("pipeline %r: %s", self.pipeline, metrics.dead_letter_summary())
        limit = self.max_dead_letter_ratio
        if limit is not None and metrics.dead_lettered > limit * received:
            self.max_dead_letter_ratio = None  # once
            self.fail(
                DeadLetterStormError(
                    f"{metrics.dead_letter_summary()} (more than --max-dead-letter-ratio {limit:g})"
                ),
                metrics.name,
            )

    def dead_letter_row(self, batch: Rows, i: int, stage: str, error: BaseException) -> None:
        """Dead-letter row ``i`` of ``batch`` (see :meth:`dead_letter`)."""
        self.dead_letter(batch.event(i, take=True), stage, error)

    def fail(self, error: BaseException, stage: str | None = None) -> None:
        """A stage hit an error it cannot route (a bug, or fail_fast): stop the pipeline."""
        if stage is not None:
            self.stage(stage).record_error(error)
        if self._on_failure is not None:
            self._on_failure(error, stage)
        else:
            log.error("pipeline %r failed in stage %r: %r", self.pipeline, stage, error)


def dead_letter_summary(
    stage: str, dead_lettered: int, received: int, top_errors: list[dict[str, Any]]
) -> str:
    """``stage 'x' dead-lettered N of M events (P %); most frequent: E (Kx), e.g.
    value V``: the one text of a dead-letter storm, for logs, errors and
    ``rxagent run``'s summary (``top_errors`` as :meth:`StageMetrics.top_errors`)."""
    received = max(received, dead_lettered, 1)
    text = (
        f"stage {stage!r} dead-lettered {dead_lettered:,} of {received:,} events "
        f"({100 * dead_lettered / received:.0f} %)"
    )
    if top_errors:
        top = top_errors[0]
        text += f"; most frequent: {top['error']} ({top['count']:,}x)"
        if top.get("example") is not None:
            text += f", e.g. value {top['example']}"
    return text


def _cut(text: str, limit: int = _ERROR_TEXT_LIMIT) -> str:
    """``text`` within ``limit`` characters, cut in the middle: an error's end (what
    failed: "division by zero") matters as much as its start (where)."""
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]


async def _nothing_to_checkpoint() -> None:
    return None


async def _no_partitions(_partitions: list[Hashable]) -> None:
    return None


def _is_wall_clock(scheduler: SchedulerBase) -> bool:
    # The asyncio and thread schedulers tell wall-clock time; virtual-time ones do not.
    return not is_virtual(scheduler)
