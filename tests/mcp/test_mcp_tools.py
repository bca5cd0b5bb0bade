"""The server's tool and resource handling, called directly (no transport)."""

from __future__ import annotations

import asyncio
import json

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from rxagent import StateStore
from rxagent.exceptions import ConfigurationError
from rxagent.mcp import RxAgentMCP, key_uri, store_uri
from rxagent.tools import Tool, ToolRegistry


def _text(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


async def test_changes_since_reset_and_tool_failures() -> None:
    store = StateStore("s")
    store.set("a", 1)
    store.set("b", {"x": [1, 2]})

    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    def plain(n: int) -> str:
        return "n" * n

    server = RxAgentMCP(
        stores={"s": store}, tools=ToolRegistry([Tool(slow, timeout=0.05), Tool(plain)])
    )
    since = await server.call_tool("changes_since", {"store": "s", "version": 1})
    assert since.structured_content == {
        "store": "s", "since": 1, "version": 2, "as_of": since.structured_content["as_of"],
        "changed": {"b": {"x": [1, 2]}}, "deleted": [],
    }  # fmt: skip
    restarted = await server.call_tool("changes_since", {"store": "s", "version": 99})
    assert restarted.structured_content is not None
    assert restarted.structured_content["reset"] is True
    assert set(restarted.structured_content["changed"]) == {"a", "b"}
    # one store: the store argument may be left out
    assert not (await server.call_tool("changes_since", {})).is_error
    negative = await server.call_tool("changes_since", {"version": -1})
    assert negative.is_error
    assert "version" in _text(negative)

    timed_out = await server.call_tool("slow", None)
    assert timed_out.is_error
    assert "timeout" in _text(timed_out)
    text = await server.call_tool("plain", {"n": 3})
    assert _text(text) == "nnn"
    assert text.structured_content is None
    wrong_type = await server.call_tool("plain", {"n": "three"})
    assert wrong_type.is_error
    assert "n" in _text(wrong_type)


def test_key_uris_and_reads() -> None:
    store = StateStore("counts")
    store.set(3, "three")
    store.set(("a", 1), "tuple")
    server = RxAgentMCP(stores={"counts": store})
    assert key_uri("counts", 3) == "rxagent://state/counts/3"
    assert json.loads(server.read(key_uri("counts", 3)))["value"] == "three"
    assert json.loads(server.read(key_uri("counts", ("a", 1))))["value"] == "tuple"
    assert json.loads(server.read(store_uri("counts")))["entries"] == {
        "3": "three",
        '["a", 1]': "tuple",
    }
    # the store's order follows key hashes (str hashes vary per process): name both
    with pytest.raises(MCPError, match="no key '4'; existing keys include") as missing:
        server.read(key_uri("counts", 4))
    assert "'3'" in str(missing.value)
    assert """'["a", 1]'""" in str(missing.value)
    with pytest.raises(MCPError, match="unknown resource"):
        server.read("rxagent://state/counts/3/extra")
    empty = RxAgentMCP(stores={"e": StateStore("e")})
    data = json.loads(empty.read(store_uri("e")))
    assert data == {
        "store": "e", "version": 0, "as_of": None, "staleness_s": None, "keys": 0, "entries": {}
    }  # fmt: skip


def test_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="min_interval"):
        RxAgentMCP(min_interval=-1)
    with pytest.raises(ConfigurationError, match="empty"):
        RxAgentMCP().http_app(token="")


def test_a_whole_store_read_is_capped_to_the_most_recent_entries() -> None:
    store = StateStore("big")
    for i in range(10):
        store.set(f"k{i}", i)
    server = RxAgentMCP(stores={"big": store}, max_entries=3)
    data = json.loads(server.read(store_uri("big")))
    assert data["keys"] == 10
    assert data["entries"] == {"k9": 9, "k8": 8, "k7": 7}
    assert data["omitted"] == 7
    assert "rxagent://state/{store}/{key}" in data["hint"]
    # one key is still readable, and a small store is whole
    assert json.loads(server.read(key_uri("big", "k0")))["value"] == 0
    assert "omitted" not in json.loads(RxAgentMCP(stores={"big": store}).read(store_uri("big")))
    with pytest.raises(ConfigurationError, match="max_entries must be an int >= 1"):
        RxAgentMCP(stores={"big": store}, max_entries=0)
