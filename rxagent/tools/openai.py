"""Running an LLM's tool calls, in OpenAI's formats, through a :class:`ToolRegistry`.

No ``openai`` package needed: the calls are plain dicts (or the SDK's objects,
which are dumped to dicts). Two input formats are understood, per call:

- Chat Completions ``message.tool_calls`` entries::

      {"id": "call_1", "type": "function",
       "function": {"name": "weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}

  answered by a tool message ``{"role": "tool", "tool_call_id": "call_1",
  "content": "..."}``;
- Responses API ``function_call`` output items::

      {"type": "function_call", "call_id": "call_1", "name": "weather",
       "arguments": "{\\"city\\": \\"Oslo\\"}"}

  answered by ``{"type": "function_call_output", "call_id": "call_1", "output": "..."}``.

Every call is validated by the tool's own model and called through
:meth:`Tool.call` (the tool's ``timeout`` and ``max_concurrency`` apply, as for a
pipeline), all calls running concurrently. A call that cannot be made or fails
never raises: its answer says what went wrong, as JSON
``{"error": KIND, "message": ...}`` with ``KIND`` one of ``"malformed_call"``,
``"unknown_tool"``, ``"invalid_arguments"``, ``"timeout"`` or ``"tool_error"``,
so the model can correct itself. A successful result is its text when the tool
returned a ``str``, else compact JSON (pydantic models and dataclasses dumped).
The running is :mod:`rxagent.tools.calls`'s, shared with Anthropic's format
(:mod:`rxagent.tools.anthropic`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .calls import (
    CallOutcome,
    ToolLookup,
    as_mapping,
    check_call_limits,
    error_outcome,
    result_text,
    run_calls,
)

__all__ = ["ToolCall", "parse_tool_call", "result_text", "run_tool_calls"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call, whichever API it came from: ``id`` (the ``tool_call_id``
    or ``call_id``), the tool ``name``, ``arguments`` as given (JSON text, a
    mapping or ``None``) and the ``api`` to answer in (``"chat"`` or ``"responses"``)."""

    id: str
    name: str
    arguments: Any
    api: Literal["chat", "responses"] = "chat"

    def answer(self, content: str) -> dict[str, Any]:
        """The message (chat) or input item (responses) carrying ``content`` back."""
        if self.api == "responses":
            return {"type": "function_call_output", "call_id": self.id, "output": content}
        return {"role": "tool", "tool_call_id": self.id, "content": content}


class _MalformedCall(ValueError):
    def __init__(self, message: str, call_id: str, api: Literal["chat", "responses"]) -> None:
        super().__init__(message)
        self.call_id = call_id
        self.api = api


def parse_tool_call(call: Any) -> ToolCall:
    """A :class:`ToolCall` from a Chat Completions tool call or a Responses API
    ``function_call`` item (a dict, or an SDK object with ``model_dump()``).

    Raises :class:`ValueError` saying what is missing or of the wrong type.
    """
    data = as_mapping(call)
    if data is None:
        raise _MalformedCall(
            f"a tool call must be a mapping or an SDK object, got {type(call).__name__}", "", "chat"
        )
    if "call_id" in data and "function" not in data:
        call_id = data.get("call_id")
        api: Literal["chat", "responses"] = "responses"
        if data.get("type", "function_call") != "function_call":
            raise _MalformedCall(
                f"output item {call_id!r}: only function_call items can be run, "
                f"got type {data.get('type')!r}",
                call_id if isinstance(call_id, str) else "",
                api,
            )
        name = data.get("name")
        arguments = data.get("arguments")
    else:
        call_id = data.get("id")
        api = "chat"
        kind = data.get("type", "function")
        function = as_mapping(data.get("function"))
        if kind != "function" or function is None:
            raise _MalformedCall(
                f"tool call {call_id!r}: only function calls can be run (type 'function' with a "
                f"'function' object), got type {kind!r}",
                call_id if isinstance(call_id, str) else "",
                api,
            )
        name = function.get("name")
        arguments = function.get("arguments")
    ident = call_id if isinstance(call_id, str) else ""
    if not ident:
        raise _MalformedCall(
            f"tool call has no {'call_id' if api == 'responses' else 'id'} string", ident, api
        )
    if not isinstance(name, str) or not name:
        raise _MalformedCall(f"tool call {ident!r} has no function name", ident, api)
    if arguments is not None and not isinstance(arguments, str | bytes | Mapping):
        raise _MalformedCall(
            f"tool call {ident!r}: arguments must be JSON text or an object, "
            f"got {type(arguments).__name__}",
            ident,
            api,
        )
    return ToolCall(ident, name, arguments, api)


async def run_tool_calls(
    registry: ToolLookup,
    tool_calls: Iterable[Any] | Mapping[str, Any],
    *,
    timeout: float | None = None,
    max_concurrency: int | None = None,
) -> list[dict[str, Any]]:
    """Run an LLM's tool calls through ``registry``; one answer per call, in order.

    ``tool_calls`` is the list from a Chat Completions message
    (``message["tool_calls"]``; the assistant message itself is accepted too) or
    the Responses API ``function_call`` items (other output items, such as
    ``"message"`` or ``"reasoning"``, are skipped). ``timeout`` bounds each call in
    seconds on top of the tool's own; ``max_concurrency`` bounds how many run at
    once (default: all). Append the answers to the conversation as they are::

        answers = await run_tool_calls(registry, message["tool_calls"])
        messages += [message, *answers]

    Never raises for one bad call (see the module docstring for the error
    answers); cancelling the caller cancels every call.
    :meth:`ToolRegistry.call_openai` is the same as a method.
    """
    check_call_limits("run_tool_calls", timeout, max_concurrency)
    if isinstance(tool_calls, Mapping):
        tool_calls = tool_calls.get("tool_calls") or []
    items = [c for c in tool_calls if not _is_other_output_item(c)]
    answering: list[ToolCall] = []  # who answers each call: the call, or a stand-in
    calls: list[ToolCall | CallOutcome] = []
    for item in items:
        try:
            call = parse_tool_call(item)
        except _MalformedCall as error:
            answering.append(ToolCall(error.call_id, "", None, error.api))
            calls.append(error_outcome("malformed_call", error))
        else:
            answering.append(call)
            calls.append(call)
    outcomes = await run_calls(registry, calls, timeout=timeout, max_concurrency=max_concurrency)
    return [call.answer(outcome.text) for call, outcome in zip(answering, outcomes, strict=True)]


def _is_other_output_item(item: Any) -> bool:
    """A Responses API output item that is no tool call at all (a message,
    reasoning): it has neither a ``call_id`` nor a ``function``. Chat tool calls
    of other types are answered as malformed instead, since the API expects an
    answer for every tool call id."""
    data = as_mapping(item)
    if data is None:
        return False
    kind = data.get("type")
    return (
        isinstance(kind, str)
        and kind not in ("function", "function_call")
        and "call_id" not in data
        and "function" not in data
        and "id" in data
        and kind in _OTHER_ITEMS
    )


#: Responses API output items that carry no call to answer.
_OTHER_ITEMS = frozenset({"message", "reasoning", "web_search_call", "file_search_call"})
