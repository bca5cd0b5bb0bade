"""Tools: schema from signatures, one validation path, sync and async calls,
the registry, and the state query tool against a real StateStore."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from rxagent.exceptions import (
    ConfigurationError,
    StateError,
    ToolArgumentsError,
    UnknownToolError,
)
from rxagent.state import StateStore
from rxagent.tools import Tool, ToolRegistry, state_query_tool, tool


@tool
async def weather(
    city: str,
    units: Literal["c", "f"] = "c",
    days: Annotated[int, Field(ge=1, le=7)] = 1,
) -> dict[str, Any]:
    """Current weather in a city.

    Uses the forecast service.

    Args:
        city: City name,
            for example "Oslo".
        units (str): Celsius or Fahrenheit.

    Returns:
        The forecast.
    """
    await asyncio.sleep(0)
    return {"city": city, "units": units, "days": days}


# -- schema and description ----------------------------------------------------------


def test_model_is_built_from_the_signature_and_docstring() -> None:
    schema = weather.json_schema()
    assert schema["required"] == ["city"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["city"]["type"] == "string"
    assert props["city"]["description"] == 'City name, for example "Oslo".'
    assert props["units"]["enum"] == ["c", "f"]
    assert props["units"]["default"] == "c"
    assert props["units"]["description"] == "Celsius or Fahrenheit."
    assert (props["days"]["minimum"], props["days"]["maximum"]) == (1, 7)
    assert weather.description == "Current weather in a city.\n\nUses the forecast service."


def test_openai_description_shape() -> None:
    described = weather.openai_tool()
    assert set(described) == {"type", "function"}
    assert described["type"] == "function"
    function = described["function"]
    assert set(function) == {"name", "description", "parameters"}
    assert function["name"] == "weather"
    assert function["parameters"]["type"] == "object"
    json.dumps(described)  # plain JSON, ready for any client


def test_decorator_options_override_name_and_description() -> None:
    @tool(name="get-quote", description="A quote.")
    def quote(symbol: str) -> float:
        return 1.0

    assert quote.name == "get-quote"
    assert quote.openai_tool()["function"]["description"] == "A quote."
    assert quote.args_model.__name__ == "GetQuoteArgs"


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Tool(lambda *a: None, name="varargs"), r"\*args and \*\*kwargs"),
        (lambda: Tool(lambda _hidden: None, name="under"), "'_hidden'"),
        (lambda: Tool(lambda json: None, name="shadow"), "shadows a pydantic"),
        (lambda: Tool(lambda x: None, name="bad name!"), "not usable by LLM clients"),
        (lambda: Tool(42), "needs a callable"),  # type: ignore[arg-type]
    ],
)
def test_unusable_functions_are_refused_with_the_reason(build: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        build()


class Order(BaseModel):
    symbol: str
    qty: int = Field(gt=0)


async def test_explicit_args_model_passes_the_instance() -> None:
    seen: list[Order] = []

    async def place(order: Order) -> str:
        seen.append(order)
        return f"{order.qty} {order.symbol}"

    place_order = Tool(place, args_model=Order, description="Place an order.")
    assert await place_order.invoke({"symbol": "ACME", "qty": 3}) == "3 ACME"
    assert isinstance(seen[0], Order)
    assert place_order.json_schema()["title"] == "Order"


async def test_explicit_args_model_passes_fields_as_keywords() -> None:
    def place(symbol: str, qty: int) -> str:
        return f"{qty} {symbol}"

    assert await Tool(place, args_model=Order).invoke(symbol="ACME", qty=2) == "2 ACME"


def test_explicit_args_model_must_fit_the_function() -> None:
    def place(symbol: str) -> None:
        return None

    with pytest.raises(ConfigurationError, match=r"no parameter for field.*'qty'"):
        Tool(place, args_model=Order)


# -- validation and invocation -------------------------------------------------------


async def test_invoke_with_dict_json_and_keywords_is_one_call() -> None:
    expected = {"city": "Oslo", "units": "f", "days": 1}
    assert await weather.invoke({"city": "Oslo", "units": "f"}) == expected
    assert await weather.invoke('{"city": "Oslo", "units": "f"}') == expected
    assert await weather.invoke(b'{"city": "Oslo", "units": "f"}') == expected
    assert await weather.invoke(city="Oslo", units="f") == expected


async def test_invalid_arguments_name_the_tool_and_every_bad_field() -> None:
    with pytest.raises(ToolArgumentsError) as caught:
        await weather.invoke({"units": "k", "days": 9, "colour": "red"})
    error = caught.value
    message = str(error)
    assert error.tool == "weather"
    assert "tool 'weather'" in message
    assert "city: Field required" in message
    assert "units: Input should be 'c' or 'f'" in message
    assert '"k"' in message
    assert "days: Input should be less than or equal to 7 (got 9)" in message
    assert "colour: Extra inputs are not permitted" in message
    assert {e["loc"][0] for e in error.errors} == {"city", "units", "days", "colour"}


async def test_bad_json_is_an_arguments_error_not_a_crash() -> None:
    with pytest.raises(ToolArgumentsError, match="Invalid JSON"):
        await weather.invoke("{not json")
    with pytest.raises(ToolArgumentsError, match="should be an object"):
        await weather.invoke("[1, 2]")


async def test_mixing_a_mapping_and_keywords_is_refused() -> None:
    with pytest.raises(ToolArgumentsError, match="not both"):
        await weather.invoke({"city": "Oslo"}, units="c")


async def test_call_refuses_unvalidated_arguments() -> None:
    with pytest.raises(ToolArgumentsError, match="use invoke"):
        await weather.call({"city": "Oslo"})  # type: ignore[arg-type]


async def test_validation_is_shared_by_llm_and_data_callers() -> None:
    """The model instance data code builds is checked by the same model."""

    class Other(BaseModel):
        city: str
        units: str = "x"

    with pytest.raises(ToolArgumentsError, match="units"):
        weather.validate(Other(city="Oslo"))
    model = weather.validate({"city": "Oslo"})
    assert weather.validate(model) is model


async def test_sync_function_runs_in_a_thread_without_blocking_the_loop() -> None:
    threads: list[int] = []

    @tool
    def blocking(seconds: float) -> str:
        """Blocks its thread."""
        threads.append(threading.get_ident())
        time.sleep(seconds)
        return "done"

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    tick_task = asyncio.create_task(ticker())
    try:
        assert await blocking.invoke(seconds=0.1) == "done"
    finally:
        tick_task.cancel()
    assert threads
    assert threads[0] != threading.get_ident()
    assert ticks >= 5, "the loop was blocked while the sync tool ran"
    assert not blocking.is_async
    assert weather.is_async


async def test_errors_of_the_function_propagate_and_are_counted() -> None:
    @tool
    async def broken(x: int) -> None:
        raise RuntimeError(f"broken on {x}")

    with pytest.raises(RuntimeError, match="broken on 3"):
        await broken.invoke(x=3)
    with pytest.raises(ToolArgumentsError):
        await broken.invoke(x="three")
    assert broken.stats.as_dict() == {"calls": 1, "ok": 0, "failed": 1, "invalid": 1, "running": 0}


async def test_callable_object_with_async_call_is_awaited() -> None:
    class Adder:
        __name__ = "adder"

        async def __call__(self, a: int, b: int) -> int:
            return a + b

    adder = Tool(Adder())
    assert adder.is_async
    assert await adder.invoke(a=1, b=2) == 3


# -- registry --------------------------------------------------------------------------


async def test_registry_lists_gets_and_dispatches_by_name() -> None:
    registry = ToolRegistry([weather])

    @registry.register
    def echo(text: str) -> str:
        """Echo the text."""
        return text

    assert isinstance(echo, Tool)
    assert registry.names() == ["weather", "echo"]
    assert [t.name for t in registry.list()] == ["weather", "echo"]
    assert "echo" in registry
    assert len(registry) == 2
    assert [t["function"]["name"] for t in registry.openai_tools()] == ["weather", "echo"]
    assert registry.get("echo") is echo
    assert await registry.invoke("echo", '{"text": "hi"}') == "hi"


def test_registry_unknown_name_lists_the_known_ones() -> None:
    registry = ToolRegistry([weather])
    with pytest.raises(UnknownToolError, match=r"no tool named 'wether'.*'weather'"):
        registry.get("wether")


def test_registry_refuses_duplicate_names() -> None:
    registry = ToolRegistry([weather])
    with pytest.raises(ConfigurationError, match="'weather' is registered already"):
        registry.register(weather)


# -- state query tool ----------------------------------------------------------------------


@pytest.fixture
def stores() -> tuple[StateStore, StateStore]:
    prices = StateStore("prices")
    prices.apply(
        [
            ("AAPL", {"px": 190.5}, 1_700_000_000.0, None),
            ("MSFT", {"px": 410.0}, None, None),
        ]
    )
    counts = StateStore("counts")
    counts.set(("eu", 1), 7)
    counts.set(42, 1)
    return prices, counts


async def test_state_query_reads_keys_with_version_and_time(
    stores: tuple[StateStore, StateStore],
) -> None:
    query = state_query_tool(*stores)
    result = await query.invoke({"store": "prices", "keys": ["AAPL", "MSFT"]})
    assert result["store"] == "prices"
    assert result["version"] == stores[0].version
    aapl = result["entries"]["AAPL"]
    assert aapl["value"] == {"px": 190.5}
    assert aapl["version"] == 1
    assert aapl["event_time"] == "2023-11-14T22:13:20.000Z"
    assert aapl["wall_time"].endswith("Z")
    json.dumps(result)


async def test_state_query_finds_non_string_keys_by_their_text(
    stores: tuple[StateStore, StateStore],
) -> None:
    query = state_query_tool(*stores)
    result = await query.invoke({"store": "counts", "key": '["eu", 1]', "keys": ["42"]})
    assert {k: e["value"] for k, e in result["entries"].items()} == {'["eu", 1]': 7, "42": 1}


async def test_state_query_without_key_gives_the_store_context(
    stores: tuple[StateStore, StateStore],
) -> None:
    query = state_query_tool(*stores)
    text = await query.invoke({"store": "prices", "max_chars": 500})
    lines = text.split("\n")
    assert lines[0].startswith("state 'prices' v1, 2 keys")
    assert {line.split(":")[0] for line in lines[1:]} == {"AAPL", "MSFT"}  # one version: any order
    short = await query.invoke({"store": "prices", "max_chars": 40})
    assert len(short) <= 40


async def test_state_query_unknown_store_is_a_validation_error_listing_stores(
    stores: tuple[StateStore, StateStore],
) -> None:
    query = state_query_tool(*stores)
    with pytest.raises(ToolArgumentsError, match="store: Input should be 'prices' or 'counts'"):
        await query.invoke({"store": "orders"})
    assert query.json_schema()["properties"]["store"]["enum"] == ["prices", "counts"]


async def test_state_query_unknown_key_names_it_and_existing_keys(
    stores: tuple[StateStore, StateStore],
) -> None:
    query = state_query_tool(*stores)
    with pytest.raises(StateError, match=r"state 'prices' has no key 'TSLA'.*'AAPL'"):
        await query.invoke({"store": "prices", "key": "TSLA"})


async def test_state_query_with_one_store_needs_no_store_argument() -> None:
    store = StateStore("only")
    store.set("k", 1)
    query = state_query_tool(store, name="read_only")
    assert (await query.invoke({"key": "k"}))["entries"]["k"]["value"] == 1
    empty = state_query_tool(StateStore("empty"))
    with pytest.raises(StateError, match="the store is empty"):
        await empty.invoke({"key": "k"})


async def test_state_query_sees_later_writes() -> None:
    store = StateStore("live")
    query = state_query_tool(store)
    store.set("x", 1)
    assert (await query.invoke({"key": "x"}))["entries"]["x"]["value"] == 1
    store.set("x", 2)
    assert (await query.invoke({"key": "x"}))["entries"]["x"]["value"] == 2


def test_state_query_tool_refuses_bad_stores() -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        state_query_tool()
    with pytest.raises(ConfigurationError, match="two stores named 'a'"):
        state_query_tool(StateStore("a"), StateStore("a"))


async def test_limits_are_shared_by_every_caller() -> None:
    """max_concurrency and timeout hold for LLM calls and pipeline activations alike."""
    from rxagent import Pipeline, ToolTimeoutError
    from rxagent.sinks.tools import ToolSink
    from rxagent.sources import memory
    from rxagent.tools import tool as make_tool

    running = 0
    peak = 0

    @make_tool(max_concurrency=2, timeout=0.5)
    async def slow(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.02 if n >= 0 else 5)
        finally:
            running -= 1
        return n

    sink = ToolSink(slow, args=lambda v: {"n": v}, policy="parallel", concurrency=8)
    pipeline = Pipeline("limits", memory(range(6))).to(sink)
    llm_calls = [slow.invoke({"n": i}) for i in range(4)]
    await asyncio.gather(pipeline.run(timeout=10), *llm_calls)
    assert peak == 2, f"{peak} calls ran at once; the tool allows 2"
    with pytest.raises(ToolTimeoutError, match=r"ran past its timeout of 0\.5s"):
        await slow.invoke({"n": -1})
    assert slow.stats.failed == 1
