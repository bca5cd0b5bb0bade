"""Marble diagrams: parse, render, and run operators on them in virtual time.

The syntax is RxJS's (``TestScheduler.run`` mode):

=============  =================================================================
``-``          one frame passes
``a``          any other character: one value, then one frame passes
``|``          completion (takes a frame)
``#``          error (takes a frame)
``(ab)``       ``a`` and ``b`` in the same frame (the frame of the ``(``); the
               group takes as many frames as it has characters, parentheses
               and ``-`` included: ``(a-b|)`` is 6 frames
``^``          subscription point of a hot source (frame 0); frames before are < 0
``!``          unsubscription point (subscription marbles only)
``10ms``       time progression: ``ms``, ``s`` or ``m``, with a space on each side
               (the start or the end of the diagram also counts); fractions
               too (``10.2ms``: a value after it lands between two frames)
`` ``          spaces are ignored and never merge neighbours
=============  =================================================================

How it differs from RxPY's own parser (``reactivex.testing.marbles``): there a
run of letters is one value and spaces group values, there is no ``^``, ``!``
or time progression, and times are truncated to whole ticks. Here, as in RxJS,
one character is one value; ``values`` maps characters to real values (a
mapping, whose keys may be numbers: ``{0: x}`` is ``'0'``, or a list: ``'0'`` is
its first item).

Frames last ``frame`` seconds of virtual time (default 1 ms, as in RxJS), so a
5-second window is ``a 5s b`` and a test of it takes milliseconds.

A run goes on until nothing is scheduled any more (at most
:data:`IDLE_FRAMES` frames past the diagrams), so output that comes after the
last frame drawn is seen and fails the test, saying so. An expected ``#``
compares errors: an exception must be of the same type with the same
arguments, an exception type matches any error of that type, a predicate
decides, and ``None`` matches any error.

When a test fails, the source, expected and actual diagrams are printed one
above the other, frame under frame; long silences are shown as time
progressions (the same in every row) and values without a character of their
own get one, listed in a legend.

For tests with several sources (a merge, inner observables), :func:`cold` and
:func:`hot` make sources on one :class:`Marbles` kit and
:func:`expect_observable` asserts what any observable built from them emits,
as RxJS's ``cold``, ``hot`` and ``expectObservable`` do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import chain
from types import TracebackType
from typing import Any, Literal

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.testing import TestScheduler

from ..clock import advance, next_due
from ..context import PipelineContext
from ..events import Batch
from ..exceptions import RxAgentError
from ..flow import Flow
from ..sinks.deadletters import DeadLetter, MemoryDeadLetters

__all__ = [
    "DEFAULT_FRAME",
    "IDLE_FRAMES",
    "IDLE_STEPS",
    "Expectation",
    "MarbleError",
    "MarbleObservable",
    "MarbleRun",
    "Marbles",
    "Notification",
    "SubscriptionExpectation",
    "assert_marbles",
    "assert_notifications",
    "cold",
    "expect_observable",
    "expect_subscriptions",
    "hot",
    "marble_batches",
    "marble_time",
    "marble_values",
    "parse_letters",
    "parse_marbles",
    "parse_subscription",
    "progression_text",
    "render_aligned",
    "render_marbles",
    "run_marbles",
    "source_exception",
]

Kind = Literal["N", "C", "E"]
#: A subscription as recorded: (subscribed frame, unsubscribed frame or ``None``).
Subscription = tuple[float, float | None]
#: A subscription marble parsed: like :data:`Subscription`, and the subscribed
#: frame is ``None`` when the marble has no ``^`` (never subscribed).
SubscriptionMarble = tuple[float | None, float | None]

#: One frame of virtual time, in seconds: 1 ms, as in RxJS.
DEFAULT_FRAME = 0.001

#: A run stops when nothing more is scheduled, or when the next scheduled action
#: is more than this many frames past the diagrams (periodic timers never end).
IDLE_FRAMES = 1_000_000
#: ... or after this many steps (distinct due times) past the diagrams.
IDLE_STEPS = 10_000

_PROGRESSION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
#: Characters that mean something in a diagram, so never stand for a value in a rendering.
_RESERVED = frozenset("-|#()^! ")
_SPARE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Silences longer than this many frames render as a time progression.
_DASH_LIMIT = 20


class MarbleError(RxAgentError, ValueError):
    """A marble diagram could not be parsed; says where."""


def _norm(x: float) -> float:
    """A frame number without float noise: an ``int`` when whole (to a
    millionth of a frame), else rounded to six decimals (``10.2 + 1`` is
    ``11.2``, not ``11.199999999999999``)."""
    r = round(x)
    if abs(x - r) < 1e-6:
        return r
    return round(x, 6)


@dataclass(frozen=True, order=True)
class Notification:
    """What happened at ``frame``: a value (``N``), completion (``C``) or error (``E``).

    ``frame`` is a whole number of frames unless a fractional time progression
    (``10.2ms``) put it between two.
    """

    frame: float
    kind: Kind
    value: Any = field(default=None, compare=False)
    key: Hashable = field(default=None, compare=False)

    def same_as(self, other: Notification) -> bool:
        """``other`` (what happened) matches this expectation: same frame and
        kind, an equal value, and for errors the expected error's rule: ``None``
        matches any error, an exception type any error of that type, an
        exception one of the same type with equal arguments, a string an error
        with that message, another callable is a predicate."""
        if self.frame != other.frame or self.kind != other.kind:
            return False
        if self.kind == "N":
            return _equal(self.value, other.value)
        if self.kind == "E":
            return _error_matches(self.value, other.value)
        return True


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an __eq__ that raises or returns an array: not equal
        return False


def _error_matches(want: Any, got: Any) -> bool:
    """Whether the error ``got`` is the expected ``want``: ``None`` matches any
    error; an exception type, any error of that type; an exception, one of the
    same type with equal arguments; a string, an error with that message (or
    that string); another callable is a predicate; anything else must be equal."""
    if want is None:
        return True
    if isinstance(want, type) and issubclass(want, BaseException):
        return isinstance(got, want)
    if isinstance(want, BaseException):
        return type(want) is type(got) and _equal(want.args, got.args)
    if isinstance(want, str):
        return (isinstance(got, BaseException) and str(got) == want) or _equal(want, got)
    if callable(want):
        try:
            return bool(want(got))
        except Exception:
            return False
    return _equal(want, got)


def source_exception(error: Any) -> Exception:
    """What a source's ``#`` raises for ``error=``: an exception as it is, an
    exception type made with the message ``"error"``, anything else the message
    of an ``Exception`` (``None``: ``"error"``, RxJS's default)."""
    if isinstance(error, Exception):
        return error
    if isinstance(error, type) and issubclass(error, Exception):
        try:
            return error("error")
        except TypeError as exc:
            raise MarbleError(
                f"error={error.__name__}: cannot make one for a source's '#' ({exc}); "
                "give an instance"
            ) from None
    if callable(error):
        raise MarbleError(
            f"error={error!r} is a predicate: a source's '#' needs an exception (give the "
            "source's error as error= and the predicate as expected_error=)"
        )
    return Exception("error" if error is None else str(error))


def _check_frame(frame: float) -> None:
    if not (isinstance(frame, int | float) and math.isfinite(frame) and frame > 0):
        raise MarbleError(f"frame must be a positive number of seconds, got {frame!r}")


def marble_values(values: Mapping[Any, Any] | Sequence[Any] | None) -> dict[str, Any]:
    """``values`` as a table from character to value, as RxJS reads it: a
    mapping's number keys stand for their digits (``{0: x}``: ``'0'`` is ``x``)
    and a list or tuple maps ``'0'``, ``'1'``, ... to its items."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        table: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise MarbleError(
                    f"values keys are the characters of the diagram (or numbers for digits), "
                    f"got {key!r} ({type(key).__name__})"
                )
            name = str(key)
            if name in table:
                raise MarbleError(f"values gives {name!r} twice (as {name!r} and as {key!r})")
            table[name] = value
        return table
    if isinstance(values, Sequence) and not isinstance(values, str | bytes):
        return {str(i): value for i, value in enumerate(values)}
    raise MarbleError(
        f"values must be a mapping from characters to values, or a list (item i is the "
        f"digit i), got {type(values).__name__}"
    )


# -- parsing -------------------------------------------------------------------------------------


def _progression(diagram: str, i: int, frame: float) -> tuple[float, int] | None:
    """A time progression starting at ``i`` (``10ms``), as (frames, characters used)."""
    m = _PROGRESSION.match(diagram, i)
    if m is None:
        return None
    end = m.end()
    # must stand alone: start of diagram or after a space, and end or a space after
    if (i > 0 and diagram[i - 1] != " ") or (end < len(diagram) and diagram[end] != " "):
        return None
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    micros = seconds * 1e6
    if not math.isclose(micros, round(micros), rel_tol=1e-9, abs_tol=1e-6):
        raise MarbleError(
            f"time progression {m.group(0)!r} at column {i + 1} of {diagram!r} is finer than "
            "the virtual clock's microsecond"
        )
    return _norm(seconds / frame), end - i


def parse_marbles(
    diagram: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    error: Any = None,
    frame: float = DEFAULT_FRAME,
) -> list[Notification]:
    """Parse a diagram into notifications, frames relative to ``^`` (or the start).

    ``values`` maps characters to values (see :func:`marble_values`; a character
    not in it stands for itself, a one-character string); ``error`` is the
    value of ``#``.
    """
    return [n for n, _ in parse_letters(diagram, values, error=error, frame=frame)]


def parse_letters(
    diagram: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    error: Any = None,
    frame: float = DEFAULT_FRAME,
) -> list[tuple[Notification, str]]:
    """:func:`parse_marbles`, each notification with the character that drew it
    (``|`` and ``#`` for completion and error), so a caller can attach more to a
    letter than its value (:func:`~rxagent.testing.virtual.marble_source`'s keys
    and event times)."""
    return _parse(diagram, values, error=error, frame=frame)[0]


def _parse(
    diagram: str,
    values: Mapping[Any, Any] | Sequence[Any] | None,
    *,
    error: Any,
    frame: float,
) -> tuple[list[tuple[Notification, str]], float]:
    """The notifications with their characters, and the frame the diagram ends
    at (its width), both relative to ``^``.

    As RxJS: every character but a space moves the clock on a frame (a
    progression by its length) and a notification happens at the clock, or in
    a group at the group's ``(``."""
    _check_frame(frame)
    table = marble_values(values)
    out: list[tuple[Notification, str]] = []
    t: float = 0
    zero: float | None = None
    group_start: float | None = None
    i = 0
    while i < len(diagram):
        c = diagram[i]
        if c == " ":
            i += 1
            continue
        if c.isdigit():
            prog = _progression(diagram, i, frame)
            if prog is not None:
                t = _norm(t + prog[0])
                i += prog[1]
                continue
        at = t if group_start is None else group_start
        if c == "(":
            if group_start is not None:
                raise MarbleError(f"nested group at column {i + 1} of {diagram!r}")
            group_start = t
        elif c == ")":
            if group_start is None:
                raise MarbleError(f"')' without '(' at column {i + 1} of {diagram!r}")
            group_start = None
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
        elif c != "-":
            out.append((Notification(at, "N", table.get(c, c)), c))
        t = _norm(t + 1)
        i += 1
    if group_start is not None:
        raise MarbleError(f"group not closed in {diagram!r}")
    shift = zero or 0
    notes = [(Notification(_norm(n.frame - shift), n.kind, n.value), c) for n, c in out]
    return notes, _norm(t - shift)


def _extent(diagram: str, frame: float) -> float:
    """The frame a diagram ends at (relative to its ``^``): its last character's
    frame plus one."""
    return _parse(diagram, None, error=None, frame=frame)[1]


def parse_subscription(diagram: str, *, frame: float = DEFAULT_FRAME) -> SubscriptionMarble:
    """``'^---!'`` -> (subscribed frame, unsubscribed frame or None).

    As in RxJS, ``^`` takes a frame and ``!`` does not, ``(^!)`` subscribes and
    unsubscribes in one frame, and time progressions work as in value diagrams.
    A marble with no ``^`` (``'----'``, ``'---!'``) has ``None`` for its
    subscribed frame: as an expected subscription it means none happened; as the
    test's own subscription, it subscribes at frame 0.
    """
    _check_frame(frame)
    t: float = 0
    sub: float | None = None
    unsub: float | None = None
    group_start: float | None = None
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
            t = _norm(t + prog[0])
            i += prog[1]
            continue
        at = t if group_start is None else group_start
        if c == "^":
            if sub is not None:
                raise MarbleError(f"second '^' at column {i + 1} of subscription {diagram!r}")
            if unsub is not None:
                raise MarbleError(f"'!' before '^' in subscription {diagram!r}")
            sub = at
        elif c == "!":
            if unsub is not None:
                raise MarbleError(f"second '!' at column {i + 1} of subscription {diagram!r}")
            unsub = at
            i += 1
            continue  # '!' takes no frame
        elif c == "(":
            if group_start is not None:
                raise MarbleError(f"nested group at column {i + 1} of subscription {diagram!r}")
            group_start = t
        elif c == ")":
            if group_start is None:
                raise MarbleError(f"')' without '(' at column {i + 1} of subscription {diagram!r}")
            group_start = None
        elif c != "-":
            raise MarbleError(
                f"subscription marbles hold only '-', '^', '!', groups and time progressions; "
                f"found {c!r} at column {i + 1} of {diagram!r}"
            )
        t = _norm(t + 1)
        i += 1
    if group_start is not None:
        raise MarbleError(f"group not closed in subscription {diagram!r}")
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
    if seconds >= 1 and math.isclose(seconds * 10, round(seconds * 10)):
        return f"{round(seconds * 10) / 10}s"  # 1.2s rather than 1200ms
    ms = seconds * 1000
    if math.isclose(ms, round(ms), abs_tol=1e-9):
        return f"{round(ms)}ms"
    return f"{ms:.6g}ms"


def progression_text(frames: float, frame: float) -> str | None:
    """``frames`` as a time progression that parses back to exactly ``frames``."""
    text = _format_seconds(frames * frame)
    try:
        parsed = _progression(text, 0, frame)
    except MarbleError:
        return None
    return text if parsed is not None and parsed[0] == _norm(frames) else None


class _Legend:
    """One character per value, shared by every row of a rendering."""

    def __init__(
        self,
        values: Mapping[Any, Any] | Sequence[Any] | None,
        rows: Sequence[Sequence[Notification]],
        avoid: Iterable[str] = (),
    ) -> None:
        self.values = marble_values(values)
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

    def tokens(self, notifications: Sequence[Notification]) -> dict[float, str]:
        """Frame -> what the diagram shows there (one character or a group)."""
        by_frame: dict[float, list[str]] = {}
        for n in notifications:
            by_frame.setdefault(n.frame, []).append(self.char(n))
        return {f: cs[0] if len(cs) == 1 else "(" + "".join(cs) + ")" for f, cs in by_frame.items()}


def _fill(gap: float, frame: float, long: bool) -> str:
    whole = gap == int(gap)
    if not whole or (long and gap > _DASH_LIMIT):
        text = progression_text(gap, frame)
        if text is not None:
            return f" {text} "
    return "-" * math.ceil(gap)


def _layout(
    rows: Sequence[Mapping[float, str]], starts: Sequence[float], frame: float
) -> tuple[list[str], dict[float, int], list[bool]]:
    """Lay rows of tokens out so that each frame with a token starts in the same
    column in every row. Returns the rows, the column of each such frame, and per
    row whether it shows its frames exactly (a value closer behind a group than
    the group's width cannot be drawn)."""
    keys = sorted(set(starts).union(*rows))
    bufs = [""] * len(rows)
    cursor: list[float | None] = [None] * len(rows)
    exact = [True] * len(rows)
    columns: dict[float, int] = {}
    ends = [max(row, default=start) for row, start in zip(rows, starts, strict=True)]
    prev: float | None = None
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
                bufs[r] += _fill(_norm(f - c), frame, long)
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
                cursor[r] = _norm(max(c, f) + len(token))
        prev = f
    return [b.rstrip() for b in bufs], columns, exact


def render_marbles(
    notifications: Sequence[Notification],
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    start: float = 0,
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
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    starts: Sequence[float] | None = None,
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

_SubscribeFn = Callable[[abc.ObserverBase[Batch], abc.SchedulerBase | None], abc.DisposableBase]


def _batches(
    scheduler: TestScheduler,
    notifications: Sequence[Notification],
    *,
    ctx: PipelineContext,
    flow: Flow,
    frame: float,
    source: str,
    hot: bool,
    keys: Callable[[Any], Hashable] | None,
    times: Callable[[Any], float | None] | None,
    origin: float,
) -> tuple[_SubscribeFn, list[Subscription]]:
    """The subscribe function of :func:`marble_batches` and its subscription log."""
    subscriptions: list[Subscription] = []
    by_frame: dict[float, list[Notification]] = {}
    for n in notifications:
        by_frame.setdefault(n.frame, []).append(n)
    terminal = next((n for n in notifications if n.kind != "N"), None)
    position = [0]

    def now_frame() -> float:
        return _norm((float(scheduler.clock) - origin) / frame)

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
                observer.on_error(source_exception(n.value))

    def subscribe(
        observer: abc.ObserverBase[Batch], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        sub_frame = now_frame()
        record = len(subscriptions)
        subscriptions.append((sub_frame, None))
        disposables = []
        late = hot and terminal is not None and terminal.frame < sub_frame
        for f, group in sorted(by_frame.items()):
            at = f if hot else _norm(sub_frame + f)
            if hot and f < sub_frame:
                continue

            def action(_s: Any, _st: Any = None, group: list[Notification] = group) -> None:
                emit_frame(observer, group)

            disposables.append(scheduler.schedule_absolute(origin + at * frame, action))
        if late and terminal is not None:
            # a hot source is a subject: subscribing after it ended ends at once (as in RxJS)
            def end(_s: Any, _st: Any = None, note: Notification = terminal) -> None:
                emit_frame(observer, [note])

            disposables.append(scheduler.schedule(end))

        def unsubscribe() -> None:
            subscriptions[record] = (sub_frame, now_frame())

        return CompositeDisposable(*disposables, Disposable(unsubscribe))

    return subscribe, subscriptions


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
    from the subscription on, and never those before (a subscriber that comes
    after its ``|`` or ``#`` gets that at once, as from a finished subject).
    """
    subscribe, subscriptions = _batches(
        scheduler,
        notifications,
        ctx=ctx,
        flow=flow,
        frame=frame,
        source=source,
        hot=hot,
        keys=keys,
        times=times,
        origin=origin,
    )
    return Observable(subscribe), subscriptions


@dataclass
class MarbleRun:
    """What :func:`run_marbles` saw: the output, the source's subscriptions,
    dead letters, and the flow whose ``pending`` tells whether every source event
    ended. ``cut_off``: the frame at which the run stopped although actions were
    still scheduled (:data:`IDLE_FRAMES`, :data:`IDLE_STEPS` or ``horizon``);
    ``None`` when it ran until nothing was left to do."""

    notifications: list[Notification]
    subscriptions: list[Subscription]
    dead_letters: list[DeadLetter]
    flow: Flow
    ctx: PipelineContext
    frame: float
    scheduler: TestScheduler | None = None
    cut_off: float | None = None

    @property
    def values(self) -> list[Any]:
        """The values the operator emitted, in order."""
        return [n.value for n in self.notifications if n.kind == "N"]

    @property
    def keys(self) -> list[Hashable]:
        """The keys of the values the operator emitted, in order."""
        return [n.key for n in self.notifications if n.kind == "N"]


def _resolve_hot(source: str, hot: bool | None) -> bool:
    marked = "^" in source
    if hot is None:
        return marked
    if marked and not hot:
        raise MarbleError(f"a cold source cannot have a subscription point '^': {source!r}")
    return hot


def _run_until_idle(
    scheduler: TestScheduler, origin: float, end: float, frame: float
) -> float | None:
    """Run the clock to frame ``end``, then from one scheduled action to the next
    until none is left. Stops early, returning the frame reached, when the next
    action is due more than :data:`IDLE_FRAMES` past ``end`` or after
    :data:`IDLE_STEPS` steps (periodic timers never leave the queue empty)."""
    target = scheduler.to_datetime(origin + end * frame)
    advance(scheduler, target)
    limit = scheduler.to_datetime(origin + (end + IDLE_FRAMES) * frame)
    for _ in range(IDLE_STEPS):
        due = next_due(scheduler)
        if due is None:
            return None
        if due > limit:
            break
        advance(scheduler, due, flush=True)
    if next_due(scheduler) is None:
        return None
    return _norm((float(scheduler.clock) - origin) / frame)


def run_marbles(
    operator: Callable[[Observable[Batch]], Observable[Batch]],
    source: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    frame: float = DEFAULT_FRAME,
    hot: bool | None = None,
    subscribe: float = 0,
    unsubscribe: float | None = None,
    horizon: float | None = None,
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
    ended: the run's ``flow`` tells.

    The run goes on until nothing is scheduled any more, so output long after
    the diagram is seen; past the last frame of the source, the subscription
    and the unsubscription it stops at :data:`IDLE_FRAMES` frames or
    :data:`IDLE_STEPS` steps (the run's ``cut_off`` says so). ``horizon``
    (frames) stops it at that frame instead.

    With a ``scheduler`` the run uses it, and frames count from its clock at the
    call; by default a fresh :class:`~reactivex.testing.TestScheduler`.
    """
    return _run_marbles(
        operator,
        source,
        values,
        frame=frame,
        hot=hot,
        subscribe=subscribe,
        unsubscribe=unsubscribe,
        horizon=horizon,
        keys=keys,
        times=times,
        error=error,
        end_outputs=end_outputs,
        scheduler=scheduler,
        end=0,
    )


def _run_marbles(
    operator: Callable[[Observable[Batch]], Observable[Batch]],
    source: str,
    values: Mapping[Any, Any] | Sequence[Any] | None,
    *,
    frame: float,
    hot: bool | None,
    subscribe: float,
    unsubscribe: float | None,
    horizon: float | None,
    keys: Callable[[Any], Hashable] | None,
    times: Callable[[Any], float | None] | None,
    error: Any,
    end_outputs: bool,
    scheduler: TestScheduler | None,
    end: float,
) -> MarbleRun:
    _check_frame(frame)
    is_hot = _resolve_hot(source, hot)
    scheduler = scheduler if scheduler is not None else TestScheduler()
    origin = float(scheduler.clock)
    dead = MemoryDeadLetters()
    ctx = PipelineContext("marbles", scheduler=scheduler, dead_letters=dead)
    flow = Flow("marbles", capacity=1 << 30)
    parsed, width = _parse(source, values, error=error, frame=frame)
    notes = [n for n, _ in parsed]
    if any(n.kind == "E" for n in notes):
        source_exception(error)  # a predicate cannot be raised: say so before the run
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

    def now_frame() -> float:
        return _norm((float(scheduler.clock) - origin) / frame)

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
    cut_off: float | None = None
    if horizon is not None:
        scheduler.advance_to(origin + horizon * frame)
        cut_off = horizon if next_due(scheduler) is not None else None
    else:
        drawn = width if is_hot else subscribe + width
        last = max([drawn, subscribe, unsubscribe or 0, end])
        cut_off = _run_until_idle(scheduler, origin, last, frame)
    return MarbleRun(output, subscriptions, dead.letters, flow, ctx, frame, scheduler, cut_off)


# -- asserting -------------------------------------------------------------------------------------


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_error(value: Any) -> str:
    if value is None:
        return "an error"
    if isinstance(value, type) and issubclass(value, BaseException):
        return f"an error of type {value.__name__}"
    if callable(value) and not isinstance(value, BaseException):
        name = getattr(value, "__qualname__", None) or repr(value)
        return f"an error for which {name} is true"
    return f"error {_short_repr(value)}"


def _describe(n: Notification | None) -> str:
    if n is None:
        return "nothing"
    if n.kind == "C":
        return "completion"
    if n.kind == "E":
        return _describe_error(n.value)
    return _short_repr(n.value)


def _first_difference(
    want: Sequence[Notification], got: Sequence[Notification]
) -> tuple[float, Notification | None, Notification | None] | None:
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


def _error_detail(want: Notification | None, got: Notification | None) -> list[str]:
    """Lines comparing an expected error with the actual one, when both are errors."""
    if want is None or got is None or want.kind != "E" or got.kind != "E":
        return []
    w, g = want.value, got.value
    lines = ["  errors differ:", f"    expected: {_describe_error(w)}", f"    actual:   {g!r}"]
    if isinstance(w, BaseException) and type(w) is type(g):
        lines.append(f"    same type {type(w).__name__}, arguments {w.args!r} != {g.args!r}")
    elif isinstance(w, BaseException):
        lines.append(f"    type {type(w).__name__} expected, got {type(g).__name__}")
    return lines


def _diagram_message(
    want: Sequence[Notification],
    got: Sequence[Notification],
    out_values: Mapping[Any, Any] | Sequence[Any] | None,
    frame: float,
    *,
    source_notes: Sequence[Notification] | None = None,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    hot: bool = False,
    end: float | None = None,
    cut_off: float | None = None,
) -> str:
    source_notes = source_notes or []
    diff = _first_difference(want, got)
    # a periodic timer may have emitted thousands: show what it takes to see the difference
    differs_at = len(got) if diff is None or diff[2] is None else got.index(diff[2])
    shown = max(len(want), differs_at + 1) + 10
    hidden = got[shown:]
    got = got[:shown]
    source_chars = {v for n in source_notes if isinstance(v := n.value, str) and len(v) == 1}
    out_legend = _Legend(out_values, [want, got], avoid=source_chars | set(marble_values(values)))
    rows = [out_legend.tokens(want), out_legend.tokens(got)]
    starts: list[float] = [0, 0]
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
    past = diff is not None and diff[1] is None and end is not None and diff[0] >= end
    if diff is not None and past:
        out.append(
            f"output continued past the diagram at frame {diff[0]}: {_describe(diff[2])} "
            f"(the expected diagram ends at frame {end})"
        )
    out += _label_rows(labels, lines)
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
        out += _error_detail(w, g)
    if legend:
        out.append("  where " + ", ".join(f"{k}={v!r}" for k, v in legend.items()))
    if not exact[-1]:
        out.append(
            "  (the actual row has values closer behind a group than the group's width: "
            "the diagram cannot place them exactly; see the frames below)"
        )
    out.append(f"  expected frames: {[(n.frame, n.kind, n.value) for n in want]}")
    out.append(f"  actual frames:   {[(n.frame, n.kind, n.value) for n in got]}")
    if hidden:
        out.append(
            f"  ... and {len(hidden)} more actual notifications, up to frame {hidden[-1].frame}"
        )
    if cut_off is not None:
        out.append(
            f"  (the run stopped at frame {cut_off} with actions still scheduled: a periodic "
            "timer, or output even later)"
        )
    return "\n".join(out)


def assert_notifications(
    actual: Sequence[Notification],
    expected: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    error: Any = None,
    frame: float = DEFAULT_FRAME,
) -> None:
    """Assert that recorded notifications match the ``expected`` diagram, with
    the aligned failure message of :func:`assert_marbles` (for recordings made
    elsewhere, such as a :class:`~rxagent.testing.virtual.MarbleSink`)."""
    parsed, end = _parse(expected, values, error=error, frame=frame)
    want = [n for n, _ in parsed]
    if not _same(want, actual):
        raise AssertionError(_diagram_message(want, actual, values, frame, end=end))


def _subscription_notes(subs: Sequence[Subscription]) -> list[dict[float, str]]:
    rows: list[dict[float, str]] = []
    for sub, unsub in subs:
        if unsub is None:
            rows.append({sub: "^"})
        elif unsub == sub:
            rows.append({sub: "(^!)"})
        else:
            rows.append({sub: "^", unsub: "!"})
    return rows


def _describe_subscription(s: Subscription | None) -> str:
    if s is None:
        return "no subscription"
    sub, unsub = s
    return f"subscribed at {sub}, " + (
        "never unsubscribed" if unsub is None else f"unsubscribed at {unsub}"
    )


def _subscription_message(
    want: Sequence[Subscription], got: Sequence[Subscription], frame: float
) -> str:
    rows = _subscription_notes(want) + _subscription_notes(got)
    labels = [f"expected[{i}]" if len(want) > 1 else "expected" for i in range(len(want))]
    labels += [f"actual[{i}]" if len(got) > 1 else "actual" for i in range(len(got))]
    starts: list[float] = [0] * len(rows)
    lines, columns, _ = _layout(rows, starts, frame) if rows else ([], {}, [])
    out = [f"subscriptions differ (one frame = {_format_seconds(frame)})"]
    out += _label_rows(labels, lines) if rows else []
    for i in range(max(len(want), len(got))):
        w = want[i] if i < len(want) else None
        g = got[i] if i < len(got) else None
        if w == g:
            continue
        if w is not None and g is not None:
            if w[0] != g[0]:
                at: float | None = w[0]
            else:
                at = w[1] if w[1] is not None else g[1]
        else:
            at = (w or g or (0, None))[0]
        which = f"subscription {i}" if max(len(want), len(got)) > 1 else "the subscription"
        text = (
            f"^ frame {at}: {which}: expected {_describe_subscription(w)}, "
            f"got {_describe_subscription(g)}"
        )
        indent = 2 + max(len(label) for label in labels) + 2 if labels else 2
        column = columns.get(at, 0) if at is not None else 0
        out.append(" " * (indent + column) + text)
        break
    if not want:
        out.append("  expected no subscription")
    if not got:
        out.append("  actual: the source was never subscribed")
    out.append(f"  expected frames: {list(want)}")
    out.append(f"  actual frames:   {list(got)}")
    return "\n".join(out)


def _same(a: Sequence[Notification], b: Sequence[Notification]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b, strict=True))


def _expected_subscriptions(marbles: str | Sequence[str], frame: float) -> list[Subscription]:
    """Subscription marbles as expected subscriptions; one with no ``^`` is none."""
    items = [marbles] if isinstance(marbles, str) else list(marbles)
    out: list[Subscription] = []
    for m in items:
        sub, unsub = parse_subscription(m, frame=frame)
        if sub is not None:
            out.append((sub, unsub))
    return out


def assert_marbles(
    operator: Callable[[Observable[Batch]], Observable[Batch]],
    source: str,
    expected: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    expected_values: Mapping[Any, Any] | Sequence[Any] | None = None,
    subscriptions: str | Sequence[str] | None = None,
    frame: float = DEFAULT_FRAME,
    hot: bool | None = None,
    unsubscribe: str | None = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    error: Any = None,
    expected_error: Any = None,
    check_flow: bool = True,
    scheduler: TestScheduler | None = None,
) -> MarbleRun:
    """Assert that ``operator`` turns the ``source`` diagram into the ``expected`` one.

    ``values`` maps characters of the source (and, unless ``expected_values`` is
    given, of the expected diagram) to values; a list maps the digits ``0``,
    ``1``, ... to its items. Notifications must match in order, frame and
    value. ``error`` is what the source's ``#`` raises and, unless
    ``expected_error`` is given, what an expected ``#`` must be: an exception
    matches one of the same type with equal arguments, an exception type any
    error of that type, a predicate what it accepts, ``None`` any error.

    ``unsubscribe`` is a subscription marble (``'^---!'``, ``'--^--!'`` to
    subscribe later, ``'---!'`` to subscribe at once and dispose at frame 3)
    saying when the test subscribes and disposes. ``subscriptions`` asserts
    when the operator subscribed to and unsubscribed from the source (one
    marble, or a list when it subscribes more than once; a marble with no ``^``
    means no subscription). The source is hot when it has a ``^``: it starts
    before the test subscribes.

    The run goes on until nothing is scheduled any more: output after the last
    frame of the expected diagram fails the test, saying so. With
    ``check_flow`` every source event must have ended by the end of the run
    (the flow-control rule); it is not checked when ``unsubscribe`` disposes
    early. On failure the message shows the diagrams aligned frame under frame.
    """
    sub: float = 0
    unsub: float | None = None
    if unsubscribe is not None:
        parsed_sub, unsub = parse_subscription(unsubscribe, frame=frame)
        sub = parsed_sub or 0
    out_values = expected_values if expected_values is not None else values
    want_error = expected_error if expected_error is not None else error
    parsed, end = _parse(expected, out_values, error=want_error, frame=frame)
    want = [n for n, _ in parsed]
    want_subs = None if subscriptions is None else _expected_subscriptions(subscriptions, frame)
    mentioned = [end] + [f for s in want_subs or [] for f in s if f is not None]
    source_notes = parse_marbles(source, values, error=error, frame=frame)
    result = _run_marbles(
        operator,
        source,
        values,
        frame=frame,
        hot=hot,
        subscribe=sub,
        unsubscribe=unsub,
        horizon=None,
        keys=keys,
        times=times,
        error=error,
        end_outputs=True,
        scheduler=scheduler,
        end=max(mentioned),
    )
    got = result.notifications
    if not _same(want, got):
        is_hot = _resolve_hot(source, hot)
        raise AssertionError(
            _diagram_message(
                want,
                got,
                out_values,
                frame,
                source_notes=source_notes,
                values=values,
                hot=is_hot,
                end=end,
                cut_off=result.cut_off,
            )
        )
    if want_subs is not None and want_subs != result.subscriptions:
        raise AssertionError(_subscription_message(want_subs, result.subscriptions, frame))
    if check_flow and unsubscribe is None and result.flow.pending:
        raise AssertionError(
            f"{result.flow.pending} source events never ended: the operator neither passed "
            "them on, ended nor folded them (see docs/architecture.md, the flow-control rule)"
        )
    return result


# -- several sources: cold, hot, expect_observable -------------------------------------------------


class MarbleObservable(Observable[Batch]):
    """A source made by :meth:`Marbles.cold` or :meth:`Marbles.hot` (or the
    module's :func:`cold` and :func:`hot`): an observable of
    :class:`~rxagent.events.Batch` es on its kit's scheduler, each frame's
    values one batch with credit from the kit's flow, as
    :func:`assert_marbles` feeds an operator.

    ``subscriptions`` records each subscription as (subscribed frame,
    unsubscribed frame or ``None``), for :meth:`Marbles.expect_subscriptions`.
    """

    def __init__(
        self,
        kit: Marbles,
        diagram: str,
        notifications: Sequence[Notification],
        *,
        hot: bool,
        name: str,
        keys: Callable[[Any], Hashable] | None,
        times: Callable[[Any], float | None] | None,
    ) -> None:
        subscribe, self.subscriptions = _batches(
            kit.scheduler,
            notifications,
            ctx=kit.ctx,
            flow=kit.flow,
            frame=kit.frame,
            source=name,
            hot=hot,
            keys=keys,
            times=times,
            origin=kit.origin,
        )
        super().__init__(subscribe)
        self.kit = kit
        self.diagram = diagram
        self.notifications = list(notifications)
        self.hot = hot
        self.name = name

    def __repr__(self) -> str:
        return f"{'hot' if self.hot else 'cold'}({self.diagram!r})"


class Expectation:
    """What :meth:`Marbles.expect_observable` returns: the observable is
    subscribed at the subscription marble's ``^`` (frame 0 without one) and
    disposed at its ``!``; :meth:`to_be` says what it must emit.

    Inside ``with Marbles():`` (or a test using the ``marbles`` fixture) the
    assertion runs when the kit flushes, as in RxJS's ``run``: at
    :meth:`Marbles.flush`, at the end of the block or of the test, so several
    expectations share one run of the clock. On a kit used without ``with``,
    :meth:`to_be` flushes at once.
    """

    def __init__(self, kit: Marbles, observable: Observable[Any], subscription: str | None):
        self.kit = kit
        self.observable = observable
        self.subscription = subscription
        self.notifications: list[Notification] = []
        self.asserted = False
        self._want: list[Notification] = []
        self._values: Mapping[Any, Any] | Sequence[Any] | None = None
        self._end: float = 0
        self._check_flow = True
        sub: float = 0
        unsub: float | None = None
        if subscription is not None:
            parsed, unsub = parse_subscription(subscription, frame=kit.frame)
            sub = parsed or 0
        self.subscribe_frame, self.unsubscribe_frame = sub, unsub
        kit.check_not_flushed("expect_observable(...)")
        disposables: list[abc.DisposableBase] = []
        scheduler, origin, frame = kit.scheduler, kit.origin, kit.frame
        if unsub is not None:
            # scheduled first, so it runs before source emissions of the same frame (as in RxJS)
            def stop(*_: Any) -> None:
                for d in disposables:
                    d.dispose()

            scheduler.schedule_absolute(origin + unsub * frame, stop)

        def on_next(item: Any) -> None:
            at = kit.now_frame()
            if isinstance(item, Batch):
                keys_ = item.keys
                for i, v in enumerate(item.values):
                    key = None if keys_ is None else keys_[i]
                    self.notifications.append(Notification(at, "N", v, key))
                item.end_all()
            else:
                self.notifications.append(Notification(at, "N", item))

        def start(*_: Any) -> None:
            disposables.append(
                observable.subscribe(
                    on_next,
                    lambda e: self.notifications.append(Notification(kit.now_frame(), "E", e)),
                    lambda: self.notifications.append(Notification(kit.now_frame(), "C")),
                    scheduler=scheduler,
                )
            )

        scheduler.schedule_absolute(origin + sub * frame, start)
        kit.expectations.append(self)

    def to_be(
        self,
        expected: str,
        values: Mapping[Any, Any] | Sequence[Any] | None = None,
        *,
        error: Any = None,
        check_flow: bool = True,
    ) -> None:
        """Assert that the observable emits the ``expected`` diagram (``values``
        and ``error`` as in :func:`assert_marbles`; output after the diagram
        fails, saying so). With ``check_flow`` (and no expectation of the kit
        unsubscribing early) every event of the kit's sources must have ended
        once the clock has run."""
        if self.asserted:
            raise MarbleError(f"to_be given twice for {self.label}")
        self.asserted = True
        parsed, self._end = _parse(expected, values, error=error, frame=self.kit.frame)
        self._want = [n for n, _ in parsed]
        self._values = values
        self._check_flow = check_flow
        self.kit.assert_later(self)

    @property
    def label(self) -> str:
        """``expect_observable #n`` (the n-th of its kit), with its subscription marble."""
        n = self.kit.expectations.index(self) + 1
        what = repr(self.observable) if isinstance(self.observable, MarbleObservable) else ""
        marble = "" if self.subscription is None else repr(self.subscription.strip())
        inside = ", ".join(x for x in (what, marble) if x)
        return f"expect_observable #{n}" + (f" ({inside})" if inside else "")

    @property
    def end(self) -> float:
        """The frame the expected diagram ends at."""
        return self._end

    def check(self, cut_off: float | None) -> None:
        """Compare what was recorded with the expected diagram (the kit calls
        this once its clock has run)."""
        got = self.notifications
        if not _same(self._want, got):
            raise AssertionError(
                f"{self.label}:\n"
                + _diagram_message(
                    self._want, got, self._values, self.kit.frame, end=self._end, cut_off=cut_off
                )
            )
        kit = self.kit
        early = any(e.unsubscribe_frame is not None for e in kit.expectations)
        if self._check_flow and not early and kit.flow.pending:
            raise AssertionError(
                f"{kit.flow.pending} source events never ended: the operators neither passed "
                "them on, ended nor folded them (see docs/architecture.md, the flow-control rule)"
            )


class SubscriptionExpectation:
    """What :meth:`Marbles.expect_subscriptions` returns; :meth:`to_be` says
    what the subscriptions must be (asserted as an :class:`Expectation` is)."""

    def __init__(self, kit: Marbles, source: MarbleObservable | Sequence[Subscription]):
        self.kit = kit
        self.source = source
        self._want: list[Subscription] = []

    def to_be(self, marbles: str | Sequence[str]) -> None:
        """The subscriptions: one marble, or a list of them in subscription
        order (a marble with no ``^`` stands for none: ``'----'`` asserts there
        was none)."""
        self._want = _expected_subscriptions(marbles, self.kit.frame)
        self.kit.assert_later(self)

    @property
    def end(self) -> float:
        """The last frame the expected subscriptions mention."""
        return max([0.0] + [f for s in self._want for f in s if f is not None])

    def check(self, cut_off: float | None) -> None:
        """Compare the recorded subscriptions with the expected ones."""
        got = (
            self.source.subscriptions
            if isinstance(self.source, MarbleObservable)
            else list(self.source)
        )
        if self._want != got:
            raise AssertionError(_subscription_message(self._want, got, self.kit.frame))


_CURRENT: ContextVar[Marbles | None] = ContextVar("rxagent_marbles", default=None)


class Marbles:
    """The marble kit bound to one scheduler and frame length (what the
    ``marbles`` pytest fixture gives)::

        m = Marbles(frame=0.001)
        m.assert_marbles(ops.map(str.upper), "-a-b-|", "-A-B-|")

    Runs share the scheduler one after the other; each run's frames count from
    the clock where the previous one left it.

    For several sources, :meth:`cold` and :meth:`hot` make them and
    :meth:`expect_observable` asserts what an observable built from them emits;
    their frame 0 is the clock when the first of them was made (``origin``).
    Used as a context manager (``with Marbles() as m:``, and in a test asking
    for the ``marbles`` fixture), the kit is also what the module's
    :func:`cold`, :func:`hot`, :func:`expect_observable` and
    :func:`expect_subscriptions` use, and leaving it fails if an expectation was
    never given its ``to_be``.
    """

    def __init__(self, scheduler: TestScheduler | None = None, *, frame: float = DEFAULT_FRAME):
        _check_frame(frame)
        self.scheduler = scheduler if scheduler is not None else TestScheduler()
        self.frame = frame
        self.sources: list[MarbleObservable] = []
        self.expectations: list[Expectation] = []
        self._origin: float | None = None
        self._ctx: PipelineContext | None = None
        self._flow: Flow | None = None
        self._dead: MemoryDeadLetters | None = None
        self._outer: list[Marbles | None] = []
        self._pending: list[Expectation | SubscriptionExpectation] = []
        self._flushed = False

    # -- the shared context of cold() and hot() ---------------------------------------------------

    @property
    def origin(self) -> float:
        """The clock (seconds) at frame 0 of :meth:`cold`, :meth:`hot` and
        :meth:`expect_observable`: when the first of them was made."""
        if self._origin is None:
            self._origin = float(self.scheduler.clock)
        return self._origin

    @property
    def dead_letters(self) -> MemoryDeadLetters:
        """Dead letters of operators running on this kit's sources."""
        if self._dead is None:
            self._dead = MemoryDeadLetters()
        return self._dead

    @property
    def ctx(self) -> PipelineContext:
        """The context every batch of this kit's sources carries."""
        if self._ctx is None:
            self._ctx = PipelineContext(
                "marbles", scheduler=self.scheduler, dead_letters=self.dead_letters
            )
        return self._ctx

    @property
    def flow(self) -> Flow:
        """The credit of this kit's sources: ``pending`` counts events not ended."""
        if self._flow is None:
            self._flow = Flow("marbles", capacity=1 << 30)
        return self._flow

    def now_frame(self) -> float:
        """The clock as a frame counted from :attr:`origin`."""
        return _norm((float(self.scheduler.clock) - self.origin) / self.frame)

    def _source(
        self,
        diagram: str,
        values: Mapping[Any, Any] | Sequence[Any] | None,
        *,
        hot: bool,
        error: Any,
        keys: Callable[[Any], Hashable] | None,
        times: Callable[[Any], float | None] | None,
        name: str | None,
    ) -> MarbleObservable:
        kind = "hot" if hot else "cold"
        if not hot and "^" in diagram:
            raise MarbleError(f"a cold source cannot have a subscription point '^': {diagram!r}")
        notes = parse_marbles(diagram, values, error=error, frame=self.frame)
        if any(n.kind == "E" for n in notes):
            source_exception(error)
        self.check_not_flushed(f"{kind}({diagram!r})")
        source = MarbleObservable(
            self,
            diagram,
            notes,
            hot=hot,
            name=name or f"{kind}{len(self.sources)}",
            keys=keys,
            times=times,
        )
        self.sources.append(source)
        return source

    def cold(
        self,
        diagram: str,
        values: Mapping[Any, Any] | Sequence[Any] | None = None,
        *,
        error: Any = None,
        keys: Callable[[Any], Hashable] | None = None,
        times: Callable[[Any], float | None] | None = None,
        name: str | None = None,
    ) -> MarbleObservable:
        """A cold source: each subscription plays the diagram from its own
        frame 0 (RxJS's ``cold``; no ``^``). ``error`` is what ``#`` raises;
        ``keys``/``times`` give each event its key and event time."""
        return self._source(
            diagram, values, hot=False, error=error, keys=keys, times=times, name=name
        )

    def hot(
        self,
        diagram: str,
        values: Mapping[Any, Any] | Sequence[Any] | None = None,
        *,
        error: Any = None,
        keys: Callable[[Any], Hashable] | None = None,
        times: Callable[[Any], float | None] | None = None,
        name: str | None = None,
    ) -> MarbleObservable:
        """A hot source: the diagram plays on the kit's clock whoever listens
        (``^`` marks frame 0; without one the diagram starts at frame 0); a
        subscriber sees the frames from its subscription on (RxJS's ``hot``)."""
        return self._source(
            diagram, values, hot=True, error=error, keys=keys, times=times, name=name
        )

    def expect_observable(
        self, observable: Observable[Any], subscription: str | None = None
    ) -> Expectation:
        """Subscribe to ``observable`` at frame 0 (or the ``subscription``
        marble's ``^``, disposing at its ``!``) and record what it emits;
        assert it with ``.to_be(expected, values)``. Batches are recorded value
        by value and ended, as a sink would."""
        self.origin  # noqa: B018 - frame 0 is now, if nothing fixed it before
        return Expectation(self, observable, subscription)

    def expect_subscriptions(
        self, source: MarbleObservable | Sequence[Subscription]
    ) -> SubscriptionExpectation:
        """Assert when ``source`` (a :meth:`cold` or :meth:`hot` source, or its
        ``subscriptions``) was subscribed: ``.to_be('^---!')``."""
        return SubscriptionExpectation(self, source)

    def check_not_flushed(self, what: str) -> None:
        """Sources and expectations must all exist before the clock runs."""
        if self._flushed:
            raise MarbleError(
                f"{what} made after the kit's clock ran (a flush, or a to_be outside "
                "`with Marbles():`): make every source and expectation first, or use a new Marbles"
            )

    @property
    def active(self) -> bool:
        """Whether this kit is the current one (inside its ``with`` block or the
        test of its ``marbles`` fixture): its assertions wait for a flush."""
        return _CURRENT.get() is self

    def assert_later(self, expectation: Expectation | SubscriptionExpectation) -> None:
        """Queue an assertion for the next :meth:`flush`; on a kit that is not
        :attr:`active`, flush now."""
        self._pending.append(expectation)
        if not self.active:
            self.flush()

    def flush(self) -> float | None:
        """Run the clock until nothing is scheduled (at most :data:`IDLE_FRAMES`
        frames past the kit's diagrams), then run the assertions given so far
        (``to_be``). Returns the frame where the clock stopped with work left,
        or ``None``."""
        self._flushed = self._flushed or bool(self.sources or self.expectations)
        ends = [e.end for e in self._pending]
        ends += [_extent(s.diagram, self.frame) for s in self.sources if not s.hot]
        ends += [
            f
            for e in self.expectations
            for f in (e.subscribe_frame, e.unsubscribe_frame)
            if f is not None
        ]
        ends += [n.frame + 1 for s in self.sources if s.hot for n in s.notifications]
        cut_off = _run_until_idle(self.scheduler, self.origin, max([0.0, *ends]), self.frame)
        pending, self._pending = self._pending, []
        for expectation in pending:
            expectation.check(cut_off)
        return cut_off

    def close(self) -> None:
        """Flush, then fail if an :meth:`expect_observable` never got its
        ``to_be`` (it would assert nothing). Leaving ``with Marbles():`` and the
        end of a test using the ``marbles`` fixture do this."""
        if self._pending:
            self.flush()
        missing = [e for e in self.expectations if not e.asserted]
        if missing:
            raise AssertionError(
                f"{len(missing)} expect_observable(...) never given a .to_be(...): "
                + ", ".join(e.label for e in missing)
            )

    def __enter__(self) -> Marbles:
        self.activate()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()
        if kind is None:
            self.close()

    def activate(self) -> None:
        """Make this the current kit (what ``with`` does on entry)."""
        self._outer.append(_CURRENT.get())
        _CURRENT.set(self)

    def deactivate(self) -> None:
        """Restore the kit that was current before :meth:`activate`."""
        _CURRENT.set(self._outer.pop() if self._outer else None)

    # -- one operator, one source ------------------------------------------------------------

    def parse(
        self,
        diagram: str,
        values: Mapping[Any, Any] | Sequence[Any] | None = None,
        *,
        error: Any = None,
    ) -> list[Notification]:
        """:func:`parse_marbles` with this kit's frame."""
        return parse_marbles(diagram, values, error=error, frame=self.frame)

    def parse_subscription(self, diagram: str) -> SubscriptionMarble:
        """:func:`parse_subscription` with this kit's frame."""
        return parse_subscription(diagram, frame=self.frame)

    def time(self, diagram: str) -> float:
        """:func:`marble_time`: seconds until the diagram's ``|``."""
        return marble_time(diagram, frame=self.frame)

    def render(
        self,
        notifications: Sequence[Notification],
        values: Mapping[Any, Any] | Sequence[Any] | None = None,
    ) -> str:
        """:func:`render_marbles` with this kit's frame (the diagram only)."""
        return render_marbles(notifications, values, frame=self.frame)[0]

    def run(
        self,
        operator: Callable[[Observable[Batch]], Observable[Batch]],
        source: str,
        values: Mapping[Any, Any] | Sequence[Any] | None = None,
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
        values: Mapping[Any, Any] | Sequence[Any] | None = None,
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


def _current(what: str) -> Marbles:
    kit = _CURRENT.get()
    if kit is None:
        raise MarbleError(
            f"{what}() needs a marble kit: call it inside `with Marbles() as m:`, in a test "
            f"that asks for the `marbles` fixture, or as m.{what}()"
        )
    return kit


def cold(
    diagram: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    error: Any = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    name: str | None = None,
) -> MarbleObservable:
    """:meth:`Marbles.cold` on the current kit (``with Marbles():`` or the
    ``marbles`` fixture)."""
    return _current("cold").cold(diagram, values, error=error, keys=keys, times=times, name=name)


def hot(
    diagram: str,
    values: Mapping[Any, Any] | Sequence[Any] | None = None,
    *,
    error: Any = None,
    keys: Callable[[Any], Hashable] | None = None,
    times: Callable[[Any], float | None] | None = None,
    name: str | None = None,
) -> MarbleObservable:
    """:meth:`Marbles.hot` on the current kit (``with Marbles():`` or the
    ``marbles`` fixture)."""
    return _current("hot").hot(diagram, values, error=error, keys=keys, times=times, name=name)


def expect_observable(observable: Observable[Any], subscription: str | None = None) -> Expectation:
    """:meth:`Marbles.expect_observable` on the current kit."""
    return _current("expect_observable").expect_observable(observable, subscription)


def expect_subscriptions(
    source: MarbleObservable | Sequence[Subscription],
) -> SubscriptionExpectation:
    """:meth:`Marbles.expect_subscriptions` on the current kit (or the source's)."""
    if isinstance(source, MarbleObservable):
        return source.kit.expect_subscriptions(source)
    return _current("expect_subscriptions").expect_subscriptions(source)
