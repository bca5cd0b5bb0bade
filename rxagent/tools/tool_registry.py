"""The tools an agent offers, by name: what an LLM client is given and dispatches to."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from ..exceptions import ConfigurationError, UnknownToolError
from .anthropic import anthropic_tool, run_tool_uses
from .openai import run_tool_calls
from .tool import Tool

__all__ = ["ToolRegistry"]


class ToolRegistry:
    """Tools by unique name: what an LLM is offered and what its calls run.

    Offer the tools in the API's format, then run the calls the model answers
    with, in the same format:

    - OpenAI (Chat Completions or Responses): :meth:`openai_tools` in the
      request's ``tools``; ``await registry.call_openai(message.tool_calls)``
      gives the tool messages to append;
    - Anthropic (Messages API): :meth:`anthropic_tools` in the request's
      ``tools``; ``await registry.call_anthropic(response)`` gives the
      ``tool_result`` blocks of the next user message.

    Either way every call is validated by its tool's model and run concurrently
    with the tool's limits, and a bad call is answered with the reason instead of
    raising. To call one tool directly, ``await registry.invoke(name, arguments)``
    (arguments as JSON text or a dict). Register tools up front or as a
    decorator::

        registry = ToolRegistry()

        @registry.register
        async def weather(city: str) -> dict: ...
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        """A registry holding ``tools`` (tools or plain functions), registered in order."""
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
        """The registered tools' names, in registration order."""
        return list(self._tools)

    def openai_tools(self) -> builtins.list[dict[str, Any]]:
        """Every tool as an OpenAI ``tools`` entry, in registration order, for a
        Chat Completions request: ``{"type": "function", "function": {"name",
        "description", "parameters"}}``, ``parameters`` being the tool's JSON
        schema (:meth:`Tool.openai_tool`). A fresh list of fresh dicts each call.
        """
        return [t.openai_tool() for t in self._tools.values()]

    def anthropic_tools(self) -> builtins.list[dict[str, Any]]:
        """Every tool as an Anthropic Messages API ``tools`` entry, in
        registration order: ``{"name", "description", "input_schema"}``,
        ``input_schema`` being the tool's JSON schema
        (:func:`rxagent.tools.anthropic.anthropic_tool`). A fresh list of fresh
        dicts each call."""
        return [anthropic_tool(t) for t in self._tools.values()]

    async def call_openai(
        self,
        tool_calls: Iterable[Any] | Mapping[str, Any],
        *,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Run an OpenAI response's tool calls; one answer per call, in order.

        ``tool_calls`` is a Chat Completions message's ``tool_calls`` (or the
        message), or Responses API output items; dicts or the SDK's objects. The
        answers are tool messages (or ``function_call_output`` items) to append to
        the conversation; a call that cannot be made or fails is answered with
        ``{"error": KIND, "message": ...}`` instead of raising.
        ``timeout`` bounds each call in seconds on top of the tool's own;
        ``max_concurrency`` bounds how many run at once (default: all). See
        :func:`rxagent.tools.run_tool_calls`.
        """
        return await run_tool_calls(
            self, tool_calls, timeout=timeout, max_concurrency=max_concurrency
        )

    async def call_anthropic(
        self,
        message: Any,
        *,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Run an Anthropic response's ``tool_use`` blocks; one ``tool_result``
        block per ``tool_use`` block, in order.

        ``message`` is the SDK's ``Message`` (or a dict with a ``content`` list),
        its content list, or one block; the SDK's objects and dicts alike. Send
        the blocks back as the next user message's content; a call that cannot be
        made or fails gets ``"is_error": True`` and the reason as its content
        instead of raising. ``timeout`` and ``max_concurrency`` as for
        :meth:`call_openai`. See :func:`rxagent.tools.anthropic.run_tool_uses`.
        """
        return await run_tool_uses(self, message, timeout=timeout, max_concurrency=max_concurrency)

    async def invoke(
        self, name: str, arguments: Mapping[str, Any] | BaseModel | str | bytes | None = None
    ) -> Any:
        """Validate ``arguments`` and call the tool named ``name``; returns its
        result. Raises :class:`UnknownToolError` for a name not registered,
        :class:`ToolArgumentsError` for invalid arguments and whatever the tool
        raises (:meth:`Tool.invoke`); the ``call_*`` methods answer those instead."""
        return await self.get(name).invoke(arguments)

    def __contains__(self, name: object) -> bool:
        """Whether a tool called ``name`` is registered."""
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        """The registered tools, in registration order (a copy: registering while
        iterating is safe)."""
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        """How many tools are registered."""
        return len(self._tools)

    def __repr__(self) -> str:
        return f"<ToolRegistry {sorted(self._tools)}>"
