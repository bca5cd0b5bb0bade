"""Tools in Anthropic's Messages API format, and running its ``tool_use`` blocks.

No ``anthropic`` package needed (``pip install 'rxagent[anthropic]'`` for the
SDK): tools are described as plain dicts, and a response is read as the SDK's
objects (dumped with ``model_dump()``) or plain dicts alike.

- :func:`anthropic_tool` describes a tool as a ``tools`` entry of a Messages API
  request: ``{"name", "description", "input_schema"}``, the schema being the
  tool's own JSON schema (:meth:`Tool.json_schema`);
- :func:`run_tool_uses` runs the ``tool_use`` blocks of a response::

      {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}

  and answers each with a ``tool_result`` block, in the order of the blocks::

      {"type": "tool_result", "tool_use_id": "toolu_1", "content": "...", "is_error": False}

  to be sent back as the content of the next ``user`` message.

The calls run as in OpenAI's format (:mod:`rxagent.tools.calls`): validated by
the tool's own model, called through :meth:`Tool.call` (the tool's ``timeout``
and ``max_concurrency`` apply), all concurrently. A call that cannot be made or
fails never raises: its block has ``"is_error": True`` and, as content, JSON
``{"error": KIND, "message": ...}`` with ``KIND`` one of ``"malformed_call"``,
``"unknown_tool"``, ``"invalid_arguments"``, ``"timeout"`` or ``"tool_error"``,
so the model can correct itself. A successful result is its text when the tool
returned a ``str``, else compact JSON.

Only client tools' ``tool_use`` blocks are run: text, thinking and server tool
blocks (``server_tool_use`` and their results, run by the API itself) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .calls import (
    CallOutcome,
    ToolLookup,
    as_mapping,
    check_call_limits,
    error_outcome,
    run_calls,
)
from .tool import Tool

__all__ = ["ToolUse", "anthropic_tool", "parse_tool_use", "run_tool_uses"]


def anthropic_tool(tool: Tool) -> dict[str, Any]:
    """``tool`` as a Messages API ``tools`` entry: ``name``, ``description`` and
    ``input_schema`` (the tool's JSON schema, a fresh dict each call)."""
    return {"name": tool.name, "description": tool.description, "input_schema": tool.json_schema()}


@dataclass(frozen=True, slots=True)
class ToolUse:
    """One ``tool_use`` block: its ``id``, the tool ``name`` and ``arguments``
    (the block's ``input``: a mapping, JSON text or ``None``)."""

    id: str
    name: str
    arguments: Any

    def answer(self, outcome: CallOutcome) -> dict[str, Any]:
        """The ``tool_result`` block carrying ``outcome`` back."""
        return {
            "type": "tool_result",
            "tool_use_id": self.id,
            "content": outcome.text,
            "is_error": not outcome.ok,
        }


class _MalformedUse(ValueError):
    def __init__(self, message: str, use_id: str) -> None:
        super().__init__(message)
        self.use_id = use_id


def parse_tool_use(block: Any) -> ToolUse:
    """A :class:`ToolUse` from a ``tool_use`` block (a dict, or the SDK's
    ``ToolUseBlock``).

    Raises :class:`ValueError` saying what is missing or of the wrong type.
    """
    data = as_mapping(block)
    if data is None:
        raise _MalformedUse(
            f"a content block must be a mapping or an SDK object, got {type(block).__name__}", ""
        )
    use_id = data.get("id")
    ident = use_id if isinstance(use_id, str) else ""
    if data.get("type") != "tool_use":
        raise _MalformedUse(
            f"content block {ident or use_id!r}: only tool_use blocks can be run, "
            f"got type {data.get('type')!r}",
            ident,
        )
    if not ident:
        raise _MalformedUse("tool_use block has no id string", ident)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _MalformedUse(f"tool_use block {ident!r} has no tool name", ident)
    arguments = data.get("input")
    if arguments is not None and not isinstance(arguments, str | bytes | Mapping):
        raise _MalformedUse(
            f"tool_use block {ident!r}: input must be an object (or JSON text), "
            f"got {type(arguments).__name__}",
            ident,
        )
    return ToolUse(ident, name, arguments)


async def run_tool_uses(
    registry: ToolLookup,
    message: Any,
    *,
    timeout: float | None = None,
    max_concurrency: int | None = None,
) -> list[dict[str, Any]]:
    """Run the ``tool_use`` blocks of a Messages API response through
    ``registry``; one ``tool_result`` block per ``tool_use`` block, in order.

    ``message`` is the response (the SDK's ``Message``, or a dict with a
    ``content`` list, such as the assistant turn of the conversation), its
    ``content`` list, or one block; blocks are the SDK's objects or dicts, and
    those that are not ``tool_use`` blocks are skipped. ``timeout`` bounds each
    call in seconds on top of the tool's own; ``max_concurrency`` bounds how many
    run at once (default: all). Send the results back as they are::

        results = await run_tool_uses(registry, response)
        messages += [{"role": "assistant", "content": response.content},
                     {"role": "user", "content": results}]

    Never raises for one bad call (see the module docstring for the error
    results); cancelling the caller cancels every call.
    :meth:`ToolRegistry.call_anthropic` is the same as a method.
    """
    check_call_limits("run_tool_uses", timeout, max_concurrency)
    answering: list[ToolUse] = []  # who answers each call: the call, or a stand-in
    calls: list[ToolUse | CallOutcome] = []
    for block in _content_blocks(message):
        try:
            use = parse_tool_use(block)
        except _MalformedUse as error:
            answering.append(ToolUse(error.use_id, "", None))
            calls.append(error_outcome("malformed_call", error))
        else:
            answering.append(use)
            calls.append(use)
    outcomes = await run_calls(registry, calls, timeout=timeout, max_concurrency=max_concurrency)
    return [use.answer(outcome) for use, outcome in zip(answering, outcomes, strict=True)]


def _content_blocks(message: Any) -> list[Any]:
    """The blocks of ``message`` that ask for a client tool call (or are no block
    at all, to be answered as malformed)."""
    if isinstance(message, str | bytes):
        raise TypeError(
            "run_tool_uses: expected a Messages API response, its content list or a "
            f"tool_use block, got {type(message).__name__}"
        )
    data = as_mapping(message)
    if data is not None:
        if "content" in data and data.get("type", "message") == "message":
            content = data["content"]
            if isinstance(content, str):  # a turn of text only
                return []
            message = content
        else:  # a single block
            message = [message]
    if not isinstance(message, Iterable):
        raise TypeError(
            "run_tool_uses: expected a Messages API response, its content list or a "
            f"tool_use block, got {type(message).__name__}"
        )
    return [block for block in message if _asks_for_a_call(block)]


def _asks_for_a_call(block: Any) -> bool:
    data = as_mapping(block)
    return data is None or data.get("type") == "tool_use"
