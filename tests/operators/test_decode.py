"""decode: validation once at the boundary; bad frames to dead letters with the reason."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from rxagent import ConfigurationError
from rxagent import operators as ops
from rxagent.testing import run


class Tick(BaseModel):
    sym: str
    px: float


async def test_json_into_a_model_in_one_call() -> None:
    frames = ['{"sym":"A","px":1}', b'{"sym":"B","px":"2.5"}']
    result = await run(frames, ops.decode(Tick))
    assert result.values == [Tick(sym="A", px=1), Tick(sym="B", px=2.5)]


async def test_bad_frames_go_to_dead_letters_with_position_and_reason() -> None:
    frames = ['{"sym":"A","px":1}', "}garbage{", '{"sym":"C"}', '{"sym":"D","px":4}']
    result = await run(frames, ops.decode(Tick, name="parse"))
    assert [t.sym for t in result.values] == ["A", "D"]
    messages = [d.message for d in result.dead_letters]
    assert messages[0].startswith("cannot decode message at memory@1: Invalid JSON")
    assert messages[1] == "cannot decode message at memory@2: px: Field required"
    assert {d.error_type for d in result.dead_letters} == {"DecodeError"}
    assert result.status.flow["pending"] == 0


async def test_plain_json_without_a_model() -> None:
    result = await run(['{"a": 1}', "[1, 2]", "nope"], ops.decode())
    assert result.values == [{"a": 1}, [1, 2]]
    assert "invalid JSON" in result.dead_letters[0].message


async def test_python_data_validated_into_a_type() -> None:
    result = await run([{"sym": "A", "px": "3"}, {"px": 1}], ops.decode(Tick, format="python"))
    assert result.values == [Tick(sym="A", px=3.0)]
    result = await run(["1", "x", 2], ops.decode(int, format="python"))
    assert result.values == [1, 2]


async def test_text_and_bytes() -> None:
    assert (await run([b"hi", "yo"], ops.decode(format="text"))).values == ["hi", "yo"]
    assert (await run(["hi"], ops.decode(format="bytes"))).values == [b"hi"]


def test_unknown_format() -> None:
    with pytest.raises(ConfigurationError, match="decode format must be"):
        ops.decode(format="xml")  # type: ignore[arg-type]


async def test_broken_frames_never_join_into_valid_values() -> None:
    from typing import Any

    result = await run(['{"a":1', '"b":2}', "3,4"], ops.decode(Any))
    assert result.values == []
    assert len(result.dead_letters) == 3
