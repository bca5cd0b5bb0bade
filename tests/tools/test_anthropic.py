"""Anthropic's format beside OpenAI's: tools described as Messages API ``tools``
entries, a response's ``tool_use`` blocks run through the registry and answered
with ``tool_result`` blocks, checked against the official ``anthropic`` SDK's own
types (responses built from its models; nothing is sent anywhere)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any, Literal

import pytest
from anthropic.types import (
    Message,
    MessageParam,
    TextBlock,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
    Usage,
)
from pydantic import BaseModel, TypeAdapter

from rxagent.exceptions import ConfigurationError
from rxagent.tools import Tool, ToolRegistry, tool
from rxagent.tools.anthropic import anthropic_tool, parse_tool_use, run_tool_uses


class Quote(BaseModel):
    symbol: str
    px: float


@tool
async def alert(symbol: str, px: float, side: Literal["buy", "sell"] = "buy") -> str:
    """Alert a trader about a move.

    Args:
        symbol: the instrument's ticker
        px: the price that crossed the line
    """
    return f"alerted {symbol} at {px:g}"


@tool
async def quote(symbol: str) -> Quote:
    """The last price of a symbol."""
    await asyncio.sleep(0.01)
    return Quote(symbol=symbol, px=1.5)


def make_registry(*extra: Tool) -> ToolRegistry:
    return ToolRegistry([alert, quote, *extra])


def response(*blocks: Any) -> Message:
    """A Messages API response as the SDK gives it."""
    return Message(
        id="msg_01",
        type="message",
        role="assistant",
        model="claude-sonnet-4-5",
        content=list(blocks),
        stop_reason="tool_use",
        stop_sequence=None,
        usage=Usage(input_tokens=412, output_tokens=96),
    )


def use(ident: str, name: str, arguments: dict[str, object]) -> ToolUseBlock:
    return ToolUseBlock(type="tool_use", id=ident, name=name, input=arguments)


def error_of(result: dict[str, Any]) -> dict[str, str]:
    assert result["is_error"] is True, result
    decoded: dict[str, str] = json.loads(result["content"])
    return decoded


# -- describing ----------------------------------------------------------------------


def test_tools_are_described_in_the_messages_api_format() -> None:
    registry = make_registry()
    described = registry.anthropic_tools()

    assert [t["name"] for t in described] == ["alert", "quote"]
    assert [t["description"] for t in described] == [
        "Alert a trader about a move.",
        "The last price of a symbol.",
    ]
    for entry, registered in zip(described, registry, strict=True):
        assert set(entry) == {"name", "description", "input_schema"}
        assert entry["input_schema"] == registered.json_schema()
        assert entry == anthropic_tool(registered)
        TypeAdapter(ToolParam).validate_python(entry)  # what the SDK's request accepts
    schema = described[0]["input_schema"]
    assert schema["type"] == "object"
    assert schema["required"] == ["symbol", "px"]
    assert schema["properties"]["symbol"]["description"] == "the instrument's ticker"

    # the same schema as OpenAI's format gives, beside it
    [openai_alert, _] = registry.openai_tools()
    assert openai_alert["function"]["parameters"] == described[0]["input_schema"]
    assert openai_alert["function"]["description"] == described[0]["description"]

    # fresh dicts: a caller editing one does not change the next
    described[0]["input_schema"]["properties"].clear()
    assert registry.anthropic_tools()[0]["input_schema"]["properties"]


# -- calling -------------------------------------------------------------------------


async def test_a_response_s_tool_use_blocks_are_answered_in_order() -> None:
    registry = make_registry()
    message = response(
        TextBlock(type="text", text="Let me alert the desk and check a price."),
        use("toolu_01", "alert", {"symbol": "AAPL", "px": 191.5}),
        use("toolu_02", "alert", {"symbol": "AAPL", "side": "hold"}),
        use("toolu_03", "weather", {"city": "Oslo"}),
        use("toolu_04", "quote", {"symbol": "MSFT"}),
    )

    results = await registry.call_anthropic(message)

    assert [r["tool_use_id"] for r in results] == ["toolu_01", "toolu_02", "toolu_03", "toolu_04"]
    assert all(r["type"] == "tool_result" for r in results)
    assert results[0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": "alerted AAPL at 191.5",
        "is_error": False,
    }
    invalid = error_of(results[1])
    assert invalid["error"] == "invalid_arguments"
    assert "px" in invalid["message"]
    assert "side" in invalid["message"]
    assert "'buy' or 'sell'" in invalid["message"]
    unknown = error_of(results[2])
    assert unknown == {
        "error": "unknown_tool",
        "message": "no tool named 'weather'; registered tools: 'alert', 'quote'",
    }
    assert results[3]["is_error"] is False
    assert json.loads(results[3]["content"]) == {"symbol": "MSFT", "px": 1.5}

    # the counters are the tool's own, as for every caller
    assert alert.stats.calls >= 1


async def test_results_are_valid_tool_result_blocks_of_the_next_user_message() -> None:
    registry = make_registry()
    message = response(
        use("toolu_01", "alert", {"symbol": "AAPL", "px": 191.5}),
        use("toolu_02", "alert", {"symbol": "AAPL"}),
    )
    results = await registry.call_anthropic(message)

    allowed = set(ToolResultBlockParam.__annotations__)
    for result in results:
        assert set(result) <= allowed
        assert TypeAdapter(ToolResultBlockParam).validate_python(result) == result
    conversation: list[dict[str, Any]] = [
        {"role": "user", "content": "Alert me about AAPL."},
        {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in message.content],
        },
        {"role": "user", "content": results},
    ]
    for turn in conversation:
        TypeAdapter(MessageParam).validate_python(turn)
    # and JSON carries them as they are, for the request body
    assert json.loads(json.dumps(conversation))[2]["content"] == results


async def test_dicts_content_lists_and_single_blocks_answer_alike() -> None:
    registry = make_registry()
    message = response(
        TextBlock(type="text", text="checking"),
        use("toolu_01", "alert", {"symbol": "AAPL", "px": 1}),
        use("toolu_02", "nope", {}),
    )
    from_sdk = await registry.call_anthropic(message)

    as_dict = message.model_dump()
    assert await registry.call_anthropic(as_dict) == from_sdk
    assert await registry.call_anthropic({"role": "assistant", "content": as_dict["content"]}) == (
        from_sdk
    )
    assert await registry.call_anthropic(message.content) == from_sdk
    assert await registry.call_anthropic(as_dict["content"]) == from_sdk
    assert await registry.call_anthropic(message.content[1]) == from_sdk[:1]
    assert await run_tool_uses(registry, message) == from_sdk

    # nothing to run: a text-only turn, text blocks, an empty list
    assert await registry.call_anthropic({"role": "assistant", "content": "Hello."}) == []
    assert await registry.call_anthropic([TextBlock(type="text", text="no tools")]) == []
    assert await registry.call_anthropic([]) == []


async def test_server_tool_blocks_and_thinking_are_not_run() -> None:
    registry = make_registry()
    blocks: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": "an alert it is", "signature": "sig"},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "tool_use", "id": "toolu_01", "name": "alert", "input": {"symbol": "A", "px": 2}},
    ]
    [result] = await registry.call_anthropic({"role": "assistant", "content": blocks})
    assert result["tool_use_id"] == "toolu_01"
    assert result["is_error"] is False


async def test_malformed_blocks_are_answered_not_raised() -> None:
    registry = make_registry()
    blocks: list[Any] = [
        {"type": "tool_use", "name": "alert", "input": {}},
        {"type": "tool_use", "id": "toolu_02", "input": {}},
        {"type": "tool_use", "id": "toolu_03", "name": "alert", "input": [1, 2]},
        {
            "type": "tool_use",
            "id": "toolu_04",
            "name": "alert",
            "input": '{"symbol": "A", "px": 3}',
        },
        42,
    ]
    results = await registry.call_anthropic(blocks)
    assert [r["tool_use_id"] for r in results] == ["", "toolu_02", "toolu_03", "toolu_04", ""]
    assert [error_of(r)["message"] for r in results if r["is_error"]] == [
        "tool_use block has no id string",
        "tool_use block 'toolu_02' has no tool name",
        "tool_use block 'toolu_03': input must be an object (or JSON text), got list",
        "a content block must be a mapping or an SDK object, got int",
    ]
    assert {error_of(r)["error"] for r in results if r["is_error"]} == {"malformed_call"}
    assert results[3] == {
        "type": "tool_result",
        "tool_use_id": "toolu_04",
        "content": "alerted A at 3",
        "is_error": False,
    }

    parsed = parse_tool_use(use("toolu_9", "quote", {"symbol": "X"}))
    assert (parsed.id, parsed.name, parsed.arguments) == ("toolu_9", "quote", {"symbol": "X"})
    with pytest.raises(ValueError, match="only tool_use blocks can be run, got type 'text'"):
        parse_tool_use(TextBlock(type="text", text="hi"))


async def test_failures_and_timeouts_are_error_results() -> None:
    async def boom() -> None:
        raise RuntimeError("exchange down")

    async def slow() -> None:
        await asyncio.sleep(10)

    async def limited() -> None:
        await asyncio.sleep(10)

    registry = make_registry(Tool(boom), Tool(slow), Tool(limited, timeout=0.01))
    message = response(
        use("toolu_1", "boom", {}),
        use("toolu_2", "slow", {}),
        use("toolu_3", "limited", {}),
    )
    boom_r, slow_r, limited_r = await registry.call_anthropic(message, timeout=0.05)
    assert error_of(boom_r) == {
        "error": "tool_error",
        "message": "tool 'boom' failed: RuntimeError: exchange down",
    }
    assert error_of(slow_r) == {
        "error": "timeout",
        "message": "tool 'slow' ran past the call timeout of 0.05s",
    }
    assert error_of(limited_r)["error"] == "timeout"
    assert "limited" in error_of(limited_r)["message"]


async def test_calls_run_concurrently_within_max_concurrency() -> None:
    active = 0
    peak = 0

    async def busy(n: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.05)  # every call starts before the first one ends
        finally:
            active -= 1
        return n

    registry = make_registry(Tool(busy))
    message = response(*(use(f"toolu_{n}", "busy", {"n": n}) for n in range(4)))

    results = await registry.call_anthropic(message)
    assert [r["content"] for r in results] == ["0", "1", "2", "3"]
    assert peak == 4  # all at once by default, as in OpenAI's format

    peak = 0
    results = await registry.call_anthropic(message, max_concurrency=2)
    assert [r["content"] for r in results] == ["0", "1", "2", "3"]
    assert peak == 2


async def test_limits_and_inputs_are_checked() -> None:
    registry = make_registry()
    with pytest.raises(ConfigurationError, match=r"run_tool_uses: timeout must be > 0 seconds"):
        await registry.call_anthropic([], timeout=0)
    with pytest.raises(ConfigurationError, match=r"run_tool_uses: max_concurrency must be an int"):
        await registry.call_anthropic([], max_concurrency=True)
    with pytest.raises(TypeError, match=r"expected a Messages API response.*got str"):
        await registry.call_anthropic("toolu_01")
    with pytest.raises(TypeError, match=r"expected a Messages API response.*got int"):
        await registry.call_anthropic(7)


async def test_openai_and_anthropic_answer_the_same_call_alike() -> None:
    """One running path: the same call gives the same text in both formats."""
    registry = make_registry()
    openai_calls = [
        {"id": "c1", "type": "function", "function": {"name": "alert", "arguments": "{}"}},
        {
            "id": "c2",
            "type": "function",
            "function": {"name": "quote", "arguments": '{"symbol": "X"}'},
        },
    ]
    anthropic_blocks = response(use("c1", "alert", {}), use("c2", "quote", {"symbol": "X"}))
    openai_answers = await registry.call_openai(openai_calls)
    anthropic_results = await registry.call_anthropic(anthropic_blocks)
    assert [a["content"] for a in openai_answers] == [r["content"] for r in anthropic_results]
    assert [r["is_error"] for r in anthropic_results] == [True, False]


def test_the_sdk_is_not_imported_by_rxagent() -> None:
    code = (
        "import sys, rxagent, rxagent.tools.anthropic, rxagent.tools.openai\n"
        "assert 'anthropic' not in sys.modules, 'the anthropic SDK was imported'\n"
        "assert 'openai' not in sys.modules, 'the openai SDK was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
