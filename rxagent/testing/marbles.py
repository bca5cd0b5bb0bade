"""Marble diagrams: parse, render, and run operators on them in virtual time.

The syntax is RxJS's (``TestScheduler.run``):

=============  =================================================================
``-``          one frame passes
``a``          any other character: one value, then one frame passes
``|``          completion
``#``          error
``(ab)``       ``a`` and ``b`` in the same frame; the group takes as many frames
               as it has characters, parentheses included
``^``          subscription point of a hot source (time 0); frames before are < 0
``!``          unsubscription point (subscription marbles)
``10ms``       time progression: ``ms``, ``s`` or ``m``, separated by spaces
`` ``          spaces are ignored and never merge neighbours
=============  =================================================================

How it differs from RxPY's own parser (``reactivex.testing.marbles``): there a
run of letters is one value and spaces group values, there is no ``^``, ``!``
or time progression, and times are truncated to whole ticks. Here, as in RxJS,
one character is one value; ``values`` maps characters to real values.

Frames last ``frame`` seconds of virtual time (default 1 ms, as in RxJS), so a
5-second window is ``a 5s b`` and a test of it takes milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import reactivex as rx
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.testing import TestScheduler

from ..context import PipelineContext
from ..events import Batch
from ..flow import Flow
from ..sinks.deadletters import DeadLetter, MemoryDeadLetters

__all__ = [
    "MarbleError",
    "MarbleRun",
    "Notification",
    "assert_marbles",
    "marble_batches",
    "parse_marbles",
    "parse_subscription",
    "render_marbles",
    "run_marbles",
]

Kind = Literal["N", "C", "E"]

_PROGRESSION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


class MarbleError(ValueError):
    """A marble diagram could not be parsed; says where."""


@dataclass(frozen=True, order=True)
class Notification:
    """What happened at ``frame``: a value (``N``), completion (``C``) or error (``E``)."""

    frame: int
    kind: Kind
    value: Any = field(default=None, compare=False)
    key: Hashable = field(default=None, compare=False)

    def same_as(self, other: Notification) -> bool:
        return (
            self.frame == other.frame
            and self.kind == other.kind
            and (self.kind != "N" or self.value == other.value)
        )


def _progression(diagram: str, i: int, frame: float) -> tuple[int, int] | None:
    """A time progression starting at ``i`` (``10ms``), as (frames, characters used)."""
    m = _PROGRESSION.match(diagram, i)
    if m is None:
        return None
    end = m.end()
    # must stand alone: start of diagram or after a space, and end or a space after
    if (i > 0 and diagram[i - 1] != " ") or (end < len(diagram) and diagram[end] != " "):
        return None
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    return round(seconds / frame), end - i


def parse_marbles(
    diagram: str,
    values: Mapping[str, Any] | None = None,
    *,
    error: Any = None,
    frame: float = 0.001,
) -> list[Notification]:
    """Parse a diagram into notifications, frames relative to ``^`` (or the start)."""
    values = values or {}
    out: list[Notification] = []
    t = 0
    zero: int | None = None
    group_start: int | None = None
    group_len = 0
    i = 0
    while i < len(diagram):
        c = diagram[i]
        if c == " ":
            i += 1
            continue
        if group_start is None and c.isdigit():
            prog = _progression(diagram, i, frame)
            if prog is not None:
                t += prog[0]
                i += prog[1]
                continue
        at = t if group_start is None else group_start
        if c == "(":
            if group_start is not None:
                raise MarbleError(f"nested group at column {i + 1} of {diagram!r}")
            group_start, group_len = t, 0
        elif c == ")":
            if group_start is None:
                raise MarbleError(f"')' without '(' at column {i + 1} of {diagram!r}")
            t = group_start + group_len + 1
            group_start = None
            i += 1
            continue
        elif c == "-":
            if group_start is not None:
                raise MarbleError(f"'-' inside a group at column {i + 1} of {diagram!r}")
        elif c == "^":
            if zero is not None:
                raise MarbleError(f"second '^' at column {i + 1} of {diagram!r}")
            zero = at
        elif c == "!":
            raise MarbleError(f"'!' belongs in subscription marbles, column {i + 1} of {diagram!r}")
        elif c == "|":
            out.append(Notification(at, "C"))
        elif c == "#":
            out.append(Notification(at, "E", error))
        else:
            out.append(Notification(at, "N", values.get(c, c)))
        if group_start is None:
            t += 1
        else:
            group_len += 1
        i += 1
    if group_start is not None:
        raise MarbleError(f"group not closed in {diagram!r}")
    shift = zero or 0
    return [Notification(n.frame - shift, n.kind, n.value) for n in out]


def parse_subscription(diagram: str, *, frame: float = 0.001) -> tuple[int, int | None]:
    """``'^---!'`` -> (subscribed frame, unsubscribed frame or None)."""
    t = 0
    sub: int | None = None
    unsub: int | None = None
    i = 0
    while i < len(diagram):
        c = diagram[i]
        if c == " ":
            i += 1
            continue
        if c.isdigit():
            prog = _progression(diagram, i, frame)
            if prog is None:
                raise MarbleError(f"bad time progression at column {i + 1} of {diagram!r}")
            t += prog[0]
            i += prog[1]
            continue
        if c == "^":
            sub = t
        elif c == "!":
            unsub = t
        elif c != "-":
            raise MarbleError(f"unexpected {c!r} at column {i + 1} of subscription {diagram!r}")
        t += 1
        i += 1
    if sub is None:
        raise MarbleError(f"subscription marble {diagram!r} has no '^'")
    return sub, unsub


def render_marbles(
    notifications: Sequence[Notification],
    values: Mapping[str, Any] | None = None,
    *,
    start: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Notifications back to a diagram, and a legend for values with no character.

    Values found in ``values`` use their character; others get ``a``, ``b``, ...
    not used by ``values``, listed in the legend.
    """
    values = values or {}
    by_value: dict[str, str] = {}
    for ch, v in values.items():
        by_value.setdefault(repr(v), ch)
    legend: dict[str, Any] = {}
    spare = (c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in values)

    def char(n: Notification) -> str:
        if n.kind == "C":
            return "|"
        if n.kind == "E":
            return "#"
        r = repr(n.value)
        if r in by_value:
            return by_value[r]
        if isinstance(n.value, str) and len(n.value) == 1 and n.value not in values:
            return n.value
        c = next(spare, "?")
        by_value[r] = c
        legend[c] = n.value
        return c

    frames: dict[int, list[str]] = {}
    for n in sorted(notifications, key=lambda n: n.frame):
        frames.setdefault(n.frame, []).append(char(n))
    out: list[str] = []
    t = start
    for f in sorted(frames):
        if f > t:
            out.append("-" * (f - t))
            t = f
        chars = frames[f]
        if len(chars) == 1:
            out.append(chars[0])
            t += 1
        else:
            out.append("(" + "".join(chars) + ")")
            t += len(chars) + 2
    return "".join(out), legend


def marble_batches(
    scheduler: TestScheduler,
    notifications: Sequence[Notification],
    *,
    ctx: PipelineContext,
    flow: Flow,
    frame: float,
    source: str = "marbles",
    hot: bool = False,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
) -> tuple[Observable[Batch], list[tuple[int, int | None]]]:
    """An observable emitting each frame's values as one batch (with credit
    tickets from ``flow``), and the list its subscriptions are recorded in."""
    subscriptions: list[tuple[int, int | None]] = []
    by_frame: dict[int, list[Notification]] = {}
    for n in notifications:
        by_frame.setdefault(n.frame, []).append(n)
    position = [0]

    def emit_frame(observer: abc.ObserverBase[Batch], group: list[Notification]) -> None:
        vals = [n.value for n in group if n.kind == "N"]
        if vals:
            start = position[0]
            position[0] += len(vals)
            if flow.try_acquire(len(vals)) < len(vals):
                raise AssertionError(f"marble source ran out of credit at frame {group[0].frame}")
            ticket = flow.ticket(len(vals), None, start, start + len(vals) - 1)
            observer.on_next(
                Batch(
                    vals,
                    ctx=ctx,
                    source=source,
                    time=ctx.now(),
                    ticket=ticket,
                    keys=None if keys is None else [keys(v) for v in vals],
                    times=None if times is None else [times(v) for v in vals],
                    positions=range(start, start + len(vals)),
                )
            )
        for n in group:
            if n.kind == "C":
                observer.on_completed()
            elif n.kind == "E":
                err = n.value if isinstance(n.value, Exception) else Exception(n.value or "error")
                observer.on_error(err)

    def subscribe(
        observer: abc.ObserverBase[Batch], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        sub_frame = round(float(scheduler.clock) / frame)
        record = len(subscriptions)
        subscriptions.append((sub_frame, None))
        disposables = []
        for f, group in sorted(by_frame.items()):
            at = f if hot else sub_frame + f
            if hot and f < sub_frame:
                continue

            def action(_s: Any, _st: Any = None, group: list[Notification] = group) -> None:
                emit_frame(observer, group)

            disposables.append(scheduler.schedule_absolute(at * frame, action))

        def unsubscribe() -> None:
            subscriptions[record] = (sub_frame, round(float(scheduler.clock) / frame))

        return CompositeDisposable(*disposables, Disposable(unsubscribe))

    return rx.create(subscribe), subscriptions


@dataclass
class MarbleRun:
    """What :func:`run_marbles` saw."""

    notifications: list[Notification]
    subscriptions: list[tuple[int, int | None]]
    dead_letters: list[DeadLetter]
    flow: Flow
    ctx: PipelineContext
    frame: float

    @property
    def values(self) -> list[Any]:
        return [n.value for n in self.notifications if n.kind == "N"]


def run_marbles(
    operator: Callable[[Observable[Batch]], Observable[Batch]],
    source: str,
    values: Mapping[str, Any] | None = None,
    *,
    frame: float = 0.001,
    hot: bool = False,
    unsubscribe: int | None = None,
    horizon: int | None = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    error: Any = None,
    end_outputs: bool = True,
) -> MarbleRun:
    """Run ``operator`` on the ``source`` diagram in virtual time and record its output.

    Output rows are ended as a sink would end them (``end_outputs``), so after
    the run every event of the source must have ended: the run's ``flow`` tells.
    ``horizon`` (frames) bounds the virtual clock; by default 1,000 frames past
    the last source notification.
    """
    scheduler = TestScheduler()
    dead = MemoryDeadLetters()
    ctx = PipelineContext("marbles", scheduler=scheduler, dead_letters=dead)
    flow = Flow("marbles", capacity=1 << 30)
    notes = parse_marbles(source, values, error=error, frame=frame)
    observable, subscriptions = marble_batches(
        scheduler, notes, ctx=ctx, flow=flow, frame=frame, hot=hot, keys=keys, times=times
    )
    output: list[Notification] = []

    def now_frame() -> int:
        return round(float(scheduler.clock) / frame)

    def on_next(batch: Batch) -> None:
        f = now_frame()
        keys_ = batch.keys
        for i, v in enumerate(batch.values):
            output.append(Notification(f, "N", v, None if keys_ is None else keys_[i]))
        if end_outputs:
            batch.end_all()

    subscription = operator(observable).subscribe(
        on_next,
        lambda e: output.append(Notification(now_frame(), "E", e)),
        lambda: output.append(Notification(now_frame(), "C")),
        scheduler=scheduler,
    )
    if unsubscribe is not None:
        scheduler.schedule_absolute(unsubscribe * frame, lambda *_: subscription.dispose())
    last = max((n.frame for n in notes), default=0)
    end = horizon if horizon is not None else last + 1000
    scheduler.advance_to(end * frame)
    return MarbleRun(output, subscriptions, dead.letters, flow, ctx, frame)


def _same(a: Sequence[Notification], b: Sequence[Notification]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b, strict=True))


def assert_marbles(
    operator: Callable[[Observable[Batch]], Observable[Batch]],
    source: str,
    expected: str,
    values: Mapping[str, Any] | None = None,
    *,
    expected_values: Mapping[str, Any] | None = None,
    subscriptions: str | None = None,
    frame: float = 0.001,
    hot: bool = False,
    unsubscribe: str | None = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    error: Any = None,
    check_flow: bool = True,
) -> MarbleRun:
    """Assert that ``operator`` turns the ``source`` diagram into the ``expected`` one.

    ``values`` maps characters of the source (and, unless ``expected_values`` is
    given, of the expected diagram) to values. ``unsubscribe`` is a subscription
    marble (``'^---!'``) saying when the test disposes. With ``check_flow`` every
    source event must have ended by the end of the run (the flow-control rule).
    On failure the message shows both diagrams, aligned.
    """
    unsub = None
    if unsubscribe is not None:
        unsub = parse_subscription(unsubscribe, frame=frame)[1]
    result = run_marbles(
        operator,
        source,
        values,
        frame=frame,
        hot=hot,
        unsubscribe=unsub,
        keys=keys,
        times=times,
        error=error,
    )
    out_values = expected_values if expected_values is not None else values
    want = parse_marbles(expected, out_values, error=error, frame=frame)
    got = result.notifications
    if not _same(sorted(want), sorted(got)):
        w, _ = render_marbles(want, out_values)
        g, legend = render_marbles(got, out_values)
        lines = [
            "marble diagrams differ",
            f"  source:   {source}",
            f"  expected: {w}",
            f"  actual:   {g}",
        ]
        if legend:
            lines.append("  where " + ", ".join(f"{k}={v!r}" for k, v in legend.items()))
        detail_want = [(n.frame, n.kind, n.value) for n in want]
        detail_got = [(n.frame, n.kind, n.value) for n in got]
        lines.append(f"  expected notifications: {detail_want}")
        lines.append(f"  actual notifications:   {detail_got}")
        raise AssertionError("\n".join(lines))
    if subscriptions is not None:
        sub, unsub_frame = parse_subscription(subscriptions, frame=frame)
        recorded = result.subscriptions
        if not recorded or recorded[0] != (sub, unsub_frame):
            raise AssertionError(
                f"subscription differs: expected {(sub, unsub_frame)}, actual {recorded}"
            )
    if check_flow and unsubscribe is None and result.flow.pending:
        raise AssertionError(
            f"{result.flow.pending} source events never ended: the operator neither passed "
            "them on, ended nor folded them (see docs/architecture.md, the flow-control rule)"
        )
    return result
