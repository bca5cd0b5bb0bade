"""The LangChain adapter, driven through langchain-core's own interface."""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Literal

import langchain_core  # noqa: F401 - a dev dependency: missing, the suite fails, never skips
import pytest
from pydantic import BaseModel, Field, ValidationError

from rxagent.adapters.langchain import (
    StateStoreRetriever,
    as_langchain_tool,
    as_langchain_tools,
    state_reader_tool,
)
from rxagent.exceptions import ConfigurationError
from rxagent.state import StateStore
from rxagent.tools import Tool, ToolRegistry, tool


@tool
async def weather(city: str, units: Literal["c", "f"] = "c") -> dict[str, str]:
    """Current weather in a city.

    Args:
        city: City name.
        units: Celsius or Fahrenheit.
    """
    await asyncio.sleep(0)
    return {"city": city, "units": units}


class Order(BaseModel):
    symbol: str
    qty: int = Field(gt=0)


def place(args: Order) -> str:
    return f"{args.qty} {args.symbol}"


def test_the_schema_is_the_tools_model() -> None:
    adapted = as_langchain_tool(weather)
    assert adapted.name == "weather"
    assert adapted.description == "Current weather in a city."
    assert adapted.args_schema is weather.args_model
    assert adapted.args == weather.json_schema()["properties"]


async def test_ainvoke_and_invoke_go_through_the_tool() -> None:
    adapted = as_langchain_tool(weather)
    calls = weather.stats.calls
    assert await adapted.ainvoke({"city": "Oslo"}) == {"city": "Oslo", "units": "c"}
    # a sync invoke from inside a running loop runs on a loop of its own
    assert adapted.invoke({"city": "Bergen", "units": "f"}) == {"city": "Bergen", "units": "f"}
    assert weather.stats.calls == calls + 2


def test_sync_invoke_without_a_loop_and_a_model_taking_tool() -> None:
    order = as_langchain_tool(Tool(place, args_model=Order, description="Place an order."))
    assert order.invoke({"symbol": "AAPL", "qty": 3}) == "3 AAPL"


def test_invalid_arguments_fail_in_langchains_validation() -> None:
    order = as_langchain_tool(Tool(place, args_model=Order, description="Place an order."))
    with pytest.raises(ValidationError, match="qty"):
        order.invoke({"symbol": "AAPL", "qty": 0})
    handled = as_langchain_tool(
        Tool(place, args_model=Order, description="Place an order."),
        handle_validation_error=True,
    )
    assert "validation error" in handled.invoke({"symbol": "AAPL"}).lower()


async def test_a_tool_call_message_round_trip() -> None:
    adapted = as_langchain_tool(weather)
    message = await adapted.ainvoke(
        {"type": "tool_call", "id": "call_1", "name": "weather", "args": {"city": "Oslo"}}
    )
    assert message.tool_call_id == "call_1"
    assert "Oslo" in message.content


def test_a_registry_becomes_a_list_of_tools() -> None:
    registry = ToolRegistry([weather, Tool(place, args_model=Order, description="Order.")])
    assert [t.name for t in as_langchain_tools(registry)] == ["weather", "place"]
    with pytest.raises(ConfigurationError, match="ToolRegistry"):
        as_langchain_tools([weather])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="rxagent Tool"):
        as_langchain_tool(place)  # type: ignore[arg-type]


def make_store() -> StateStore:
    now = [1000.0]
    store = StateStore("prices", clock=lambda: now[0])
    store.set("AAPL", {"px": 190.5})
    now[0] = 1001.0
    store.set("MSFT", {"px": 410.0})
    now[0] = 1002.0
    store.set("NVDA", {"px": 120.0, "note": "halted"})
    now[0] = 1005.0
    return store


def test_the_state_reader_tool_reads_keys_and_summaries() -> None:
    reader = state_reader_tool(make_store(), name="read_prices")
    assert reader.name == "read_prices"
    result = reader.invoke({"key": "AAPL"})
    assert result["entries"]["AAPL"]["value"] == {"px": 190.5}
    summary = reader.invoke({})
    assert summary.startswith("state 'prices' v3, 3 keys")
    with pytest.raises(ValidationError):
        reader.invoke({"store": "nope"})


async def test_the_retriever_returns_entries_as_documents() -> None:
    retriever = StateStoreRetriever(stores=[make_store()], k=2)
    recent = retriever.invoke("")
    assert [d.metadata["key"] for d in recent] == ["NVDA", "MSFT"]
    assert recent[0].page_content == 'NVDA: {"px":120.0,"note":"halted"} (3.0s ago)'
    assert recent[0].metadata["store"] == "prices"
    assert recent[0].metadata["version"] == 3
    found = await retriever.ainvoke("aapl")
    assert [d.metadata["key"] for d in found] == ["AAPL"]
    assert [d.metadata["key"] for d in retriever.invoke("halted msft")] == ["NVDA", "MSFT"]


def test_without_langchain_core_the_import_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name == "langchain_core" or name.startswith("langchain_core."):
            monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "langchain_core", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "rxagent.adapters.langchain")
    with pytest.raises(ImportError, match=r"rxagent\[langchain\]"):
        importlib.import_module("rxagent.adapters.langchain")
