"""Hypothesis strategies for testing stream processing: marble diagrams, keys,
and timed event streams with bursts, silences, disorder, late events and
duplicates.

Every strategy takes plain parameters, so they compose with hypothesis's own::

    @given(stream=timed_events(keys=3, max_disorder=2.0, duplicate_rate=0.1))
    def test_dedup_keeps_one_of_each(stream): ...

    @given(diagram=marble_diagrams("abc", ending="complete"), values=marble_values("abc"))
    def test_map_keeps_timing(diagram, values): ...

Random choices shrink towards the plain case (regular gaps, in order, on time,
no duplicates), so a failing example reads as simply as it can. Needs
``hypothesis`` (``pip install 'rxagent[testing]'``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal

try:
    from hypothesis import strategies as st
    from hypothesis.errors import InvalidArgument
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rxagent.testing.strategies needs hypothesis: pip install 'rxagent[testing]'"
    ) from error

from ..events import Event
from .marbles import DEFAULT_FRAME, progression_text
from .virtual import TimedEvent

__all__ = [
    "events",
    "keys",
    "late_flags",
    "marble_diagrams",
    "marble_values",
    "timed_events",
]

Ending = Literal["any", "complete", "error", "none"]
_ENDINGS = ("any", "complete", "error", "none")


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise InvalidArgument(f"{name} must be a probability between 0 and 1, got {rate!r}")


def _chance(draw: st.DrawFn, rate: float) -> bool:
    """True with probability ``rate``; shrinks to False."""
    if rate <= 0:
        return False
    return draw(st.integers(0, 999)) >= round(1000 * (1 - rate))


def keys(n: int = 3, *, prefix: str = "k", hot: float = 0.0) -> st.SearchStrategy[str]:
    """One of ``n`` keys, ``"k0"`` ... ``"k{n-1}"``; with ``hot`` the first key
    takes that share of the draws on top of its even share (skew)."""
    if n < 1:
        raise InvalidArgument(f"keys needs n >= 1, got {n}")
    _check_rate("hot", hot)
    names = [f"{prefix}{i}" for i in range(n)]
    even = st.sampled_from(names)
    if hot <= 0:
        return even

    @st.composite
    def skewed(draw: st.DrawFn) -> str:
        return names[0] if _chance(draw, hot) else draw(even)

    return skewed()


_keys = keys  # timed_events has a parameter named ``keys``


# -- marble diagrams -------------------------------------------------------------------------------


def marble_diagrams(
    alphabet: str = "abcde",
    *,
    min_size: int = 0,
    max_size: int = 20,
    groups: bool = True,
    spaces: bool = False,
    progressions: bool = False,
    ending: Ending = "any",
    hot: bool = False,
    frame: float = DEFAULT_FRAME,
) -> st.SearchStrategy[str]:
    """Valid marble diagrams of ``min_size`` to ``max_size`` tokens: ``-``,
    values from ``alphabet``, groups like ``(ab)`` (``groups``), time
    progressions like `` 15ms `` (``progressions``, whole ``frame``\\ s), and
    ignored spaces (``spaces``).

    ``ending``: ``"complete"`` ends with ``|``, ``"error"`` with ``#``,
    ``"none"`` leaves the stream open, ``"any"`` picks one; the ending may sit
    in a group with values, as in ``(c|)``. ``hot`` puts a ``^`` somewhere.
    """
    if not alphabet or any(c in "-|#()^! 0123456789" for c in alphabet):
        raise InvalidArgument(
            f"alphabet must be non-empty, without marble syntax or digits, got {alphabet!r}"
        )
    if ending not in _ENDINGS:
        raise InvalidArgument(f"ending must be one of {_ENDINGS}, got {ending!r}")
    if not 0 <= min_size <= max_size:
        raise InvalidArgument(f"need 0 <= min_size <= max_size, got {min_size}, {max_size}")

    value = st.sampled_from(alphabet)
    options: list[st.SearchStrategy[str]] = [st.just("-"), value]
    if groups:
        options.append(
            st.lists(value, min_size=2, max_size=3).map(lambda cs: "(" + "".join(cs) + ")")
        )
    if progressions:
        options.append(
            st.integers(1, 50).map(lambda k: f" {progression_text(k, frame) or '-' * k} ")
        )
    token = st.one_of(options)

    @st.composite
    def diagram(draw: st.DrawFn) -> str:
        tokens = draw(st.lists(token, min_size=min_size, max_size=max_size))
        if spaces:
            tokens = [t + " " * draw(st.integers(0, 2)) for t in tokens]
        end = ending if ending != "any" else draw(st.sampled_from(["complete", "error", "none"]))
        if end != "none":
            mark = "|" if end == "complete" else "#"
            with_values = draw(st.lists(value, max_size=2)) if groups else []
            tokens.append(f"({''.join(with_values)}{mark})" if with_values else mark)
        if hot:
            at = draw(st.integers(0, len(tokens)))
            tokens.insert(at, "^")
        return "".join(tokens)

    return diagram()


def marble_values(
    alphabet: str = "abcde", values: st.SearchStrategy[Any] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """A ``values`` mapping for diagrams over ``alphabet``: each character to a
    value drawn from ``values`` (default: small integers)."""
    drawn = values if values is not None else st.integers(-100, 100)
    return st.fixed_dictionaries(dict.fromkeys(alphabet, drawn))


# -- timed event streams ---------------------------------------------------------------------------


def timed_events(
    *,
    keys: int | st.SearchStrategy[Hashable] | None = 3,
    values: st.SearchStrategy[Any] | None = None,
    min_size: int = 0,
    max_size: int = 50,
    start: float = 0.0,
    epoch: float = 0.0,
    resolution: float = 0.001,
    max_gap: float = 1.0,
    burst_rate: float = 0.2,
    silence_rate: float = 0.0,
    max_silence: float = 60.0,
    max_disorder: float = 0.0,
    late_rate: float = 0.0,
    max_lateness: float = 10.0,
    duplicate_rate: float = 0.0,
) -> st.SearchStrategy[list[TimedEvent]]:
    """Streams of :class:`~rxagent.testing.virtual.TimedEvent`, in arrival order.

    * **arrivals** start at ``start`` seconds; between two events passes nothing
      (a *burst*, with probability ``burst_rate``), a *silence* of ``max_gap``
      to ``max_silence`` seconds (``silence_rate``), or else up to ``max_gap``.
      Times are whole multiples of ``resolution`` (1 ms: one marble frame).
    * **event times** are ``epoch`` + the arrival minus a delay of up to
      ``max_disorder`` seconds, so the stream is out of event-time order by at
      most that much; a *late* event (``late_rate``) is delayed a further
      ``max_lateness`` seconds at most (see :func:`late_flags`).
    * **duplicates** (``duplicate_rate``): an event delivered again, up to
      ``max_gap`` later, with the same ``seq``, key, value and event time.
    * ``keys``: the number of keys (``k0``, ``k1``, ...), a strategy of keys, or
      ``None`` for unkeyed events. ``values``: default small integers.
    """
    for name, rate in (
        ("burst_rate", burst_rate),
        ("silence_rate", silence_rate),
        ("late_rate", late_rate),
        ("duplicate_rate", duplicate_rate),
    ):
        _check_rate(name, rate)
    if burst_rate + silence_rate > 1:
        raise InvalidArgument("burst_rate + silence_rate must be at most 1")
    if not 0 <= min_size <= max_size:
        raise InvalidArgument(f"need 0 <= min_size <= max_size, got {min_size}, {max_size}")
    if resolution <= 0:
        raise InvalidArgument(f"resolution must be > 0 seconds, got {resolution}")
    for name, limit in (
        ("max_gap", max_gap),
        ("max_silence", max_silence),
        ("max_disorder", max_disorder),
        ("max_lateness", max_lateness),
    ):
        if limit < 0:
            raise InvalidArgument(f"{name} must be >= 0 seconds, got {limit}")

    def ticks(seconds: float) -> int:
        return round(seconds / resolution)

    gap_t = max(1, ticks(max_gap))
    silence_t = max(gap_t, ticks(max_silence))
    disorder_t = ticks(max_disorder)
    lateness_t = max(1, ticks(max_lateness))
    key_strategy: st.SearchStrategy[Hashable] | None
    key_strategy = _keys(keys) if isinstance(keys, int) else keys
    value_strategy = values if values is not None else st.integers(-1000, 1000)

    def seconds(t: int) -> float:
        return round(t * resolution, 9)

    @st.composite
    def stream(draw: st.DrawFn) -> list[TimedEvent]:
        n = draw(st.integers(min_size, max_size))
        arrival = ticks(start)
        made: list[tuple[int, TimedEvent]] = []
        for seq in range(n):
            if seq:
                r = draw(st.integers(0, 999))
                if r >= round(1000 * (1 - burst_rate)):
                    gap = 0
                elif r >= round(1000 * (1 - burst_rate - silence_rate)):
                    gap = draw(st.integers(gap_t, silence_t))
                else:
                    gap = draw(st.integers(1, gap_t))
                arrival += gap
            delay = draw(st.integers(0, disorder_t)) if disorder_t else 0
            if _chance(draw, late_rate):
                delay = disorder_t + draw(st.integers(1, lateness_t))
            key = draw(key_strategy) if key_strategy is not None else None
            value = draw(value_strategy)
            made.append(
                (
                    arrival,
                    TimedEvent(seconds(arrival), value, key, epoch + seconds(arrival - delay), seq),
                )
            )
        copies: list[tuple[int, TimedEvent]] = []
        for at, ev in made:
            if _chance(draw, duplicate_rate):
                again = at + draw(st.integers(0, gap_t))
                copies.append(
                    (again, TimedEvent(seconds(again), ev.value, ev.key, ev.time, ev.seq))
                )
        # stable: a copy arriving with others at one instant comes after them
        return [ev for _, ev in sorted(made + copies, key=lambda pair: pair[0])]

    return stream()


def events(**options: Any) -> st.SearchStrategy[list[Event]]:
    """:func:`timed_events` as :class:`~rxagent.events.Event` objects (with key,
    event time, and ``seq`` as position), for code that takes events."""
    return timed_events(**options).map(lambda stream: [ev.to_event("generated") for ev in stream])


def late_flags(stream: Sequence[TimedEvent], allowed_lateness: float) -> list[bool]:
    """Which events are late for a bounded-disorder watermark: an event is late
    when its event time is more than ``allowed_lateness`` behind the greatest
    event time that arrived before it. Events without a time are never late."""
    flags: list[bool] = []
    highest: float | None = None
    for ev in stream:
        t = ev.time
        if t is None:
            flags.append(False)
            continue
        flags.append(highest is not None and t < highest - allowed_lateness)
        if highest is None or t > highest:
            highest = t
    return flags
