"""The recording line format: what round-trips, what is refused, and how bad lines are named."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxagent.recording import (
    FORMAT,
    VERSION,
    Header,
    Record,
    RecordEncodeError,
    RecordingError,
    RecordingReader,
    decode_line,
    encode_event,
    encode_header,
    read_recording,
)

# JSON values as JSON defines them: what a recording promises to give back equal.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
# keys and partitions are hashable: scalars, or tuples of them
hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.tuples(inner, inner),
    max_leaves=6,
)
finite = st.floats(allow_nan=False, allow_infinity=False)


def _same(a: Any, b: Any) -> bool:
    """Equality that also tells -0.0 from 0.0 and 1 from 1.0 from True."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


@given(
    t=finite,
    value=json_values,
    key=hashables,
    time=st.none() | finite,
    source=st.none() | st.text(),
    partition=hashables,
    offset=st.none() | st.integers(),
    headers=st.none() | st.dictionaries(st.text(), json_values | st.binary(), max_size=3),
)
def test_event_lines_round_trip(
    t: float,
    value: Any,
    key: Any,
    time: float | None,
    source: str | None,
    partition: Any,
    offset: int | None,
    headers: dict[str, Any] | None,
) -> None:
    line = encode_event(
        t,
        value,
        key=key,
        time=time,
        source=source,
        partition=partition,
        offset=offset,
        headers=headers,
    )
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1, "one event, one line"
    line.decode("utf-8")  # always valid UTF-8, even for lone surrogates
    record = decode_line(line, path="r.jsonl", line=7)
    assert isinstance(record, Record)
    assert record.line == 7
    assert record.t == t
    assert _same(record.value, value)
    assert record.key == key
    assert record.time == time
    assert record.source == source
    assert record.partition == partition
    assert record.offset == offset
    assert record.headers == headers


@given(value=st.binary(), key=st.binary())
def test_bytes_come_back_as_bytes(value: bytes, key: bytes) -> None:
    record = decode_line(encode_event(1.0, value, key=key, headers={"h": b"\x00\xff"}))
    assert isinstance(record, Record)
    assert record.value == value
    assert record.key == key
    assert record.headers == {"h": b"\x00\xff"}


def test_lone_surrogate_is_escaped_and_read_back() -> None:
    text = "bad \udc80 decode"
    line = encode_event(1.0, text)
    assert line.isascii()
    record = decode_line(line)
    assert isinstance(record, Record)
    assert record.value == text


def test_non_ascii_text_stays_readable() -> None:
    assert "€".encode() in encode_event(1.0, {"px": "€"})


def test_tuples_inside_values_become_lists_as_documented() -> None:
    record = decode_line(encode_event(1.0, {"pair": (1, 2)}, key=("a", 1)))
    assert isinstance(record, Record)
    assert record.value == {"pair": [1, 2]}
    assert record.key == ("a", 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, {"px": -math.inf}, [1.0, math.nan]])
def test_nan_and_infinity_are_refused(bad: Any) -> None:
    with pytest.raises(RecordEncodeError, match="field 'value' of the event holds NaN"):
        encode_event(1.0, bad)


def test_unknown_objects_are_refused_with_advice() -> None:
    class Tick:
        px = 1.5

    with pytest.raises(RecordEncodeError, match=r"field 'value' .* Tick .* pass default="):
        encode_event(1.0, {"tick": Tick()})
    with pytest.raises(RecordEncodeError, match="field 'headers'"):
        encode_event(1.0, 1, headers={"h": Tick()})
    line = encode_event(1.0, {"tick": Tick()}, default=lambda o: {"px": o.px})
    record = decode_line(line)
    assert isinstance(record, Record)
    assert record.value == {"tick": {"px": 1.5}}


def test_self_referencing_value_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(RecordEncodeError, match="field 'value'"):
        encode_event(1.0, loop)


def test_header_round_trip_and_reserved_fields() -> None:
    line = encode_header(created=12.5, source="ticks", pipeline="p", sink="rec", host="h1")
    header = decode_line(line, line=1)
    assert header == Header(VERSION, 12.5, "ticks", "p", {"sink": "rec", "host": "h1"}, 1)
    assert json.loads(line)["format"] == FORMAT
    with pytest.raises(RecordEncodeError, match="reserved"):
        encode_header(created=1.0, **{"version": 3})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json\n", "not valid JSON"),
        (b"[1, 2]\n", "expected a JSON object, got list"),
        (b'{"value": 1}\n', "has no 't' field"),
        (b'{"t": "noon", "value": 1}\n', "field 't' must be a number"),
        (b'{"t": 1, "value": 1, "offset": 1.5}\n', "field 'offset' must be an integer"),
        (b'{"t": 1, "value": 1, "time": "x"}\n', "field 'time' must be a number"),
        (b'{"t": 1, "value": 1, "headers": [1]}\n', "field 'headers' must be an object"),
        (b'{"t": 1, "value": "@@", "bytes": ["value"]}\n', "not valid base64"),
        (b'{"format": "other", "version": 1}\n', "unknown format 'other'"),
        (b'{"format": "rxagent-recording", "version": 99}\n', "version 99; this rxagent"),
    ],
)
def test_bad_lines_name_file_line_and_reason(line: bytes, reason: str) -> None:
    with pytest.raises(RecordingError, match=reason) as caught:
        decode_line(line, path="feeds/ticks.jsonl", line=12)
    error = caught.value
    assert str(error).startswith("feeds/ticks.jsonl:12: ")
    assert (error.path, error.line, error.raw) == ("feeds/ticks.jsonl", 12, line)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_reader_reports_bad_lines_in_place_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    _write(
        path,
        [
            encode_header(created=0.0, source="s"),
            encode_event(1.0, "a", offset=0),
            b"\n",  # blank lines are skipped, and still counted
            b"garbage\n",
            encode_event(2.0, "b", offset=1),
            b'{"t": 3.0, "val',  # cut short by a crash
        ],
    )
    reader = RecordingReader(path)
    with path.open("rb") as file:
        items = reader.feed(file)
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["Header", "Record", "RecordingError", "Record", "RecordingError"]
    bad, cut = items[2], items[4]
    assert isinstance(bad, RecordingError)
    assert isinstance(cut, RecordingError)
    assert (bad.line, cut.line) == (4, 6)
    assert "cut short" in cut.reason
    assert f"{path}:6:" in str(cut)
    assert len(reader.headers) == 1


def test_read_recording_stops_at_the_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    _write(path, [encode_header(created=0.0), encode_event(1.0, "a"), b"{oops}\n"])
    seen: list[Any] = []
    with pytest.raises(RecordingError, match=r"r\.jsonl:3: not valid JSON"):
        seen.extend(read_recording(path))
    assert [type(item) for item in seen] == [Header, Record]


def test_a_file_without_header_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, [encode_event(1.0, "a"), encode_event(2.0, "b")])
    items = RecordingReader(path).feed(path.read_bytes().splitlines(keepends=True))
    error = items[0]
    assert isinstance(error, RecordingError)
    assert error.line == 1
    assert "not an rxagent recording" in error.reason
    # the events are still read: a missing header is reported once, not per line
    assert [item.value for item in items[1:] if isinstance(item, Record)] == ["a", "b"]


def test_empty_file_is_an_empty_recording(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert list(read_recording(path)) == []
