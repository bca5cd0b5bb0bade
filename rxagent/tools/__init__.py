"""Tools: typed functions an LLM calls by name and a pipeline activates from data.

- :class:`Tool` and the :func:`tool` decorator: a function, its pydantic argument
  model, its JSON schema, one validation path for every caller;
- :class:`ToolRegistry`: tools by name, offered to an LLM in OpenAI's or
  Anthropic's format (:meth:`~ToolRegistry.openai_tools`,
  :meth:`~ToolRegistry.anthropic_tools`) and its calls run in the same format
  (:meth:`~ToolRegistry.call_openai`, :meth:`~ToolRegistry.call_anthropic`);
- :func:`state_query_tool`: on-demand reads of state stores for the LLM;
- :func:`build_context`: one prompt section from several state stores in one budget;
- :func:`run_tool_calls`: an LLM's tool calls in OpenAI's formats, validated and
  run concurrently, answered in the same format; :func:`run_tool_uses`: the same
  for Anthropic's ``tool_use`` blocks, answered with ``tool_result`` blocks;
- :func:`current_activation`: inside a call made by a tool sink, the activation's
  :class:`ActivationContext` (its idempotency key, stable across restarts).

Activating tools from events is the job of :class:`rxagent.sinks.ToolSink`.
"""

from .activation import ActivationContext, current_activation
from .anthropic import run_tool_uses
from .openai import run_tool_calls
from .prompt_context import build_context
from .state_query import state_query_tool
from .tool import Tool, ToolStats, tool
from .tool_registry import ToolRegistry

__all__ = [
    "ActivationContext",
    "Tool",
    "ToolRegistry",
    "ToolStats",
    "build_context",
    "current_activation",
    "run_tool_calls",
    "run_tool_uses",
    "state_query_tool",
    "tool",
]
