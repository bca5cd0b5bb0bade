"""The tool registry, kept for old imports: it lives in :mod:`rxagent.tools.tool_registry`."""

from .tool_registry import ToolRegistry

__all__ = ["ToolRegistry"]
