"""Sinks: where events end. State stores, tool activations, recordings, dead letters."""

from .base import CallbackSink, ListSink, Sink
from .deadletters import (
    DeadLetter,
    DeadLetterSink,
    JsonlDeadLetters,
    MemoryDeadLetters,
    read_dead_letters,
)
from .kafka import KafkaDeadLetters, KafkaSink, KafkaSinkError
from .record import RecordSink
from .state import DELETE, ChangeSet, Entry, Snapshot, StateChange, StateSink, StateStore
from .tools import ToolResult, ToolSink, ToolStatus, activate
from .websocket import WebSocketSink

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
