"""The recording format: JSON lines, one event per line, after a header line.

A recording is what :class:`~rxagent.sinks.record.RecordSink` writes and
:class:`~rxagent.sources.replay.ReplaySource` reads. This module is the format
alone: pure functions from fields to bytes and back, and a sans-I/O
:class:`RecordingReader` that turns lines into headers, records and errors.
Opening files, threads and timing live in the sink and the source.

A file looks like this (one JSON object per line)::

    {"format":"rxagent-recording","version":1,"created":1718000000.5,"source":"ticks",...}
    {"t":1718000000.61,"value":{"sym":"AAPL","px":190.1},"key":"AAPL","source":"ticks","offset":0}
    {"t":1718000000.61,"value":{"sym":"MSFT","px":420.7},"key":"MSFT","source":"ticks","offset":1}

Event lines hold ``t`` (the recorder's clock when it received the event, epoch
seconds), ``value``, and when they are not null ``key``, ``time`` (event time),
``source``, ``partition``, ``offset`` and ``headers``: an absent field means
null, which keeps lines short. A header line (``"format": "rxagent-recording"``)
starts the file and every later session appended to it, so a recorder that
restarts leaves one file of several *segments*.

What round-trips, and what does not:

* JSON values (null, booleans, numbers, strings, arrays, objects with string
  keys) come back equal.
* ``bytes`` as the value, the key or a header value are written in base64 and
  named in ``"bytes"`` / ``"bytes_headers"``, so they come back as ``bytes``.
  Kafka keys and headers and binary WebSocket frames are bytes, and a recorder
  that refused them could not capture those feeds.
* A key or partition written as a JSON array comes back as a tuple: keys must be
  hashable, so an array there can only have been a tuple.
* Inside values, tuples come back as lists and non-string object keys as
  strings (that is JSON). NaN and infinities are refused, not written as the
  non-standard tokens some parsers reject. Any other object is refused with
  :class:`RecordEncodeError` unless a ``default`` function converts it (as with
  :func:`json.dumps`); what ``default`` returns is what a replay gives back.

Unknown fields are ignored when reading, so a newer writer that adds a field
does not break an older reader; a newer ``version`` is refused with a clear error.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ._secrets import redact_data
from .exceptions import DecodeError, RxAgentError

__all__ = [
    "FORMAT",
    "VERSION",
    "Header",
    "Record",
    "RecordEncodeError",
    "RecordingError",
    "RecordingReader",
    "decode_line",
    "encode_event",
    "encode_header",
    "read_recording",
]

#: The value of a header line's ``"format"`` field.
FORMAT: Final = "rxagent-recording"
#: The format version this module writes and the newest it reads.
VERSION: Final = 1

Default = Callable[[Any], Any]


class RecordingError(DecodeError):
    """A line of a recording could not be read. ``path`` and ``line`` say where
    (lines count from 1), ``reason`` says what was wrong."""

    def __init__(self, path: str, line: int, reason: str, *, raw: Any = None) -> None:
        super().__init__(f"{path}:{line}: {reason}", source=path, raw=raw)
        self.path = path
        self.line = line
        self.reason = reason


class RecordEncodeError(RxAgentError, ValueError):
    """An event could not be written as JSON without changing it on replay."""


@dataclass(frozen=True, slots=True)
class Header:
    """The first line of a recording, and of each session appended to it.

    ``created`` is the writer's wall-clock time (epoch seconds) when the session
    began; ``source`` and ``pipeline`` name what was recorded; ``meta`` holds any
    other fields of the line.
    """

    version: int = VERSION
    created: float | None = None
    source: str | None = None
    pipeline: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One recorded event. ``t`` is when the recorder received it (epoch seconds
    on the recorder's clock); ``line`` is its line number in the file (from 1)."""

    t: float
    value: Any
    key: Hashable = None
    time: float | None = None
    source: str | None = None
    partition: Hashable = None
    offset: int | None = None
    headers: Mapping[str, Any] | None = None
    line: int = 0


# -- encoding ------------------------------------------------------------------------

# One encoder for the common case: C-accelerated, compact, and strict about NaN.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ASCII_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def encode_header(
    *,
    created: float,
    source: str | None = None,
    pipeline: str | None = None,
    **meta: Any,
) -> bytes:
    """A header line (UTF-8, ending in a newline). ``meta`` adds JSON-able fields."""
    fields: dict[str, Any] = {"format": FORMAT, "version": VERSION, "created": created}
    if source is not None:
        fields["source"] = source
    if pipeline is not None:
        fields["pipeline"] = pipeline
    for name, value in meta.items():
        if name in fields or name in ("format", "version"):
            raise RecordEncodeError(f"header field {name!r} is reserved by the recording format")
        fields[name] = value
    # the header says where the events came from (names, meta, maybe a URL): redacted
    return _dump(redact_data(fields), None, "header")


def encode_event(
    t: float,
    value: Any,
    *,
    key: Hashable = None,
    time: float | None = None,
    source: str | None = None,
    partition: Hashable = None,
    offset: int | None = None,
    headers: Mapping[str, Any] | None = None,
    default: Default | None = None,
) -> bytes:
    """One event line (UTF-8, ending in a newline).

    Raises :class:`RecordEncodeError` naming the field when the event cannot be
    written so that a replay gives it back (see the module docstring).
    """
    fields: dict[str, Any] = {"t": t}
    binary: list[str] = []
    if type(value) is bytes:
        value = base64.b64encode(value).decode("ascii")
        binary.append("value")
    fields["value"] = value
    if key is not None:
        if type(key) is bytes:
            key = base64.b64encode(key).decode("ascii")
            binary.append("key")
        fields["key"] = key
    if time is not None:
        fields["time"] = time
    if source is not None:
        fields["source"] = source
    if partition is not None:
        fields["partition"] = partition
    if offset is not None:
        fields["offset"] = offset
    if headers is not None:
        encoded: dict[str, Any] = {}
        binary_headers: list[str] = []
        for name, header in headers.items():
            if not isinstance(name, str):
                raise RecordEncodeError(f"header names must be strings, got {name!r}")
            if type(header) is bytes:
                header = base64.b64encode(header).decode("ascii")
                binary_headers.append(name)
            encoded[name] = header
        fields["headers"] = encoded
        if binary_headers:
            fields["bytes_headers"] = binary_headers
    if binary:
        fields["bytes"] = binary
    return _dump(fields, default, "event")


def _dump(fields: dict[str, Any], default: Default | None, what: str) -> bytes:
    try:
        if default is None:
            text = _ENCODER.encode(fields)
        else:
            text = json.dumps(
                fields, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=default
            )
    except (TypeError, ValueError, RecursionError) as error:
        raise RecordEncodeError(_encode_failure(fields, error, default, what)) from error
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate (from a bad decode upstream) is not valid UTF-8:
        # escape this line as ASCII, which JSON reads back to the same string
        if default is None:
            text = _ASCII_ENCODER.encode(fields)
        else:
            text = json.dumps(fields, allow_nan=False, separators=(",", ":"), default=default)
        return (text + "\n").encode("ascii")


def _encode_failure(
    fields: dict[str, Any], error: BaseException, default: Default | None, what: str
) -> str:
    """Say which field could not be written, and what to do about it."""
    culprit = "the " + what
    for name, value in fields.items():
        try:
            json.dumps(value, allow_nan=False, default=default)
        except (TypeError, ValueError, RecursionError):
            culprit = f"field {name!r} of the {what}"
            break
    if isinstance(error, ValueError) and "JSON compliant" in str(error):
        return f"{culprit} holds NaN or an infinity, which JSON cannot represent"
    if isinstance(error, RecursionError):
        return f"{culprit} is nested too deeply (or refers to itself)"
    hint = (
        "make the default function return JSON-able data for it"
        if default is not None
        else "pass default= (a function returning JSON-able data, e.g. lambda m: m.model_dump())"
    )
    return f"{culprit} cannot be written as JSON: {error}; {hint}"


# -- decoding --------------------------------------------------------------------------

_EVENT_FIELDS: Final = ("t", "value")


def decode_line(text: str | bytes, *, path: str = "<recording>", line: int = 0) -> Header | Record:
    """Decode one line (with or without its newline) into a :class:`Header` or a
    :class:`Record`. Raises :class:`RecordingError` naming ``path`` and ``line``."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise RecordingError(path, line, f"not valid JSON ({error})", raw=text) from None
    except RecursionError:
        raise RecordingError(path, line, "JSON nested too deeply to read", raw=text) from None
    if not isinstance(data, dict):
        raise RecordingError(
            path, line, f"expected a JSON object, got {type(data).__name__}", raw=text
        )
    if "format" in data:
        return _header(data, path, line, text)
    return _record(data, path, line, text)


def _header(data: dict[str, Any], path: str, line: int, raw: Any) -> Header:
    def bad(reason: str) -> RecordingError:
        return RecordingError(path, line, reason, raw=raw)

    if data["format"] != FORMAT:
        raise bad(f"unknown format {data['format']!r}: expected {FORMAT!r}")
    version = data.get("version")
    if type(version) is not int:
        raise bad(f"header field 'version' must be an integer, got {version!r}")
    if version > VERSION:
        raise bad(
            f"written in recording format version {version}; this rxagent reads up to "
            f"version {VERSION}: upgrade rxagent to replay it"
        )
    created = data.get("created")
    if created is not None and not _is_number(created):
        raise bad(f"header field 'created' must be a number (epoch seconds), got {created!r}")
    source = data.get("source")
    pipeline = data.get("pipeline")
    for name, value in (("source", source), ("pipeline", pipeline)):
        if value is not None and not isinstance(value, str):
            raise bad(f"header field {name!r} must be a string, got {value!r}")
    known = {"format", "version", "created", "source", "pipeline"}
    meta = {k: v for k, v in data.items() if k not in known}
    return Header(version, created, source, pipeline, meta, line)


def _record(data: dict[str, Any], path: str, line: int, raw: Any) -> Record:
    def bad(reason: str) -> RecordingError:
        return RecordingError(path, line, reason, raw=raw)

    for name in _EVENT_FIELDS:
        if name not in data:
            raise bad(f"event line has no {name!r} field (and is not a header either)")
    t = data["t"]
    if not _is_number(t):
        raise bad(f"field 't' must be a number (epoch seconds), got {t!r}")
    time = data.get("time")
    if time is not None and not _is_number(time):
        raise bad(f"field 'time' must be a number (epoch seconds) or null, got {time!r}")
    source = data.get("source")
    if source is not None and not isinstance(source, str):
        raise bad(f"field 'source' must be a string or null, got {source!r}")
    offset = data.get("offset")
    if offset is not None and type(offset) is not int:
        raise bad(f"field 'offset' must be an integer or null, got {offset!r}")
    headers = data.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise bad(f"field 'headers' must be an object or null, got {headers!r}")
    value = data["value"]
    key = _hashable(data.get("key"))
    binary = data.get("bytes")
    if binary is not None:
        if not isinstance(binary, list):
            raise bad(f"field 'bytes' must be a list of field names, got {binary!r}")
        for name in binary:
            if name == "value":
                value = _unbase64(value, "value", bad)
            elif name == "key":
                key = _unbase64(key, "key", bad)
            else:
                raise bad(f"field 'bytes' names {name!r}; only 'value' and 'key' can be bytes")
    binary_headers = data.get("bytes_headers")
    if binary_headers is not None:
        if headers is None or not isinstance(binary_headers, list):
            raise bad("field 'bytes_headers' needs 'headers' and must be a list of header names")
        for name in binary_headers:
            if name not in headers:
                raise bad(f"field 'bytes_headers' names {name!r}, which is not in 'headers'")
            headers[name] = _unbase64(headers[name], f"header {name!r}", bad)
    return Record(
        float(t),
        value,
        key,
        None if time is None else float(time),
        source,
        _hashable(data.get("partition")),
        offset,
        headers,
        line,
    )


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _hashable(value: Any) -> Any:
    """JSON arrays become tuples, so a tuple key or partition comes back hashable."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _unbase64(value: Any, what: str, bad: Callable[[str], RecordingError]) -> bytes:
    if not isinstance(value, str):
        raise bad(f"{what} is marked as bytes but is not a base64 string: {value!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad(f"{what} is marked as bytes but is not valid base64 ({error})") from None


# -- reading a whole recording -----------------------------------------------------------


class RecordingReader:
    """Turns the lines of a recording into headers, records and errors, with no I/O.

    Feed it lines as the file gives them (bytes, *with* their newlines, so it can
    tell a line cut short by a crash from a complete one) and it returns, in
    order, a :class:`Header` or :class:`Record` per line, or a
    :class:`RecordingError` for a line it could not read: the caller chooses to
    raise it or to dead-letter it and go on. Blank lines are skipped.

    Besides bad JSON, it reports a first line that is not a header (once: the
    events after it are still read).
    """

    def __init__(self, path: str | os.PathLike[str] = "<recording>") -> None:
        self.path = str(path)
        self.line = 0
        self.headers: list[Header] = []

    def feed(self, lines: Iterable[bytes | str]) -> list[Header | Record | RecordingError]:
        """Read the next ``lines`` of a recording (the reader counts lines across calls);
        returns the headers and records decoded, and a :class:`RecordingError` in place
        of each line that could not be (a last line cut short says so).
        """
        out: list[Header | Record | RecordingError] = []
        for text in lines:
            self.line += 1
            line = self.line
            if not text.strip():
                continue
            try:
                item = decode_line(text, path=self.path, line=line)
            except RecordingError as error:
                complete = text.endswith(b"\n") if isinstance(text, bytes) else text.endswith("\n")
                if not complete:
                    error = RecordingError(
                        self.path,
                        line,
                        f"{error.reason}; the line is cut short (no newline at the end of the "
                        "file): the recorder probably stopped while writing it",
                        raw=text,
                    )
                if line == 1:
                    out.append(
                        RecordingError(
                            self.path,
                            line,
                            f"not an rxagent recording: the first line must be a header with "
                            f'"format": "{FORMAT}" ({error.reason})',
                            raw=text,
                        )
                    )
                else:
                    out.append(error)
                continue
            if isinstance(item, Header):
                self.headers.append(item)
            elif line == 1:
                out.append(
                    RecordingError(
                        self.path,
                        line,
                        f'not an rxagent recording: the first line must be a header with "format": '
                        f'"{FORMAT}", found an event line (was the file written by RecordSink?)',
                        raw=text,
                    )
                )
            out.append(item)
        return out


def read_recording(path: str | os.PathLike[str]) -> Iterator[Header | Record]:
    """Read a recording from disk, line by line (blocking: not for the event loop).

    Raises :class:`RecordingError` at the first line it cannot read, naming the
    file and the line.
    """
    reader = RecordingReader(Path(path))
    with Path(path).open("rb") as file:
        for line in file:
            for item in reader.feed((line,)):
                if isinstance(item, RecordingError):
                    raise item
                yield item
