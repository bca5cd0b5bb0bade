"""Marble diagrams: parse, render, and run operators on them in virtual time.

The syntax is RxJS's (``TestScheduler.run`` mode):

=============  =================================================================
``-``          one frame passes
``a``          any other character: one value, then one frame passes
``|``          completion (takes a frame)
``#``          error (takes a frame)
``(ab)``       ``a`` and ``b`` in the same frame; the group takes as many frames
               as it has characters, parentheses included
``^``          subscription point of a hot source (frame 0); frames before are < 0
``!``          unsubscription point (subscription marbles only)
``10ms``       time progression: ``ms``, ``s`` or ``m``, with a space on each side
               (the start or the end of the diagram also counts)
`` ``          spaces are ignored and never merge neighbours
=============  =================================================================

How it differs from RxPY's own parser (``reactivex.testing.marbles``): there a
run of letters is one value and spaces group values, there is no ``^``, ``!``
or time progression, and times are truncated to whole ticks. Here, as in RxJS,
one character is one value; ``values`` maps characters to real values.

Frames last ``frame`` seconds of virtual time (default 1 ms, as in RxJS), so a
5-second window is ``a 5s b`` and a test of it takes milliseconds. A time
progression must be a whole number of frames.

When a test fails, the source, expected and actual diagrams are printed one
above the other, frame under frame; long silences are shown as time
progressions (the same in every row) and values without a character of their
own get one, listed in a legend.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal

import reactivex as rx
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.testing import TestScheduler

from ..context import PipelineContext
from ..events import Batch
from ..exceptions import RxAgentError
from ..flow import Flow
from ..sinks.deadletters import DeadLetter, MemoryDeadLetters

__all__ = [
    "DEFAULT_FRAME",
    "MarbleError",
    "MarbleRun",
    "Marbles",
    "Notification",
    "assert_marbles",
    "assert_notifications",
    "marble_batches",
    "marble_time",
    "parse_letters",
    "parse_marbles",
    "parse_subscription",
    "render_aligned",
    "render_marbles",
    "run_marbles",
]

Kind = Literal["N", "C", "E"]
#: A subscription as recorded: (subscribed frame, unsubscribed frame or ``None``).
Subscription = tuple[int, int | None]

#: One frame of virtual time, in seconds: 1 ms, as in RxJS.
DEFAULT_FRAME = 0.001

_PROGRESSION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
#: Characters that mean something in a diagram, so never stand for a value in a rendering.
_RESERVED = frozenset("-|#()^! ")
_SPARE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Silences longer than this many frames render as a time progression.
_DASH_LIMIT = 20
#: Frames the virtual clock runs past the last frame a test mentions.
_HORIZON = 1000


class MarbleError(RxAgentError, ValueError):
    """A marble diagram could not be parsed; says where."""


@dataclass(frozen=True, order=True)
class Notification:
    """What happened at ``frame``: a value (``N``), completion (``C``) or error (``E``)."""

    frame: int
    kind: Kind
    value: Any = field(default=None, compare=False)
    key: Hashable = field(default=None, compare=False)

    def same_as(self, other: Notification) -> bool:
        """Same frame, kind and (for values) an equal value; errors match any error."""
        return (
            self.frame == other.frame
            and self.kind == other.kind
            and (self.kind != "N" or _equal(self.value, other.value))
        )


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an __eq__ that raises or returns an array: not equal
        return False


def _check_frame(frame: float) -> None:
    if not (isinstance(frame, int | float) and math.isfinite(frame) and frame > 0):
        raise MarbleError(f"frame must be a positive number of seconds, got {frame!r}")


# -- parsing -------------------------------------------------------------------------------------


def _progression(diagram: str, i: int, frame: float) -> tuple[int, int] | None:
    """A time progression starting at ``i`` (``10ms``), as (frames, characters used)."""
    m = _PROGRESSION.match(diagram, i)
    if m is None:
        return None
    end = m.end()
    # must stand alone: start of diagram or after a space, and end or a space after
    if (i > 0 and diagram[i - 1] != " ") or (end < len(diagram) and diagram[end] != " "):
        return None
    frames = float(m.group(1)) * _UNITS[m.group(2)] / frame
    whole = round(frames)
    if not math.isclose(frames, whole, rel_tol=1e-9, abs_tol=1e-6):
        raise MarbleError(
            f"time progression {m.group(0)!r} at column {i + 1} of {diagram!r} is not a whole "
            f"number of frames ({_format_seconds(frame)} each)"
        )
    return whole, end - i


def parse_marbles(
    diagram: str,
    values: Mapping[str, Any] | None = None,
    *,
    error: Any = None,
    frame: float = DEFAULT_FRAME,
) -> list[Notification]:
    """Parse a diagram into notifications, frames relative to ``^`` (or the start).

    ``values`` maps characters to values (a character not in it stands for
    itself, a one-character string); ``error`` is the value of ``#``.
    """
    return [n for n, _ in parse_letters(diagram, values, error=error, frame=frame)]


def parse_letters(
    diagram: str,
    values: Mapping[str, Any] | None = None,
    *,
    error: Any = None,
    frame: float = DEFAULT_FRAME,
) -> list[tuple[Notification, str]]:
    """:func:`parse_marbles`, each notification with the character that drew it
    (``|`` and ``#`` for completion and error), so a caller can attach more to a
    letter than its value (:func:`~rxagent.testing.virtual.marble_source`'s keys
    and event times)."""
    _check_frame(frame)
    values = values or {}
    out: list[tuple[Notification, str]] = []
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
            out.append((Notification(at, "C"), c))
        elif c == "#":
            out.append((Notification(at, "E", error), c))
        else:
            out.append((Notification(at, "N", values.get(c, c)), c))
        if group_start is None:
            t += 1
        else:
            group_len += 1
        i += 1
    if group_start is not None:
        raise MarbleError(f"group not closed in {diagram!r}")
    shift = zero or 0
    return [(Notification(n.frame - shift, n.kind, n.value), c) for n, c in out]


def parse_subscription(diagram: str, *, frame: float = DEFAULT_FRAME) -> Subscription:
    """``'^---!'`` -> (subscribed frame, unsubscribed frame or None).

    As in RxJS, ``^`` takes a frame and ``!`` does not, ``(^!)`` subscribes and
    unsubscribes in one frame, and time progressions work as in value diagrams.
    """
    _check_frame(frame)
    t = 0
    sub: int | None = None
    unsub: int | None = None
    group_start: int | None = None
    i = 0
    while i < len(diagram):
        c = diagram[i]
        if c == " ":
            i += 1
            continue
        if c.isdigit() and group_start is None:
            prog = _progression(diagram, i, frame)
            if prog is None:
                raise MarbleError(f"bad time progression at column {i + 1} of {diagram!r}")
            t += prog[0]
            i += prog[1]
            continue
        at = t if group_start is None else group_start
        if c == "^":
            if sub is not None:
                raise MarbleError(f"second '^' at column {i + 1} of subscription {diagram!r}")
            sub = at
            t += 1
        elif c == "!":
            if unsub is not None:
                raise MarbleError(f"second '!' at column {i + 1} of subscription {diagram!r}")
            if sub is None:
                raise MarbleError(f"'!' before '^' at column {i + 1} of subscription {diagram!r}")
            unsub = at
        elif c == "(":
            if group_start is not None:
                raise MarbleError(f"nested group at column {i + 1} of subscription {diagram!r}")
            group_start = t
            t += 1
        elif c == ")":
            if group_start is None:
                raise MarbleError(f"')' without '(' at column {i + 1} of subscription {diagram!r}")
            group_start = None
            t += 1
        elif c == "-":
            t += 1
        else:
            raise MarbleError(
                f"subscription marbles hold only '-', '^', '!', groups and time progressions; "
                f"found {c!r} at column {i + 1} of {diagram!r}"
            )
        i += 1
    if group_start is not None:
        raise MarbleError(f"group not closed in subscription {diagram!r}")
    if sub is None:
        raise MarbleError(f"subscription marble {diagram!r} has no '^'")
    return sub, unsub


def marble_time(diagram: str, *, frame: float = DEFAULT_FRAME) -> float:
    """Seconds until the diagram's ``|``, as RxJS's ``time('---|')``: a duration
    to give an operator (``time_window(marble_time('-----|'))``)."""
    for n in parse_marbles(diagram, frame=frame):
        if n.kind == "C":
            return n.frame * frame
    raise MarbleError(f"marble_time needs a '|' to measure up to, got {diagram!r}")


# -- rendering -----------------------------------------------------------------------------------


def _format_seconds(seconds: float) -> str:
    if seconds >= 60 and math.isclose(seconds / 60, round(seconds / 60)):
        return f"{round(seconds / 60)}m"
    if seconds >= 1 and math.isclose(seconds, round(seconds)):
        return f"{round(seconds)}s"
    ms = seconds * 1000
    if math.isclose(ms, round(ms), abs_tol=1e-9):
        return f"{round(ms)}ms"
    return f"{ms:.6g}ms"


def progression_text(frames: int, frame: float) -> str | None:
    """``frames`` as a time progression that parses back to exactly ``frames``."""
    text = _format_seconds(frames * frame)
    try:
        parsed = _progression(text, 0, frame)
    except MarbleError:
        return None
    return text if parsed is not None and parsed[0] == frames else None


class _Legend:
    """One character per value, shared by every row of a rendering."""

    def __init__(
        self,
        values: Mapping[str, Any] | None,
        rows: Sequence[Sequence[Notification]],
        avoid: Iterable[str] = (),
    ) -> None:
        self.values = dict(values or {})
        self.assigned: dict[str, Any] = {}
        literal = {
            n.value
            for n in chain.from_iterable(rows)
            if n.kind == "N" and isinstance(n.value, str) and len(n.value) == 1
        }
        self.literal = {c for c in literal if c not in self.values and c not in _RESERVED}
        taken = set(self.values) | self.literal | _RESERVED | set(avoid)
        self._spare = iter([c for c in _SPARE if c not in taken])

    def char(self, n: Notification) -> str:
        if n.kind == "C":
            return "|"
        if n.kind == "E":
            return "#"
        value = n.value
        for c, known in chain(self.values.items(), self.assigned.items()):
            if _equal(known, value):
                return c
        if isinstance(value, str) and value in self.literal:
            return value
        c = next(self._spare, "?")
        if c != "?":
            self.assigned[c] = value
        return c

    def tokens(self, notifications: Sequence[Notification]) -> dict[int, str]:
        """Frame -> what the diagram shows there (one character or a group)."""
        by_frame: dict[int, list[str]] = {}
        for n in notifications:
            by_frame.setdefault(n.frame, []).append(self.char(n))
        return {f: cs[0] if len(cs) == 1 else "(" + "".join(cs) + ")" for f, cs in by_frame.items()}


def _fill(gap: int, frame: float, long: bool) -> str:
    if long and gap > _DASH_LIMIT:
        text = progression_text(gap, frame)
        if text is not None:
            return f" {text} "
    return "-" * gap


def _layout(
    rows: Sequence[Mapping[int, str]], starts: Sequence[int], frame: float
) -> tuple[list[str], dict[int, int], list[bool]]:
    """Lay rows of tokens out so that each frame with a token starts in the same
    column in every row. Returns the rows, the column of each such frame, and per
    row whether it shows its frames exactly (a value closer behind a group than
    the group's width cannot be drawn)."""
    keys = sorted(set(starts).union(*rows))
    bufs = [""] * len(rows)
    cursor: list[int | None] = [None] * len(rows)
    exact = [True] * len(rows)
    columns: dict[int, int] = {}
    ends = [max(row, default=start) for row, start in zip(rows, starts, strict=True)]
    prev: int | None = None
    for f in keys:
        long = prev is not None and f - prev > _DASH_LIMIT
        for r, row in enumerate(rows):
            c = cursor[r]
            if c is None:
                if f < starts[r]:
                    continue
                c = cursor[r] = starts[r]
            if f > ends[r]:
                continue  # no trailing silence after a row's last notification
            if f > c:
                bufs[r] += _fill(f - c, frame, long)
                cursor[r] = f
            elif f < c and f in row:
                exact[r] = False
        width = max(len(b) for b in bufs)
        bufs = [b.ljust(width) for b in bufs]
        columns[f] = width
        for r, row in enumerate(rows):
            token = row.get(f)
            c = cursor[r]
            if token is not None and c is not None:
                bufs[r] += token
                cursor[r] = max(c, f) + len(token)
        prev = f
    return [b.rstrip() for b in bufs], columns, exact


def render_marbles(
    notifications: Sequence[Notification],
    values: Mapping[str, Any] | None = None,
    *,
    start: int = 0,
    frame: float = DEFAULT_FRAME,
) -> tuple[str, dict[str, Any]]:
    """Notifications back to a diagram, and a legend for values with no character.

    Values found in ``values`` use their character, one-character strings stand
    for themselves, others get ``a``, ``b``, ... (characters not otherwise used),
    listed in the legend. Silences longer than 20 frames become time progressions.
    """
    rows, legend = render_aligned([notifications], values, starts=[start], frame=frame)
    return rows[0], legend


def render_aligned(
    rows: Sequence[Sequence[Notification]],
    values: Mapping[str, Any] | None = None,
    *,
    starts: Sequence[int] | None = None,
    frame: float = DEFAULT_FRAME,
) -> tuple[list[str], dict[str, Any]]:
    """Several rows of notifications as diagrams aligned frame under frame, with
    one legend. Each row still parses back to its notifications (padding is
    spaces, which the syntax ignores). ``starts``: each row's first frame
    (default 0, or its earliest notification when that is negative)."""
    legend = _Legend(values, rows)
    tokens = [legend.tokens(row) for row in rows]
    if starts is None:
        starts = [min(0, min((n.frame for n in row), default=0)) for row in rows]
    lines, _, _ = _layout(tokens, starts, frame)
    return lines, legend.assigned


# -- running ---------------------------------------------------------------------------------------


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
    origin: float = 0.0,
) -> tuple[Observable[Batch], list[Subscription]]:
    """An observable emitting each frame's values as one batch (with credit
    tickets from ``flow``), and the list its subscriptions are recorded in.

    Frames count from ``origin`` (seconds on the scheduler's clock). A cold
    source starts its diagram at each subscription; a hot one emits the frames
    from the subscription on, and never those before.
    """
    subscriptions: list[Subscription] = []
    by_frame: dict[int, list[Notification]] = {}
    for n in notifications:
        by_frame.setdefault(n.frame, []).append(n)
    position = [0]

    def now_frame() -> int:
        return round((float(scheduler.clock) - origin) / frame)

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
        sub_frame = now_frame()
        record = len(subscriptions)
        subscriptions.append((sub_frame, None))
        disposables = []
        for f, group in sorted(by_frame.items()):
            at = f if hot else sub_frame + f
            if hot and f < sub_frame:
                continue

            def action(_s: Any, _st: Any = None, group: list[Notification] = group) -> None:
                emit_frame(observer, group)

            disposables.append(scheduler.schedule_absolute(origin + at * frame, action))

        def unsubscribe() -> None:
            subscriptions[record] = (sub_frame, now_frame())

        return CompositeDisposable(*disposables, Disposable(unsubscribe))

    return rx.create(subscribe), subscriptions


@dataclass
class MarbleRun:
    """What :func:`run_marbles` saw: the output, the source's subscriptions,
    dead letters, and the flow whose ``pending`` tells whether every source event
    ended."""

    notifications: list[Notification]
    subscriptions: list[Subscription]
    dead_letters: list[DeadLetter]
    flow: Flow
    ctx: PipelineContext
    frame: float
    scheduler: TestScheduler | None = None

    @property
    def values(self) -> list[Any]:
        return [n.value for n in self.notifications if n.kind == "N"]

    @property
    def keys(self) -> list[Hashable]:
        return [n.key for n in self.notifications if n.kind == "N"]


def _resolve_hot(source: str, hot: bool | None) -> bool:
    marked = "^" in source
    if hot is None:
        return marked
    if marked and not hot:
        raise MarbleError(f"a cold source cannot have a subscription point '^': {source!r}")
    return hot


def run_marbles(
    operator: Callable[[Observable[Batch]], Observable[Batch]],
    source: str,
    values: Mapping[str, Any] | None = None,
    *,
    frame: float = DEFAULT_FRAME,
    hot: bool | None = None,
    subscribe: int = 0,
    unsubscribe: int | None = None,
    horizon: int | None = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    error: Any = None,
    end_outputs: bool = True,
    scheduler: TestScheduler | None = None,
) -> MarbleRun:
    """Run ``operator`` on the ``source`` diagram in virtual time and record its output.

    The operator is subscribed at frame ``subscribe`` and disposed at frame
    ``unsubscribe`` (if given). The source is hot when it has a ``^`` (or with
    ``hot=True``). Output rows are ended as a sink would end them
    (``end_outputs``), so after the run every event of the source must have
    ended: the run's ``flow`` tells. ``horizon`` (frames) bounds the virtual
    clock; by default 1,000 frames past the last frame of the source, the
    subscription and the unsubscription.

    With a ``scheduler`` the run uses it, and frames count from its clock at the
    call; by default a fresh :class:`~reactivex.testing.TestScheduler`.
    """
    _check_frame(frame)
    is_hot = _resolve_hot(source, hot)
    scheduler = scheduler if scheduler is not None else TestScheduler()
    origin = float(scheduler.clock)
    dead = MemoryDeadLetters()
    ctx = PipelineContext("marbles", scheduler=scheduler, dead_letters=dead)
    flow = Flow("marbles", capacity=1 << 30)
    notes = parse_marbles(source, values, error=error, frame=frame)
    observable, subscriptions = marble_batches(
        scheduler,
        notes,
        ctx=ctx,
        flow=flow,
        frame=frame,
        hot=is_hot,
        keys=keys,
        times=times,
        origin=origin,
    )
    output: list[Notification] = []

    def now_frame() -> int:
        return round((float(scheduler.clock) - origin) / frame)

    def on_next(batch: Batch) -> None:
        f = now_frame()
        keys_ = batch.keys
        for i, v in enumerate(batch.values):
            output.append(Notification(f, "N", v, None if keys_ is None else keys_[i]))
        if end_outputs:
            batch.end_all()

    subscription: list[abc.DisposableBase] = []
    if unsubscribe is not None:
        # scheduled first, so it runs before source emissions of the same frame (as in RxJS)

        def stop(*_: Any) -> None:
            for s in subscription:
                s.dispose()

        scheduler.schedule_absolute(origin + unsubscribe * frame, stop)

    def start(*_: Any) -> None:
        subscription.append(
            operator(observable).subscribe(
                on_next,
                lambda e: output.append(Notification(now_frame(), "E", e)),
                lambda: output.append(Notification(now_frame(), "C")),
                scheduler=scheduler,
            )
        )

    if subscribe <= 0:
        start()
    else:
        scheduler.schedule_absolute(origin + subscribe * frame, start)
    if horizon is None:
        last = max((n.frame for n in notes), default=0)
        horizon = max(last, subscribe, unsubscribe or 0) + _HORIZON
    scheduler.advance_to(origin + horizon * frame)
    return MarbleRun(output, subscriptions, dead.letters, flow, ctx, frame, scheduler)


# -- asserting -------------------------------------------------------------------------------------


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(n: Notification | None) -> str:
    if n is None:
        return "nothing"
    if n.kind == "C":
        return "completion"
    if n.kind == "E":
        return "an error" if n.value is None else f"error {_short_repr(n.value)}"
    return _short_repr(n.value)


def _first_difference(
    want: Sequence[Notification], got: Sequence[Notification]
) -> tuple[int, Notification | None, Notification | None] | None:
    for i in range(max(len(want), len(got))):
        w = want[i] if i < len(want) else None
        g = got[i] if i < len(got) else None
        if w is None or g is None or not w.same_as(g):
            frames = [n.frame for n in (w, g) if n is not None]
            return min(frames), w, g
    return None


def _label_rows(labels: Sequence[str], lines: Sequence[str]) -> list[str]:
    width = max(len(label) for label in labels) + 1
    return [
        f"  {(label + ':').ljust(width)} {line}".rstrip()
        for label, line in zip(labels, lines, strict=True)
    ]


def _diagram_message(
    want: Sequence[Notification],
    got: Sequence[Notification],
    out_values: Mapping[str, Any] | None,
    frame: float,
    *,
    source_notes: Sequence[Notification] | None = None,
    values: Mapping[str, Any] | None = None,
    hot: bool = False,
) -> str:
    source_notes = source_notes or []
    source_chars = {v for n in source_notes if isinstance(v := n.value, str) and len(v) == 1}
    out_legend = _Legend(out_values, [want, got], avoid=source_chars | set(values or {}))
    rows = [out_legend.tokens(want), out_legend.tokens(got)]
    starts = [0, 0]
    labels = ["expected", "actual"]
    legend = dict(out_legend.assigned)
    if source_notes or hot:
        # the source's values all have characters already; spares must not clash with the output's
        in_legend = _Legend(values, [source_notes], avoid=out_legend.assigned)
        src_tokens = in_legend.tokens(source_notes)
        if hot:  # show the subscription point, merged into a group if values share frame 0
            at_zero = src_tokens.get(0)
            src_tokens[0] = "^" if at_zero is None else "(^" + at_zero.strip("()") + ")"
        rows.insert(0, src_tokens)
        starts.insert(0, min(0, min((n.frame for n in source_notes), default=0)))
        labels.insert(0, "source")
        legend.update(in_legend.assigned)
    lines, columns, exact = _layout(rows, starts, frame)
    out = [f"marble diagrams differ (one frame = {_format_seconds(frame)})"]
    out += _label_rows(labels, lines)
    diff = _first_difference(want, got)
    if diff is not None:
        at, w, g = diff
        indent = 2 + max(len(label) for label in labels) + 2
        expected_text, actual_text = _describe(w), _describe(g)
        if w is not None and g is not None and w.frame != g.frame:
            expected_text += f" at frame {w.frame}"
            actual_text += f" at frame {g.frame}"
        out.append(
            " " * (indent + columns.get(at, 0))
            + f"^ frame {at}: expected {expected_text}, got {actual_text}"
        )
    if legend:
        out.append("  where " + ", ".join(f"{k}={v!r}" for k, v in legend.items()))
    if not exact[-1]:
        out.append(
            "  (the actual row has values closer behind a group than the group's width: "
            "the diagram cannot place them exactly; see the frames below)"
        )
    out.append(f"  expected frames: {[(n.frame, n.kind, n.value) for n in want]}")
    out.append(f"  actual frames:   {[(n.frame, n.kind, n.value) for n in got]}")
    return "\n".join(out)


def assert_notifications(
    actual: Sequence[Notification],
    expected: str,
    values: Mapping[str, Any] | None = None,
    *,
    error: Any = None,
    frame: float = DEFAULT_FRAME,
) -> None:
    """Assert that recorded notifications match the ``expected`` diagram, with
    the aligned failure message of :func:`assert_marbles` (for recordings made
    elsewhere, such as a :class:`~rxagent.testing.virtual.MarbleSink`)."""
    want = parse_marbles(expected, values, error=error, frame=frame)
    if not _same(want, actual):
        raise AssertionError(_diagram_message(want, actual, values, frame))


def _subscription_notes(subs: Sequence[Subscription]) -> list[dict[int, str]]:
    rows: list[dict[int, str]] = []
    for sub, unsub in subs:
        if unsub is None:
            rows.append({sub: "^"})
        elif unsub == sub:
            rows.append({sub: "(^!)"})
        else:
            rows.append({sub: "^", unsub: "!"})
    return rows


def _subscription_message(
    want: Sequence[Subscription], got: Sequence[Subscription], frame: float
) -> str:
    rows = _subscription_notes(want) + _subscription_notes(got)
    labels = [f"expected[{i}]" if len(want) > 1 else "expected" for i in range(len(want))]
    labels += [f"actual[{i}]" if len(got) > 1 else "actual" for i in range(len(got))]
    starts = [0] * len(rows)
    lines, _, _ = _layout(rows, starts, frame) if rows else ([], {}, [])
    out = [f"subscriptions differ (one frame = {_format_seconds(frame)})"]
    out += _label_rows(labels, lines) if rows else []
    if not want:
        out.append("  expected no subscription")
    if not got:
        out.append("  actual: the source was never subscribed")
    out.append(f"  expected frames: {list(want)}")
    out.append(f"  actual frames:   {list(got)}")
    return "\n".join(out)


def _same(a: Sequence[Notification], b: Sequence[Notification]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b, strict=True))


def assert_marbles(
    operator: Callable[[Observable[Batch]], Observable[Batch]],
    source: str,
    expected: str,
    values: Mapping[str, Any] | None = None,
    *,
    expected_values: Mapping[str, Any] | None = None,
    subscriptions: str | Sequence[str] | None = None,
    frame: float = DEFAULT_FRAME,
    hot: bool | None = None,
    unsubscribe: str | None = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    error: Any = None,
    check_flow: bool = True,
    scheduler: TestScheduler | None = None,
) -> MarbleRun:
    """Assert that ``operator`` turns the ``source`` diagram into the ``expected`` one.

    ``values`` maps characters of the source (and, unless ``expected_values`` is
    given, of the expected diagram) to values. Notifications must match in
    order, frame and value; an expected ``#`` matches any error.

    ``unsubscribe`` is a subscription marble (``'^---!'``, or ``'--^--!'`` to
    subscribe later) saying when the test subscribes and disposes.
    ``subscriptions`` asserts when the operator subscribed to and unsubscribed
    from the source (one marble, or a list when it subscribes more than once).
    The source is hot when it has a ``^``: it starts before the test subscribes.
    With ``check_flow`` every source event must have ended by the end of the run
    (the flow-control rule); it is not checked when ``unsubscribe`` disposes
    early. On failure the message shows the diagrams aligned frame under frame.
    """
    sub, unsub = 0, None
    if unsubscribe is not None:
        sub, unsub = parse_subscription(unsubscribe, frame=frame)
    out_values = expected_values if expected_values is not None else values
    want = parse_marbles(expected, out_values, error=error, frame=frame)
    marbles = [subscriptions] if isinstance(subscriptions, str) else list(subscriptions or [])
    want_subs = [parse_subscription(m, frame=frame) for m in marbles]
    mentioned = [n.frame for n in want] + [f for s in want_subs for f in s if f is not None]
    source_notes = parse_marbles(source, values, error=error, frame=frame)
    mentioned += [n.frame for n in source_notes] + [sub, unsub or 0]
    result = run_marbles(
        operator,
        source,
        values,
        frame=frame,
        hot=hot,
        subscribe=sub,
        unsubscribe=unsub,
        horizon=max(mentioned) + _HORIZON,
        keys=keys,
        times=times,
        error=error,
        scheduler=scheduler,
    )
    got = result.notifications
    if not _same(want, got):
        is_hot = _resolve_hot(source, hot)
        raise AssertionError(
            _diagram_message(
                want, got, out_values, frame, source_notes=source_notes, values=values, hot=is_hot
            )
        )
    if subscriptions is not None and want_subs != result.subscriptions:
        raise AssertionError(_subscription_message(want_subs, result.subscriptions, frame))
    if check_flow and unsubscribe is None and result.flow.pending:
        raise AssertionError(
            f"{result.flow.pending} source events never ended: the operator neither passed "
            "them on, ended nor folded them (see docs/architecture.md, the flow-control rule)"
        )
    return result


class Marbles:
    """The marble kit bound to one scheduler and frame length (what the
    ``marbles`` pytest fixture gives)::

        m = Marbles(frame=0.001)
        m.assert_marbles(ops.map(str.upper), "-a-b-|", "-A-B-|")

    Runs share the scheduler one after the other; each run's frames count from
    the clock where the previous one left it.
    """

    def __init__(self, scheduler: TestScheduler | None = None, *, frame: float = DEFAULT_FRAME):
        _check_frame(frame)
        self.scheduler = scheduler if scheduler is not None else TestScheduler()
        self.frame = frame

    def parse(
        self, diagram: str, values: Mapping[str, Any] | None = None, *, error: Any = None
    ) -> list[Notification]:
        """:func:`parse_marbles` with this kit's frame."""
        return parse_marbles(diagram, values, error=error, frame=self.frame)

    def parse_subscription(self, diagram: str) -> Subscription:
        """:func:`parse_subscription` with this kit's frame."""
        return parse_subscription(diagram, frame=self.frame)

    def time(self, diagram: str) -> float:
        """:func:`marble_time`: seconds until the diagram's ``|``."""
        return marble_time(diagram, frame=self.frame)

    def render(
        self, notifications: Sequence[Notification], values: Mapping[str, Any] | None = None
    ) -> str:
        """:func:`render_marbles` with this kit's frame (the diagram only)."""
        return render_marbles(notifications, values, frame=self.frame)[0]

    def run(
        self,
        operator: Callable[[Observable[Batch]], Observable[Batch]],
        source: str,
        values: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> MarbleRun:
        """:func:`run_marbles` on this kit's scheduler and frame."""
        return run_marbles(
            operator, source, values, frame=self.frame, scheduler=self.scheduler, **options
        )

    def assert_marbles(
        self,
        operator: Callable[[Observable[Batch]], Observable[Batch]],
        source: str,
        expected: str,
        values: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> MarbleRun:
        """:func:`assert_marbles` on this kit's scheduler and frame."""
        return assert_marbles(
            operator,
            source,
            expected,
            values,
            frame=self.frame,
            scheduler=self.scheduler,
            **options,
        )

    def __repr__(self) -> str:
        return f"Marbles(frame={_format_seconds(self.frame)}, clock={self.scheduler.clock!r})"
