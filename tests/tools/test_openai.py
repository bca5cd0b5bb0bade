"""The OpenAI call path: tool calls in Chat Completions and Responses formats,
run concurrently through a registry, every failure answered, none raised."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from rxagent.exceptions import ConfigurationError
from rxagent.tools import Tool, ToolRegistry, run_tool_calls, tool
from rxagent.tools.openai import parse_tool_call, result_text


class Quote(BaseModel):
    symbol: str
    px: float


@dataclass
class Point:
    x: int
    y: int


def make_registry(started: list[str] | None = None) -> ToolRegistry:
    registry = ToolRegistry()

    @registry.register
    async def quote(symbol: str) -> Quote:
        """A price."""
        if started is not None:
            started.append(symbol)
        await asyncio.sleep(0.01)
        return Quote(symbol=symbol, px=1.5)

    @registry.register
    def echo(text: str) -> str:
        return text

    @registry.register
    async def boom() -> None:
        raise RuntimeError("exchange down")

    @registry.register
    async def slow() -> None:
        await asyncio.sleep(10)

    @registry.register
    def point() -> Point:
        return Point(1, 2)

    registry.register(Tool(_sleepy, name="limited", timeout=0.01))
    return registry


async def _sleepy() -> None:
    await asyncio.sleep(10)


def chat(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def error_of(answer: dict[str, Any]) -> dict[str, Any]:
    content = answer.get("content", answer.get("output"))
    assert isinstance(content, str)
    parsed = json.loads(content)
    assert set(parsed) == {"error", "message"}
    return parsed


async def test_chat_calls_run_concurrently_and_answer_in_order() -> None:
    started: list[str] = []
    calls = [chat(f"c{i}", "quote", json.dumps({"symbol": s})) for i, s in enumerate("ABC")]
    calls.append(chat("c3", "echo", '{"text": "hi"}'))
    registry = make_registry(started)  # building the tools' models is not timed
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    answers = await run_tool_calls(registry, calls)
    assert loop.time() - t0 < 0.025  # three 10 ms calls at once, not one after another
    assert answers[:2] == [
        {"role": "tool", "tool_call_id": "c0", "content": '{"symbol":"A","px":1.5}'},
        {"role": "tool", "tool_call_id": "c1", "content": '{"symbol":"B","px":1.5}'},
    ]
    assert answers[3] == {"role": "tool", "tool_call_id": "c3", "content": "hi"}
    assert sorted(started) == ["A", "B", "C"]


async def test_every_kind_of_failure_is_an_answer_not_an_exception() -> None:
    calls: list[Any] = [
        chat("u", "nope", "{}"),
        chat("i", "quote", '{"symbol": 3}'),
        chat("j", "quote", "{not json"),
        chat("x", "quote", '{"symbol": "A", "extra": 1}'),
        chat("r", "boom", None),
        chat("t", "limited", ""),
        {"id": "m", "type": "function", "function": {"arguments": "{}"}},
        {"id": "k", "type": "custom", "custom": {"name": "quote", "input": "A"}},
        chat("ok", "echo", {"text": "still runs"}),
    ]
    answers = await run_tool_calls(make_registry(), calls)
    assert [a["tool_call_id"] for a in answers] == ["u", "i", "j", "x", "r", "t", "m", "k", "ok"]
    kinds = [error_of(a)["error"] for a in answers[:-1]]
    assert kinds == [
        "unknown_tool",
        "invalid_arguments",
        "invalid_arguments",
        "invalid_arguments",
        "tool_error",
        "timeout",
        "malformed_call",
        "malformed_call",
    ]
    assert "registered tools:" in error_of(answers[0])["message"]
    assert "symbol" in error_of(answers[1])["message"]
    assert "extra" in error_of(answers[3])["message"]
    assert error_of(answers[4])["message"] == "tool 'boom' failed: RuntimeError: exchange down"
    assert answers[-1]["content"] == "still runs"


async def test_the_call_timeout_bounds_each_call() -> None:
    [answer] = await run_tool_calls(make_registry(), [chat("s", "slow", "{}")], timeout=0.01)
    assert error_of(answer) == {
        "error": "timeout",
        "message": "tool 'slow' ran past the call timeout of 0.01s",
    }


async def test_max_concurrency_runs_calls_in_turn() -> None:
    calls = [chat(f"c{i}", "quote", {"symbol": str(i)}) for i in range(3)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    answers = await run_tool_calls(make_registry(), calls, max_concurrency=1)
    assert loop.time() - t0 >= 0.03
    assert len(answers) == 3


async def test_responses_api_function_calls_are_answered_as_outputs() -> None:
    items = [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "point",
            "arguments": "{}",
        },
        {"type": "function_call", "call_id": "call_2", "name": "nope", "arguments": "{}"},
        {"type": "message", "id": "msg_1", "content": []},
    ]
    answers = await run_tool_calls(make_registry(), items)
    assert answers[0] == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"x":1,"y":2}',
    }
    assert answers[1]["call_id"] == "call_2"
    assert error_of(answers[1])["error"] == "unknown_tool"
    assert len(answers) == 2


async def test_an_assistant_message_and_sdk_like_objects_are_accepted() -> None:
    class SdkCall(BaseModel):  # what the openai SDK's objects offer: model_dump()
        id: str
        type: str
        function: dict[str, str]

    message = {
        "role": "assistant",
        "tool_calls": [
            SdkCall(id="c", type="function", function={"name": "echo", "arguments": '{"text":"x"}'})
        ],
    }
    assert await run_tool_calls(make_registry(), message) == [
        {"role": "tool", "tool_call_id": "c", "content": "x"}
    ]
    assert await run_tool_calls(make_registry(), {"role": "assistant", "content": "hi"}) == []


def test_parse_and_result_text() -> None:
    call = parse_tool_call(chat("a", "echo", '{"text": "y"}'))
    assert (call.id, call.name, call.api) == ("a", "echo", "chat")
    with pytest.raises(ValueError, match="no id"):
        parse_tool_call({"type": "function", "function": {"name": "echo"}})
    with pytest.raises(ValueError, match="arguments must be JSON text"):
        parse_tool_call(chat("a", "echo", 3))
    assert result_text({"k": (1, Point(1, 2))}) == '{"k":[1,{"x":1,"y":2}]}'
    assert result_text(None) == "null"


async def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        await run_tool_calls(ToolRegistry(), [], timeout=0)
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        await run_tool_calls(ToolRegistry(), [], max_concurrency=0)


async def test_the_tool_stats_count_llm_calls() -> None:
    @tool
    def add(a: int, b: int) -> int:
        return a + b

    registry = ToolRegistry([add])
    answers = await run_tool_calls(
        registry, [chat("1", "add", '{"a": 1, "b": 2}'), chat("2", "add", "{}")]
    )
    assert answers[0]["content"] == "3"
    assert (add.stats.ok, add.stats.invalid) == (1, 1)
