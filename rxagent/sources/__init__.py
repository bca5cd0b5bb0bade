"""Sources: where events come from. Each is an async ``run`` that respects credit."""

from .base import Emitter, Source
from .kafka import KafkaPartition, KafkaSource, kafka
from .memory import MemorySource, PushSource, memory, push
from .overflow import Overflow, OverflowPolicy
from .replay import ReplaySource, replay
from .state import StateChangesSource, state_changes
from .websocket import WebSocketError, WebSocketLifecycle, WebSocketSource, websocket

__all__ = [
    "Emitter",
    "KafkaPartition",
    "KafkaSource",
    "MemorySource",
    "Overflow",
    "OverflowPolicy",
    "PushSource",
    "ReplaySource",
    "Source",
    "StateChangesSource",
    "WebSocketError",
    "WebSocketLifecycle",
    "WebSocketSource",
    "kafka",
    "memory",
    "push",
    "replay",
    "state_changes",
    "websocket",
]
