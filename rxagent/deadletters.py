"""Dead letters: where events go when they cannot be processed, with the reason.

A dead letter records the event, the stage that gave up on it, the error's type
and message, and the time. Putting an event in dead letters *ends* it (its
processing is over, and the record is what remains), so the source's credit
returns and the commit watermark moves past it: nothing is lost, nothing stalls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .events import Event

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

    @classmethod
    def from_error(
        cls, event: Event, stage: str, error: BaseException | str, *, pipeline: str | None = None
    ) -> DeadLetter:
        if isinstance(error, BaseException):
            return cls(event, stage, type(error).__name__, str(error) or repr(error), pipeline)
        return cls(event, stage, "Rejected", error, pipeline)

    def to_json(self) -> dict[str, Any]:
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

    def put(self, letter: DeadLetter) -> None: ...


class MemoryDeadLetters:
    """Dead letters kept in a list (bounded: the oldest go first past ``maxlen``).

    ``subscribe(callback)`` calls back on every new letter, from the loop.
    """

    def __init__(self, maxlen: int | None = 10_000) -> None:
        self.maxlen = maxlen
        self._letters: list[DeadLetter] = []
        self.total = 0
        self._callbacks: list[Callable[[DeadLetter], None]] = []
        self._lock = threading.Lock()

    def put(self, letter: DeadLetter) -> None:
        with self._lock:
            self._letters.append(letter)
            self.total += 1
            if self.maxlen is not None and len(self._letters) > self.maxlen:
                del self._letters[0 : len(self._letters) - self.maxlen]
        for callback in list(self._callbacks):
            callback(letter)

    def subscribe(self, callback: Callable[[DeadLetter], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    @property
    def letters(self) -> list[DeadLetter]:
        with self._lock:
            return list(self._letters)

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.letters)

    def clear(self) -> None:
        with self._lock:
            self._letters.clear()


class JsonlDeadLetters:
    """Dead letters appended to a JSON-lines file, one object per line.

    Values that JSON cannot represent are written as their ``repr``. Each line is
    flushed at once: dead letters are rare, and a crash must not lose them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self.total = 0

    def put(self, letter: DeadLetter) -> None:
        data = letter.to_json()
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
        self._file.close()

    def __enter__(self) -> JsonlDeadLetters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_dead_letters(path: str | Path) -> list[dict[str, Any]]:
    """Read back a file written by :class:`JsonlDeadLetters`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
