"""Every error rxagent raises derives from :class:`RxAgentError`.

The tree::

    RxAgentError
    ├── ConfigurationError       a pipeline, operator or sink was built with bad arguments
    ├── PipelineError            a pipeline failed while running (carries ``pipeline``, ``stage``)
    │   ├── StageError           a user function raised in ``fail_fast`` mode
    │   └── DeadLetterStormError a stage dead-lettered past ``max_dead_letter_ratio``
    ├── FlowError                credit or completion bookkeeping was misused
    ├── DecodeError              a message could not be decoded or validated at a source
    │   └── RecordingError       a line of a recording is unreadable (rxagent.recording)
    ├── RecordEncodeError        an event cannot be written to a recording unchanged
    ├── StateError               a state store was read or written wrongly
    ├── CircuitOpenError         a circuit breaker is open (rxagent.circuit)
    ├── MarbleError              a marble diagram is malformed (rxagent.testing.marbles)
    ├── WebSocketError           a WebSocket source or sink gave up (rxagent.websocket)
    ├── KafkaSinkError           a Kafka sink could not deliver (rxagent.kafka)
    └── ToolError                a tool could not be invoked
        ├── ToolArgumentsError   the arguments failed validation (carries ``errors``)
        ├── ToolTimeoutError     the call ran past its timeout
        └── UnknownToolError     no tool has that name

Each message says what was wrong, where, and what to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "DeadLetterStormError",
    "DecodeError",
    "FlowError",
    "PipelineError",
    "RxAgentError",
    "StageError",
    "StateError",
    "ToolArgumentsError",
    "ToolError",
    "ToolTimeoutError",
    "UnknownToolError",
]


class RxAgentError(Exception):
    """Root of every rxagent error."""


class ConfigurationError(RxAgentError, ValueError):
    """A pipeline, operator, source or sink was built with arguments that cannot work."""


class PipelineError(RxAgentError):
    """A pipeline failed while running."""

    def __init__(self, message: str, *, pipeline: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.pipeline = pipeline
        self.stage = stage


class StageError(PipelineError):
    """A user function raised inside a stage while the pipeline runs with ``fail_fast``."""


class DeadLetterStormError(PipelineError):
    """A stage dead-lettered more than the pipeline's ``max_dead_letter_ratio`` of
    what it received: the run fails instead of quietly losing most events."""


class FlowError(RxAgentError):
    """Credit or completion bookkeeping was misused (an event ended twice, say)."""


class DecodeError(RxAgentError):
    """A message could not be decoded or validated at a source boundary."""

    def __init__(self, message: str, *, source: str | None = None, raw: Any = None):
        super().__init__(message)
        self.source = source
        self.raw = raw


class StateError(RxAgentError, KeyError):
    """A state store was read or written wrongly."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ToolError(RxAgentError):
    """A tool could not be invoked."""

    def __init__(self, message: str, *, tool: str | None = None):
        super().__init__(message)
        self.tool = tool


class ToolArgumentsError(ToolError, ValueError):
    """The arguments given to a tool failed validation against its pydantic model."""

    def __init__(self, message: str, *, tool: str | None = None, errors: list[Any] | None = None):
        super().__init__(message, tool=tool)
        self.errors = errors or []


class ToolTimeoutError(ToolError, TimeoutError):
    """A tool call ran past its timeout."""


class UnknownToolError(ToolError, LookupError):
    """No tool is registered under that name."""
