"""Sources: where events come from. Each is an async ``run`` that respects credit."""

from .base import Emitter, Source
from .memory import MemorySource, PushSource, memory, push

__all__ = ["Emitter", "MemorySource", "PushSource", "Source", "memory", "push"]
