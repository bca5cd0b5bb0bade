"""The tools an agent offers, by name: what an LLM client is given and dispatches to."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from ..exceptions import ConfigurationError, UnknownToolError
from .tool import Tool

__all__ = ["ToolRegistry"]


class ToolRegistry:
    """Tools by unique name.

    Give the LLM :meth:`openai_tools`; when it answers with a tool call, run
    ``await registry.invoke(call.name, call.arguments)`` (arguments as the JSON
    text the client returns, or a dict). Register tools up front or as a
    decorator::

        registry = ToolRegistry()

        @registry.register
        async def weather(city: str) -> dict: ...
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.register(item)

    def register(self, item: Tool | Callable[..., Any], /) -> Tool:
        """Add a tool (a plain function becomes one, as with ``@tool``); returns the tool."""
        registered = item if isinstance(item, Tool) else Tool(item)
        if registered.name in self._tools:
            raise ConfigurationError(
                f"a tool named {registered.name!r} is registered already; tool names must be "
                "unique for the LLM to tell them apart (pass name=... to Tool or @tool)"
            )
        self._tools[registered.name] = registered
        return registered

    def get(self, name: str) -> Tool:
        """The tool called ``name``; :class:`UnknownToolError` lists the known names."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(map(repr, sorted(self._tools))) or "none"
            raise UnknownToolError(
                f"no tool named {name!r}; registered tools: {known}", tool=name
            ) from None

    def list(self) -> builtins.list[Tool]:
        """The registered tools, in registration order."""
        return list(self._tools.values())

    def names(self) -> builtins.list[str]:
        return list(self._tools)

    def openai_tools(self) -> builtins.list[dict[str, Any]]:
        """Every tool as an OpenAI chat-completions ``tools`` entry."""
        return [t.openai_tool() for t in self._tools.values()]

    async def invoke(
        self, name: str, arguments: Mapping[str, Any] | BaseModel | str | bytes | None = None
    ) -> Any:
        """Validate ``arguments`` and call the tool named ``name``."""
        return await self.get(name).invoke(arguments)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"<ToolRegistry {sorted(self._tools)}>"
