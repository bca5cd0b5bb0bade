"""Sinks: where events end. State stores, tool activations, recordings, dead letters."""

from typing import TYPE_CHECKING, Any

from ..state import DELETE, ChangeSet, Entry, Snapshot, StateChange, StateStore
from ..websocket.sink import WebSocketSink
from .base import CallbackSink, ListSink, Sink
from .deadletters import (
    DeadLetter,
    DeadLetterSink,
    JsonlDeadLetters,
    MemoryDeadLetters,
    read_dead_letters,
)
from .record import RecordSink
from .state_sink import StateSink
from .tools import ToolResult, ToolSink, ToolStatus, activate

if TYPE_CHECKING:
    from ..kafka import KafkaDeadLetters, KafkaSink, KafkaSinkError

# the Kafka connector lives in rxagent.kafka (which builds on this package):
# re-exported here lazily, so importing either never needs the other first
_KAFKA = frozenset({"KafkaDeadLetters", "KafkaSink", "KafkaSinkError"})


def __getattr__(name: str) -> Any:
    if name in _KAFKA:
        from .. import kafka as _kafka

        return getattr(_kafka, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DELETE",
    "CallbackSink",
    "ChangeSet",
    "DeadLetter",
    "DeadLetterSink",
    "Entry",
    "JsonlDeadLetters",
    "KafkaDeadLetters",
    "KafkaSink",
    "KafkaSinkError",
    "ListSink",
    "MemoryDeadLetters",
    "RecordSink",
    "Sink",
    "Snapshot",
    "StateChange",
    "StateSink",
    "StateStore",
    "ToolResult",
    "ToolSink",
    "ToolStatus",
    "WebSocketSink",
    "activate",
    "read_dead_letters",
]
