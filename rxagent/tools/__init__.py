"""Tools: typed functions an LLM calls by name and a pipeline activates from data.

- :class:`Tool` and the :func:`tool` decorator: a function, its pydantic argument
  model, its JSON schema, one validation path for every caller;
- :class:`ToolRegistry`: tools by name, as an LLM client wants them;
- :func:`state_query_tool`: on-demand reads of state stores for the LLM.

Activating tools from events is the job of :class:`rxagent.sinks.ToolSink`.
"""

from .registry import ToolRegistry
from .state import state_query_tool
from .tool import Tool, ToolStats, tool

__all__ = ["Tool", "ToolRegistry", "ToolStats", "state_query_tool", "tool"]
