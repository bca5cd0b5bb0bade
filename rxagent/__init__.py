"""rxagent: reactive stream processing for LLM agents.

Sources become observables of event batches, operators filter, window and
throttle them, and sinks fold them into state an LLM can read or activate tools.
"""

from . import operators, sinks, sources
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
from .runtime import App, Pipeline, PipelineState, PipelineStatus
from .sinks import DELETE, JsonlDeadLetters, ListSink, MemoryDeadLetters, StateStore

__version__ = "0.1.0"

__all__ = [
    "DELETE",
    "App",
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
    "RxAgentError",
    "StageError",
    "StateError",
    "StateStore",
    "Ticket",
    "ToolArgumentsError",
    "ToolError",
    "ToolTimeoutError",
    "UnknownToolError",
    "__version__",
    "operators",
    "sinks",
    "sources",
]
