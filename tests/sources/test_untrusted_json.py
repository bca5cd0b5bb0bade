"""Deeply nested JSON from outside (a WebSocket message on a real server on
127.0.0.1, a replay file's line, a decode step's input) is a dead letter with a
clear reason, never a RecursionError that fails the pipeline or a value so deep that
the next stage's recursion fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _helpers import until
from websockets.asyncio.server import ServerConnection, serve

from rxagent import Pipeline, sources
from rxagent import operators as ops
from rxagent.operators.decode import MAX_JSON_DEPTH, JSONTooDeepError, json_loads
from rxagent.recording import encode_event, encode_header
from rxagent.sinks import ListSink, MemoryDeadLetters
from rxagent.sources.replay import replay
from rxagent.websocket.source import WebSocketSource

server_log = logging.getLogger("tests.wsserver")
server_log.setLevel(logging.WARNING)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_loads_bounds_depth_and_keeps_json_loads_values() -> None:
    assert json_loads(_nested(150)) == json_loads(_nested(150))
    assert json_loads('{"a": [1, 2.5, null, true, "\\u00e9"]}') == {"a": [1, 2.5, None, True, "é"]}
    assert json_loads('"\\ud800"') == "\ud800"  # what json.loads accepts still passes
    for text in (_nested(MAX_JSON_DEPTH + 5), _nested(900), _nested(100_000)):
        with pytest.raises(JSONTooDeepError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
            json_loads(text)
    # deep input after something only json.loads accepts: checked there too
    with pytest.raises(JSONTooDeepError):
        json_loads('["\\ud800", ' + _nested(500) + "]")
    with pytest.raises(ValueError, match="Expecting value"):
        json_loads("nope{")


@pytest.mark.parametrize("depth", [900, 100_000])
async def test_a_deeply_nested_websocket_message_is_a_dead_letter(depth: int) -> None:
    frames = ['{"seq": 1}', _nested(depth), '{"seq": 3}']

    async def handler(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, logger=server_log) as server:
        port = server.sockets[0].getsockname()[1]
        source = WebSocketSource(f"ws://127.0.0.1:{port}/feed", max_size=None)
        letters = MemoryDeadLetters()
        sink = ListSink()
        pipeline = Pipeline("ws", source, dead_letters=letters).to(sink)
        await pipeline.start()
        await until(lambda: len(sink.values) + len(letters.letters) == 3)
        status = await pipeline.stop()
    assert sink.values == [{"seq": 1}, {"seq": 3}]
    (letter,) = letters.letters
    assert letter.error_type == "DecodeError"
    assert letter.message == (
        f"cannot decode message at websocket@1: invalid JSON: nested deeper than "
        f"{MAX_JSON_DEPTH} levels"
    )
    assert status.source["bad_messages"] == 1


async def test_a_deeply_nested_replay_line_is_a_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    deep = b'{"t": 0.5, "value": ' + _nested(100_000).encode() + b"}\n"
    path.write_bytes(
        encode_header(created=0.0, source="feed")
        + encode_event(t=0.0, value="first")
        + deep
        + encode_event(t=1.0, value="last")
    )
    letters = MemoryDeadLetters()
    sink = ListSink()
    status = (
        await Pipeline("p", replay(path, on_error="dead_letter"), dead_letters=letters)
        .to(sink)
        .run()
    )
    assert status.completed
    assert sink.values == ["first", "last"]
    (letter,) = letters.letters
    assert letter.error_type == "RecordingError"
    assert letter.message == f"{path}:3: JSON nested too deeply to read"


async def test_a_decode_step_dead_letters_deep_json() -> None:
    letters = MemoryDeadLetters()
    sink = ListSink()
    raws = ['{"a": 1}', _nested(100_000), _nested(900), '{"a": 2}']
    await (
        Pipeline("p", sources.memory(raws), dead_letters=letters).pipe(ops.decode()).to(sink).run()
    )
    assert sink.values == [{"a": 1}, {"a": 2}]
    assert [d.message.endswith(f"nested deeper than {MAX_JSON_DEPTH} levels") for d in letters] == [
        True,
        True,
    ]
