"""Running an LLM's tool calls through a registry, whatever API they came in.

The format modules (:mod:`rxagent.tools.openai`, :mod:`rxagent.tools.anthropic`)
parse their API's calls and write their API's answers; what happens in between is
here, once for every format:

- each call is looked up by name, validated by the tool's own model and called
  through :meth:`Tool.call` (the tool's ``timeout`` and ``max_concurrency``
  apply, as for a pipeline), all calls running concurrently, at most
  ``max_concurrency`` at once when given, each within ``timeout`` seconds when
  given;
- a call never raises: its :class:`CallOutcome` carries the text to send back,
  either the result (a ``str`` as is, anything else as compact JSON) or, when it
  could not be made or failed, JSON ``{"error": KIND, "message": ...}`` with
  ``KIND`` one of :data:`ERROR_KINDS`, so the model can correct itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..exceptions import ConfigurationError, ToolArgumentsError, ToolTimeoutError, UnknownToolError
from ..plain import plain
from .tool import Tool

__all__ = [
    "ERROR_KINDS",
    "CallOutcome",
    "ErrorKind",
    "NamedCall",
    "ToolLookup",
    "as_mapping",
    "check_call_limits",
    "error_outcome",
    "result_text",
    "run_calls",
]

ErrorKind = Literal["malformed_call", "unknown_tool", "invalid_arguments", "timeout", "tool_error"]

#: Every ``"error"`` an answer can carry, in the order a call meets them.
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "malformed_call",
    "unknown_tool",
    "invalid_arguments",
    "timeout",
    "tool_error",
)


class ToolLookup(Protocol):
    """What the call path needs of a registry: the tool by name, raising
    :class:`UnknownToolError` for a name it does not know."""

    def get(self, name: str) -> Tool:
        """The tool called ``name``; :class:`UnknownToolError` when there is none."""
        ...


class NamedCall(Protocol):
    """A parsed call: the tool's ``name`` and its ``arguments`` as given (JSON
    text, a mapping or ``None``)."""

    @property
    def name(self) -> str:
        """The name of the tool to call."""
        ...

    @property
    def arguments(self) -> Any:
        """The arguments as the model gave them: JSON text, a mapping or ``None``."""
        ...


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one call gives back: the ``text`` to answer with, and the ``error``
    kind when the call could not be made or failed (``None`` when it succeeded)."""

    text: str
    error: ErrorKind | None = None

    @property
    def ok(self) -> bool:
        """Whether the call ran and returned a result."""
        return self.error is None


def check_call_limits(where: str, timeout: float | None, max_concurrency: int | None) -> None:
    """Refuse a ``timeout`` that is not > 0 or a ``max_concurrency`` that is not
    an int >= 1, naming ``where`` they were given."""
    if timeout is not None and not timeout > 0:
        raise ConfigurationError(f"{where}: timeout must be > 0 seconds, got {timeout!r}")
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        raise ConfigurationError(
            f"{where}: max_concurrency must be an int >= 1, got {max_concurrency!r}"
        )


async def run_calls(
    registry: ToolLookup,
    calls: Sequence[NamedCall | CallOutcome],
    *,
    timeout: float | None = None,
    max_concurrency: int | None = None,
) -> list[CallOutcome]:
    """Run ``calls`` concurrently; one outcome per call, in order.

    An entry that is a :class:`CallOutcome` already (a call the format module
    could not parse) is passed through without taking a slot. Check the limits
    with :func:`check_call_limits` first; cancelling the caller cancels every call.
    """
    slots = None if max_concurrency is None else asyncio.Semaphore(max_concurrency)

    async def one(call: NamedCall | CallOutcome) -> CallOutcome:
        if isinstance(call, CallOutcome):
            return call
        if slots is None:
            return await _run_one(registry, call, timeout)
        async with slots:
            return await _run_one(registry, call, timeout)

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def _run_one(registry: ToolLookup, call: NamedCall, timeout: float | None) -> CallOutcome:
    try:
        tool = registry.get(call.name)
    except UnknownToolError as error:
        return error_outcome("unknown_tool", error, call.name)
    arguments = call.arguments
    if isinstance(arguments, str | bytes) and not arguments.strip():
        arguments = None  # "" for a call without arguments: as "{}"
    try:
        args = tool.validate(arguments)
    except ToolArgumentsError as error:
        return error_outcome("invalid_arguments", error, call.name)
    try:
        async with asyncio.timeout(timeout) as scope:
            result = await tool.call(args)
    except ToolTimeoutError as error:
        return error_outcome("timeout", error, call.name)
    except TimeoutError as error:
        if scope.expired():
            message = f"tool {tool.name!r} ran past the call timeout of {timeout:g}s"
            return error_outcome("timeout", message, call.name)
        return error_outcome("tool_error", error, call.name)
    except Exception as error:
        return error_outcome("tool_error", error, call.name)
    try:
        return CallOutcome(result_text(result))
    except Exception as error:  # a result JSON cannot carry
        return error_outcome("tool_error", f"the result could not be encoded: {error}", call.name)


def result_text(result: Any) -> str:
    """A tool's result as message content: a ``str`` as is, anything else as
    compact JSON (models and dataclasses dumped, unknown types by ``str``)."""
    if isinstance(result, str):
        return result
    return json.dumps(
        plain(result, str_keys=True), separators=(",", ":"), ensure_ascii=False, default=str
    )


def error_outcome(kind: ErrorKind, error: BaseException | str, tool_name: str = "") -> CallOutcome:
    """The outcome of a call that could not be made or failed: JSON
    ``{"error": kind, "message": ...}`` (a ``tool_error``'s message names the tool
    and the exception's type)."""
    if isinstance(error, str):
        message = error
    elif kind == "tool_error":
        message = f"tool {tool_name!r} failed: {type(error).__name__}: {error}"
    else:
        message = str(error)
    return CallOutcome(json.dumps({"error": kind, "message": message}, ensure_ascii=False), kind)


def as_mapping(value: Any) -> Mapping[str, Any] | None:
    """``value`` itself when it is a mapping, an SDK object's ``model_dump()``
    when it has one, else ``None``."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    return None
