"""rxagent: reactive stream processing for LLM agents.

Sources become observables of event batches, operators filter, window and
throttle them, and sinks fold them into state an LLM can read or activate tools.
"""

from . import operators, sinks, sources, tools
from .backoff import Backoff
from .events import Batch, Event, Position
from .exceptions import (
    ConfigurationError,
    DecodeError,
    FlowError,
    PipelineError,
    RxAgentError,
    StageError,
    StateError,
    ToolArgumentsError,
    ToolError,
    ToolTimeoutError,
    UnknownToolError,
)
from .flow import Flow, Ticket
from .recording import RecordingError
from .runtime import App, Pipeline, PipelineState, PipelineStatus
from .sinks import (
    DELETE,
    JsonlDeadLetters,
    ListSink,
    MemoryDeadLetters,
    RecordSink,
    StateStore,
    ToolResult,
    ToolSink,
    ToolStatus,
    activate,
)
from .sources import ReplaySource
from .tools import Tool, ToolRegistry, state_query_tool, tool

__version__ = "0.1.0"

__all__ = [
    "DELETE",
    "App",
    "Backoff",
    "Batch",
    "ConfigurationError",
    "DecodeError",
    "Event",
    "Flow",
    "FlowError",
    "JsonlDeadLetters",
    "ListSink",
    "MemoryDeadLetters",
    "Pipeline",
    "PipelineError",
    "PipelineState",
    "PipelineStatus",
    "Position",
    "RecordSink",
    "RecordingError",
    "ReplaySource",
    "RxAgentError",
    "StageError",
    "StateError",
    "StateStore",
    "Ticket",
    "Tool",
    "ToolArgumentsError",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSink",
    "ToolStatus",
    "ToolTimeoutError",
    "UnknownToolError",
    "__version__",
    "activate",
    "operators",
    "sinks",
    "sources",
    "state_query_tool",
    "tool",
    "tools",
]
