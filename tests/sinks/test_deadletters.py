"""Dead letters: a failing event is written down with the reason, and the stream goes on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rxagent import JsonlDeadLetters, MemoryDeadLetters, Pipeline, sources
from rxagent import operators as ops
from rxagent.events import Event, Position
from rxagent.sinks import DeadLetter, DeadLetterSink, ListSink, read_dead_letters


def parse(value: dict[str, Any]) -> float:
    return float(value["px"])


async def test_a_raising_map_sends_the_event_to_the_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "dead" / "letters.jsonl"  # parents are created
    ticks = [{"px": "1.5"}, {"px": "n/a"}, {"qty": 3}, {"px": 4}]
    out = ListSink()
    before = time.time()
    with JsonlDeadLetters(path) as letters:
        pipeline = (
            Pipeline("ticks", sources.memory(ticks, name="feed"), dead_letters=letters)
            .pipe(ops.key_by(lambda v: "k"), ops.map(parse, name="parse"))
            .to(out)
        )
        status = await pipeline.run()
        assert letters.total == 2
    after = time.time()

    assert out.values == [1.5, 4.0], "the rest flowed on"
    assert status.completed
    assert status.flow["pending"] == 0, "dead-lettering ended the events"
    assert status.stages["parse"]["dead_lettered"] == 2

    bad_value, missing_field = read_dead_letters(path)
    assert bad_value["stage"] == "parse"
    assert bad_value["pipeline"] == "ticks"
    assert bad_value["error_type"] == "ValueError"
    assert bad_value["message"] == "could not convert string to float: 'n/a'"
    assert before <= bad_value["time"] <= after
    assert bad_value["event"] == {
        "value": {"px": "n/a"},
        "key": "k",
        "time": None,
        "position": {"source": "feed", "partition": None, "offset": 1},
        "headers": None,
    }
    assert missing_field["error_type"] == "KeyError"
    assert missing_field["message"] == "'px'"
    assert missing_field["event"]["position"]["offset"] == 2


async def test_each_letter_is_on_disk_before_the_file_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "letters.jsonl"
    letters = JsonlDeadLetters(path)
    try:
        await (
            Pipeline("p", sources.memory([0, 1]), dead_letters=letters)
            .pipe(ops.map(lambda v: 1 / v))
            .to(ListSink())
            .run()
        )
        # still open: a crash now must not lose the letter
        [letter] = read_dead_letters(path)
        assert letter["error_type"] == "ZeroDivisionError"
        assert letter["stage"] == "map"
    finally:
        letters.close()


async def test_values_json_cannot_hold_are_written_as_their_repr(tmp_path: Path) -> None:
    class Tick:
        def __repr__(self) -> str:
            return "Tick(px=1)"

    path = tmp_path / "letters.jsonl"
    with JsonlDeadLetters(path) as letters:

        def reject(value: Any) -> Any:
            raise RuntimeError("rejected")

        await (
            Pipeline("p", sources.memory([Tick()]), dead_letters=letters)
            .pipe(ops.tap(reject))
            .to(ListSink())
            .run()
        )
    [letter] = read_dead_letters(path)
    assert letter["event"]["value"] == "Tick(px=1)"
    assert letter["message"] == "rejected"


def test_letters_from_several_runs_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "letters.jsonl"
    event = Event({"a": "€"}, key="k", position=Position("s", 0, 7), headers={"h": "v"})
    for stage in ("one", "two"):
        with JsonlDeadLetters(path) as letters:
            assert isinstance(letters, DeadLetterSink)
            letters.put(DeadLetter.from_error(event, stage, "no reason", pipeline="p"))
    records = read_dead_letters(path)
    assert [r["stage"] for r in records] == ["one", "two"]
    # a string error is a rejection, not an exception
    assert records[0]["error_type"] == "Rejected"
    assert records[0]["message"] == "no reason"
    assert records[0]["event"]["value"] == {"a": "€"}
    assert records[0]["event"]["headers"] == {"h": "v"}
    assert records[0]["event"]["position"] == {"source": "s", "partition": 0, "offset": 7}


async def test_memory_dead_letters_keep_the_newest_and_tell_subscribers() -> None:
    letters = MemoryDeadLetters(maxlen=2)
    seen: list[DeadLetter] = []
    unsubscribe = letters.subscribe(seen.append)
    out = ListSink()
    await (
        Pipeline("p", sources.memory(range(5)), dead_letters=letters)
        .pipe(
            ops.filter(lambda v: 1 / (v % 2))  # even values raise
        )
        .to(out)
        .run()
    )
    unsubscribe()
    assert out.values == [1, 3]
    assert letters.total == 3
    assert [letter.event.value for letter in letters] == [2, 4], "the oldest went first"
    assert [letter.event.value for letter in seen] == [0, 2, 4]


def test_undecodable_text_is_written_not_lost(tmp_path: Path) -> None:
    # bytes decoded with errors="surrogateescape" hold lone surrogates, which UTF-8
    # cannot encode: just the kind of bad input that ends up in dead letters
    raw = b"px=\xff".decode("utf-8", "surrogateescape")
    path = tmp_path / "letters.jsonl"
    with JsonlDeadLetters(path) as letters:
        letters.put(DeadLetter.from_error(Event(raw), "decode", ValueError("bad utf-8")))
        assert letters.total == 1
    [letter] = read_dead_letters(path)
    assert letter["event"]["value"] == raw


def test_values_with_keys_json_cannot_name_are_written_as_repr(tmp_path: Path) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    path = tmp_path / "letters.jsonl"
    with JsonlDeadLetters(path) as letters:
        letters.put(DeadLetter.from_error(Event({(1, 2): "x"}), "s", "tuple key"))
        letters.put(DeadLetter.from_error(Event(cyclic), "s", "holds itself"))
        assert letters.total == 2
    first, second = read_dead_letters(path)
    assert first["event"]["value"] == "{(1, 2): 'x'}"
    assert second["event"]["value"] == "[[...]]"
