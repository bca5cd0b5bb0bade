"""Dead letters: where events go when they cannot be processed, with the reason.

A dead letter records the event, the stage that gave up on it, the error's type
and message, and the time. Putting an event in dead letters *ends* it (its
processing is over, and the record is what remains), so the source's credit
returns and the commit watermark moves past it: nothing is lost, nothing stalls.

In memory, dead letters are bounded in bytes as well as in count: a raw payload
(``str`` or ``bytes``, such as an undecodable frame) is kept as a prefix of
``max_payload`` bytes with its original size noted (``DeadLetter.size``), and the
store drops its oldest letters past ``max_bytes``. A source flooded with large
garbage frames costs a bounded amount of memory, not the frames themselves.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._secrets import open_private, redact
from .envelope import Event
from .exceptions import ConfigurationError

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "JsonlDeadLetters",
    "MemoryDeadLetters",
    "read_dead_letters",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One event that could not be processed, and why."""

    event: Event
    stage: str
    error_type: str
    message: str
    pipeline: str | None = None
    time: float = field(default_factory=time.time)
    #: The original size of the event's value (bytes or characters) when the value
    #: kept is a prefix of it (:meth:`truncated`); ``None`` when kept whole.
    size: int | None = None

    def truncated(self, limit: int) -> DeadLetter:
        """This letter with a ``str``/``bytes`` value longer than ``limit`` cut to its
        first ``limit`` items (``size`` notes the original length); itself otherwise."""
        value = self.event.value
        if type(value) not in _RAW or len(value) <= limit:
            return self
        ev = self.event
        event = Event(
            value[:limit], key=ev.key, time=ev.time, position=ev.position, headers=ev.headers
        )
        return replace(self, event=event, size=len(value))

    @classmethod
    def from_error(
        cls, event: Event, stage: str, error: BaseException | str, *, pipeline: str | None = None
    ) -> DeadLetter:
        # the message (an expression's text, a URL) is shown and written: redacted
        """The letter for ``event`` failing at ``stage``: an exception gives its type and
        (redacted) message; a string is a rejection reason (``error_type`` ``Rejected``).
        """
        if isinstance(error, BaseException):
            message = redact(str(error) or repr(error))
            return cls(event, stage, type(error).__name__, message, pipeline)
        return cls(event, stage, "Rejected", redact(error), pipeline)

    def to_json(self) -> dict[str, Any]:
        """The letter as JSON-ready data: time, pipeline, stage, error type and message, and the
        event's value, key, time, position and headers."""
        ev = self.event
        pos = ev.position
        return {
            "time": self.time,
            "pipeline": self.pipeline,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
            "event": {
                "value": ev.value,
                "key": ev.key,
                "time": ev.time,
                "position": None
                if pos is None
                else {"source": pos.source, "partition": pos.partition, "offset": pos.offset},
                "headers": dict(ev.headers) if ev.headers is not None else None,
            },
        }


@runtime_checkable
class DeadLetterSink(Protocol):
    """Anything with ``put(letter)``; it must not block the event loop."""

    def put(self, letter: DeadLetter) -> None:
        """Keep ``letter``; called on the loop, so it must not block (queue slow writes)."""


class MemoryDeadLetters:
    """Dead letters kept in memory, bounded in count and in bytes: the oldest go
    first past ``maxlen`` letters or past ``max_bytes`` (the approximate size of
    what the letters keep: values, keys, headers and messages).

    A ``str``/``bytes`` value longer than ``max_payload`` (an undecodable frame) is
    kept as its first ``max_payload`` bytes or characters, with its original size in
    ``DeadLetter.size``; ``None`` keeps values whole. ``bytes`` is the current
    total, ``dropped`` counts letters evicted by either bound.

    ``subscribe(callback)`` calls back on every new letter (as kept), from the loop.

    Args:
        maxlen: most letters kept; the oldest go first past it (None: no bound).
        max_bytes: most approximate bytes kept; the oldest go first past it (None:
            no bound).
        max_payload: longest ``str``/``bytes`` value kept whole; a longer one is
            cut to this many characters or bytes (None: keep values whole).
    """

    def __init__(
        self,
        maxlen: int | None = 10_000,
        *,
        max_bytes: int | None = 16 << 20,
        max_payload: int | None = 1024,
    ) -> None:
        for name, bound in (
            ("maxlen", maxlen),
            ("max_bytes", max_bytes),
            ("max_payload", max_payload),
        ):
            if bound is not None and bound < 1:
                raise ConfigurationError(
                    f"MemoryDeadLetters({name}=...) must be >= 1 or None, got {bound}"
                )
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self.max_payload = max_payload
        self._letters: deque[DeadLetter] = deque()
        self._sizes: deque[int] = deque()
        self.bytes = 0
        self.total = 0
        self.dropped = 0
        self._callbacks: list[Callable[[DeadLetter], None]] = []
        self._lock = threading.Lock()

    def put(self, letter: DeadLetter) -> None:
        """Keep ``letter`` (its payload cut to ``max_payload``), evicting the oldest past ``maxlen``
        or ``max_bytes``, and call the subscribers."""
        if self.max_payload is not None:
            letter = letter.truncated(self.max_payload)
        size = letter_size(letter)
        maxlen = self.maxlen
        max_bytes = self.max_bytes
        with self._lock:
            self._letters.append(letter)
            self._sizes.append(size)
            self.bytes += size
            self.total += 1
            letters = self._letters
            while len(letters) > 1 and (
                (maxlen is not None and len(letters) > maxlen)
                or (max_bytes is not None and self.bytes > max_bytes)
            ):
                letters.popleft()
                self.bytes -= self._sizes.popleft()
                self.dropped += 1
        for callback in list(self._callbacks):
            callback(letter)

    def subscribe(self, callback: Callable[[DeadLetter], None]) -> Callable[[], None]:
        """Call ``callback`` with each new letter (as kept), on the loop; returns the function that
        unsubscribes it."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    @property
    def letters(self) -> list[DeadLetter]:
        """The letters kept, oldest first (a copy)."""
        with self._lock:
            return list(self._letters)

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.letters)

    def clear(self) -> None:
        """Forget every letter kept (``total`` and ``dropped`` stay)."""
        with self._lock:
            self._letters.clear()
            self._sizes.clear()
            self.bytes = 0


_RAW = frozenset({str, bytes, bytearray, memoryview})
_LETTER_OVERHEAD = 256  # the letter, its event and their fields, roughly


def letter_size(letter: DeadLetter, *, budget: int = 64) -> int:
    """The approximate bytes a dead letter keeps: its message, and its event's
    value, key and headers (``str``/``bytes`` by length, containers walked up to
    ``budget`` items, anything else by ``sys.getsizeof``)."""
    ev = letter.event
    todo: list[Any] = [ev.value, ev.key, ev.headers]
    size = _LETTER_OVERHEAD + len(letter.message)
    seen = 0
    while todo and seen < budget:
        item = todo.pop()
        seen += 1
        kind = type(item)
        if kind in _RAW:
            size += len(item) if kind is not memoryview else item.nbytes
        elif item is None:
            continue
        elif kind is dict or isinstance(item, Mapping):
            size += sys.getsizeof(item)
            todo.extend(item.keys())
            todo.extend(item.values())
        elif kind is list or kind is tuple or isinstance(item, (list, tuple, set, frozenset)):
            size += sys.getsizeof(item)
            todo.extend(item)
        else:
            size += sys.getsizeof(item)
    return size


class JsonlDeadLetters:
    """Dead letters appended to a JSON-lines file, one object per line.

    Values that JSON cannot represent are written as their ``repr``. Each line is
    flushed at once: dead letters are rare, and a crash must not lose them.

    Args:
        path: the JSON-lines file letters are appended to (created when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open_private(self.path, "a", encoding="utf-8")  # payloads: 0600
        self.total = 0

    def put(self, letter: DeadLetter) -> None:
        """Append ``letter`` as one JSON line (values JSON cannot hold as their ``repr``; messages
        redacted) and flush it."""
        data = letter.to_json()
        data["message"] = redact(str(data["message"]))
        try:
            line = json.dumps(data, default=repr, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            # ``default`` never sees dict keys JSON cannot name (a tuple) nor a value
            # that holds itself: write the event's fields as their repr instead
            event = data["event"]
            for name in ("value", "key", "headers"):
                if event[name] is not None:
                    event[name] = repr(event[name])
            line = json.dumps(data, default=repr, ensure_ascii=False)
        try:
            self._file.write(line + "\n")
        except UnicodeEncodeError:
            # text decoded with errors="surrogateescape" holds lone surrogates, which
            # UTF-8 cannot encode: escape the line as ASCII (JSON reads it back the same)
            self._file.write(json.dumps(data, default=repr) + "\n")
        self._file.flush()
        self.total += 1

    def close(self) -> None:
        """Close the file; letters put afterwards are an error."""
        self._file.close()

    def __enter__(self) -> JsonlDeadLetters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_dead_letters(path: str | Path) -> list[dict[str, Any]]:
    """Read back a file written by :class:`JsonlDeadLetters`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
