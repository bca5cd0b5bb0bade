"""Sources: where events come from. Each is an async ``run`` that respects credit."""

from .base import Emitter, Source
from .kafka import KafkaPartition, KafkaSource, kafka
from .memory import MemorySource, PushSource, memory, push
from .overflow import Overflow, OverflowPolicy
from .replay import ReplaySource, replay

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
    "kafka",
    "memory",
    "push",
    "replay",
]
