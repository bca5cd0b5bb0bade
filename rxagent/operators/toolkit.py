"""The operator author's kit: what operator modules share, in one place.

An operator module imports its stage machinery from :mod:`.base`
(:class:`~rxagent.operators.base.BatchHandler`, ``batch_stage``,
``holding_stage``) and everything else it shares with other operators from
here, never from a sibling operator module:

- **arguments**, checked once when the operator is built, with one wording for
  every operator: :func:`positive_seconds`, :func:`seconds`,
  :func:`optional_seconds`, :func:`positive_int`, :func:`optional_positive_int`,
  :func:`key_function`, :func:`optional_key_function`;
- **rows**: a user function over a batch with failures dead-lettered
  (:func:`apply`, :func:`without_failed`, :func:`ok_rows`), rows grouped by key
  in C (:func:`group_rows`, :func:`key_groups`), rows ended (:func:`end_rows`),
  held events back into batches (:func:`batches_of`);
- **stage metrics and status**: :func:`bump` adds to a stage's ``extra``
  counters, :func:`publish` pushes a record to a status subject,
  :func:`require_scheduler` finds a time-based stage's scheduler.

Nothing here is in the public ``rxagent.operators`` namespace: these are
building blocks for operators, whose signatures may change with them.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence, Sized
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from reactivex import abc
from reactivex.subject import Subject

from .. import _slow
from ..events import ROW_NUMBERS, Batch, Event, end_hold, row_numbers
from ..exceptions import ConfigurationError
from ..values import to_key_function

if TYPE_CHECKING:
    from ..context import PipelineContext, StageMetrics

__all__ = [
    "EventFunctions",
    "Groups",
    "KeyArg",
    "KeyFunction",
    "apply",
    "batches_of",
    "bump",
    "end_rows",
    "group_rows",
    "ANY_KEY",
    "key_function",
    "key_groups",
    "ok_rows",
    "optional_key_function",
    "optional_positive_int",
    "optional_seconds",
    "positive_int",
    "positive_seconds",
    "publish",
    "require_scheduler",
    "seconds",
    "without_failed",
]

log = logging.getLogger("rxagent")

#: A key (or id, or sequence number) argument: a field name, an index or a function.
KeyArg = str | int | Callable[[Any], Hashable] | None
KeyFunction = Callable[[Any], Hashable]
#: Row indices per key, in arrival order.
Groups = Mapping[Hashable, Sequence[int]]

_builtin_map = map


# -- arguments --------------------------------------------------------------------


def positive_seconds(op: str, arg: str, value: float | timedelta) -> float:
    """A positive, finite duration in seconds (a number or a ``timedelta``)."""
    secs = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(secs, bool) or not isinstance(secs, int | float) or not 0 < secs < math.inf:
        raise ConfigurationError(f"{op}: {arg} must be a positive number of seconds, got {value!r}")
    return float(secs)


def _is_seconds(value: Any, zero_ok: bool) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero_ok else value > 0)
    )


def seconds(op: str, arg: str, value: float, *, zero_ok: bool = False) -> float:
    """A finite number of seconds, > 0 (``>= 0`` with ``zero_ok``); returned as given."""
    if not _is_seconds(value, zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigurationError(f"{op}: {arg} must be a number of seconds {bound}, got {value!r}")
    return value


def optional_seconds(op: str, arg: str, value: float | None) -> float | None:
    """``None``, or a finite number of seconds > 0."""
    if value is not None and not _is_seconds(value, False):
        raise ConfigurationError(
            f"{op}: {arg} must be a number of seconds > 0 or None, got {value!r}"
        )
    return value


def positive_int(op: str, arg: str, value: int) -> int:
    """A whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{op}: {arg} must be an int >= 1, got {value!r}")
    return value


def optional_positive_int(op: str, arg: str, value: int | None) -> int | None:
    """``None``, or a whole number >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigurationError(f"{op}: {arg} must be an int >= 1 or None, got {value!r}")
    return value


#: What a key argument may be, in the error for one that is not.
ANY_KEY = "a field name, an index or a function of the value"


def key_function(
    op: str, arg: str, value: str | int | Callable[[Any], Any], *, takes: str = ANY_KEY
) -> KeyFunction:
    """The function a key (or id, or sequence) argument names; ``takes`` says what
    the argument may be, in the error."""
    try:
        return to_key_function(value)
    except TypeError:
        raise ConfigurationError(f"{op}: {arg} must be {takes}, got {value!r}") from None


def optional_key_function(
    op: str, arg: str, value: KeyArg, *, takes: str = ANY_KEY
) -> KeyFunction | None:
    """:func:`key_function`, where ``None`` (no key) stays ``None``."""
    return None if value is None else key_function(op, arg, value, takes=takes)


# -- rows ---------------------------------------------------------------------------


class EventFunctions(NamedTuple):
    """Functions of whole events rather than values, for :func:`apply`: ``many`` takes
    the batch's values, keys and times columns (``None``: all ``None``, as in
    :class:`Batch`) and gives every row's result or raises; ``one`` takes one row's
    value, key and time."""

    many: Callable[[list[Any], list[Hashable] | None, list[float | None] | None], list[Any]]
    one: Callable[[Any, Any, float | None], Any]


def apply(
    batch: Batch,
    fn: Callable[[Any], Any],
    stage: str,
    many: Callable[[list[Any]], list[Any]] | None = None,
    *,
    events: EventFunctions | None = None,
) -> tuple[list[Any], list[bool]]:
    """``fn`` over the batch's values; on error, row by row with failures dead-lettered.

    ``many``, if given, computes the whole batch's results at once (the same as
    ``fn`` row by row, or raising) and replaces the fast path's ``map``.
    ``events``, if given, replaces both: its ``many`` reads the batch's values, keys
    and times, and the row-by-row retry calls its ``one`` with each row's.
    Returns the results and an ``ok`` mask (empty on the fast path: every row ok).
    """
    values = batch.values
    started = _slow.clock()
    try:
        if events is not None:
            out = events.many(values, batch.keys, batch.times)
        elif many is not None:
            out = many(values)
        else:
            out = list(_builtin_map(fn, values))
    except Exception:
        pass
    else:
        if _slow.clock() - started >= _slow.SLOW_BATCH_SECONDS:  # (a call only when slow)
            _slow.note(batch.ctx, stage, started, len(values))
        return out, []
    one = None if events is None else events.one
    keys, times = batch.keys, batch.times
    results: list[Any] = []
    ok: list[bool] = []
    ctx = batch.ctx
    for i, value in enumerate(values):
        try:
            if one is None:
                results.append(fn(value))
            else:
                key = None if keys is None else keys[i]
                results.append(one(value, key, None if times is None else times[i]))
            ok.append(True)
        except Exception as error:
            results.append(None)
            ok.append(False)
            # the row's hold moves to the dead letter, which ends it
            ctx.dead_letter(batch.event(i, take=True), stage, error)
    _slow.note(ctx, stage, started, len(values))
    return results, ok


def ok_rows(ok: list[bool]) -> list[int]:
    """The indices of the rows :func:`apply` computed (its ``ok`` mask is not empty)."""
    return [i for i, good in enumerate(ok) if good]


def without_failed(batch: Batch, ok: list[bool]) -> Batch:
    """Rows that failed were already ended by their dead letter: keep the others
    without ending anything again."""
    return batch.take(ok_rows(ok))


def group_rows(
    keys: Iterable[Hashable], rows: Iterable[int] | None = None
) -> dict[Hashable, list[int]]:
    """Row indices per key, in arrival order (the one per-row loop of keyed stages).

    ``rows`` gives the row index of each key (default: 0, 1, 2, ...).
    """
    groups: defaultdict[Hashable, list[int]] = defaultdict(list)
    # The same as ``for i, k in zip(rows, keys): groups[k].append(i)``, with the
    # loop in C: about half the cost per row, and this is the hot loop of every
    # keyed stage. ``any`` drains the iterator (``append`` returns None).
    if rows is None:
        rows = (
            row_numbers(len(keys))
            if isinstance(keys, Sized)
            else itertools.chain(ROW_NUMBERS, itertools.count(len(ROW_NUMBERS)))
        )
    # (with an iterator of keys, ``map`` stops at the shorter input: the keys)
    any(_builtin_map(list.append, _builtin_map(groups.__getitem__, keys), rows))
    return groups


def key_groups(batch: Batch, key_fn: KeyFunction | None, stage: str) -> tuple[Batch, Groups]:
    """Row indices per key (``key_fn``'s, else the batch's keys), in arrival order.
    Rows whose key function raised go to dead letters (which ends them) and
    leave the returned batch."""
    if key_fn is None:
        keys = batch.keys
        return batch, ({None: range(len(batch.values))} if keys is None else group_rows(keys))
    try:  # fast path: keys computed while grouping, in C
        values = batch.values
        return batch, group_rows(_builtin_map(key_fn, values), row_numbers(len(values)))
    except Exception:
        keys, ok = apply(batch, key_fn, stage)
        rows = ok_rows(ok)
        return batch.take(rows), group_rows([keys[i] for i in rows])


def end_rows(batch: Batch, rows: Sequence[int]) -> None:
    """End the given rows of ``batch`` (one call when they share the batch's ticket)."""
    if batch.holds is None:
        if batch.ticket is not None and rows:
            batch.ticket.end(len(rows))
    else:
        holds = batch.holds
        for i in rows:
            end_hold(holds[i])


def batches_of(
    events: Sequence[Event], ctx: PipelineContext, source: str, now: float
) -> list[Batch]:
    """Held events back into batches: one per run of events from the same source
    partition (a batch's positions belong to one partition)."""

    def origin(ev: Event) -> tuple[str, Hashable]:
        pos = ev.position
        return (source, None) if pos is None else (pos.source, pos.partition)

    return [
        Batch.of_events(list(run), ctx=ctx, source=src, time=now, partition=part)
        for (src, part), run in itertools.groupby(events, key=origin)
    ]


# -- metrics, status, schedulers ----------------------------------------------------------


def bump(metrics: StageMetrics, name: str, n: int = 1) -> None:
    """Add ``n`` to the stage's ``extra[name]`` counter."""
    extra = metrics.extra
    extra[name] = extra.get(name, 0) + n


def publish(subject: Subject[Any], record: Any, stage: str) -> None:
    """Push ``record`` to a status subject; a raising subscriber is logged, never raised."""
    try:
        subject.on_next(record)
    except Exception:
        log.exception("stage %r: a status subscriber raised", stage)


def require_scheduler(
    operator: str,
    stage: str,
    given: abc.SchedulerBase | None,
    at_subscribe: abc.SchedulerBase | None,
) -> abc.SchedulerBase:
    """The scheduler a time-based stage runs its timers on: ``scheduler=`` if given,
    else the one passed at subscribe time (the pipeline's, or a test's)."""
    scheduler = given if given is not None else at_subscribe
    if scheduler is None:
        # No silent fallback to a thread-based scheduler: timers would fire off the loop.
        raise ConfigurationError(
            f"{operator} {stage!r} needs a scheduler for its timers: subscribe with "
            "scheduler=... (pipelines do) or pass scheduler= to the operator"
        )
    return scheduler
