"""RecordSink: what flowed through a pipeline ends up in the file, and nothing is lost silently."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rxagent import ConfigurationError, Pipeline, PipelineError, StateStore, sources
from rxagent import operators as ops
from rxagent.recording import Header, Record, read_recording
from rxagent.sinks import ListSink, MemoryDeadLetters
from rxagent.sinks.record import RecordSink


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def test_records_what_flowed_through_a_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ticks.jsonl"  # parents are created
    ticks = [{"sym": s, "px": float(i), "ts": 1000.0 + i} for i, s in enumerate("abcab")]
    clock = iter([50.0, 51.0, 52.0])
    recorder = RecordSink(path, clock=lambda: next(clock), meta={"feed": "test"})
    store = StateStore("px")
    pipeline = (
        Pipeline("live", sources.memory(ticks, name="ticks", batch_size=2))
        .pipe(ops.filter(lambda v: v["sym"] != "c"), ops.key_by("sym"), ops.event_time("ts"))
        .to(store.sink(), recorder)
    )
    status = await pipeline.run()
    assert status.completed
    assert status.flow["pending"] == 0, "every row ended, the recorder's too"

    header, *events = _lines(path)
    assert header["format"] == "rxagent-recording"
    assert header["version"] == 1
    assert (header["source"], header["pipeline"], header["sink"]) == ("ticks", "live", "record")
    assert header["feed"] == "test"
    assert isinstance(header["created"], float)
    # the filtered event never reached the sink; the rest arrive with all their metadata
    assert events == [
        {"t": 50.0, "value": ticks[0], "key": "a", "time": 1000.0, "source": "ticks", "offset": 0},
        {"t": 50.0, "value": ticks[1], "key": "b", "time": 1001.0, "source": "ticks", "offset": 1},
        {"t": 51.0, "value": ticks[3], "key": "a", "time": 1003.0, "source": "ticks", "offset": 3},
        {"t": 52.0, "value": ticks[4], "key": "b", "time": 1004.0, "source": "ticks", "offset": 4},
    ]
    assert recorder.written == 4
    assert status.stages[recorder.name]["out"] == 4
    assert recorder.describe()["written"] == 4


async def test_t_defaults_to_the_pipeline_clock(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    before = time.time()
    await Pipeline("p", sources.memory([1, 2])).to(RecordSink(path)).run()
    after = time.time()
    records = [item for item in read_recording(path) if isinstance(item, Record)]
    assert [r.value for r in records] == [1, 2]
    assert all(before <= r.t <= after for r in records)


async def test_unrecordable_events_are_dead_lettered_and_the_rest_recorded(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    values: list[Any] = [1, float("nan"), {"obj": object()}, 4]
    recorder = RecordSink(path)
    collected = ListSink()
    pipeline = Pipeline("p", sources.memory(values)).to(recorder, collected)
    status = await pipeline.run()
    assert status.completed
    assert status.flow["pending"] == 0
    records = [item.value for item in read_recording(path) if isinstance(item, Record)]
    assert records == [1, 4]
    assert len(collected.values) == 4, "the other sink still got every event"
    assert isinstance(pipeline.dead_letters, MemoryDeadLetters)
    letters = pipeline.dead_letters.letters
    assert [(dl.stage, dl.error_type) for dl in letters] == [
        ("record", "RecordEncodeError"),
        ("record", "RecordEncodeError"),
    ]
    assert "NaN" in letters[0].message
    assert "default=" in letters[1].message
    assert letters[0].event.position is not None
    assert letters[0].event.position.offset == 1
    assert recorder.rejected == 2


async def test_default_converts_what_json_cannot_hold(tmp_path: Path) -> None:
    class Tick:
        def __init__(self, px: float) -> None:
            self.px = px

    path = tmp_path / "r.jsonl"
    recorder = RecordSink(path, default=lambda o: {"px": o.px})
    await Pipeline("p", sources.memory([Tick(1.5)])).to(recorder).run()
    assert _lines(path)[1]["value"] == {"px": 1.5}


async def test_each_session_appends_with_its_own_header(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    await Pipeline("one", sources.memory(["a"])).to(RecordSink(path)).run()
    # a recorder that died mid-line leaves a partial line behind
    with path.open("ab") as file:
        file.write(b'{"t": 1.0, "val')
    await Pipeline("two", sources.memory(["b"])).to(RecordSink(path)).run()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 5
    assert lines[2] == b'{"t": 1.0, "val', "the partial line stays on its own line"
    assert json.loads(lines[3])["pipeline"] == "two"
    assert json.loads(lines[4])["value"] == "b"


async def test_append_false_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("old\n")
    await Pipeline("p", sources.memory(["new"])).to(RecordSink(path, append=False)).run()
    items = list(read_recording(path))
    assert isinstance(items[0], Header)
    assert [r.value for r in items if isinstance(r, Record)] == ["new"]


FULL_DISK = Path("/dev/full")  # every write fails with ENOSPC


@pytest.mark.skipif(not FULL_DISK.exists(), reason="needs /dev/full to simulate a full disk")
async def test_a_failed_write_fails_the_pipeline_loudly() -> None:
    pipeline = Pipeline("p", sources.memory([1, 2, 3])).to(RecordSink(FULL_DISK))
    with pytest.raises(PipelineError, match=r"record sink 'record' could not write to '/dev/full'"):
        await pipeline.run()


async def test_close_is_idempotent_and_a_later_batch_reopens(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    recorder = RecordSink(path)
    await Pipeline("p", sources.memory([1])).to(recorder).run()
    recorder.close()
    await recorder.aclose()
    await Pipeline("q", sources.memory([2])).to(recorder).run()
    items = list(read_recording(path))
    assert [type(i) for i in items] == [Header, Record, Header, Record]


def test_meta_cannot_overwrite_format_fields() -> None:
    with pytest.raises(ConfigurationError, match=r"meta may not set \['source'\]"):
        RecordSink("x.jsonl", meta={"source": "fake"})
