"""Sources: where events come from. Each is an async ``run`` that respects credit."""

from typing import TYPE_CHECKING, Any

from ..websocket.source import WebSocketError, WebSocketLifecycle, WebSocketSource
from ..websocket.source import websocket as _websocket
from . import websocket as _old_import_path  # noqa: F401
from .base import Emitter, Source
from .memory import MemorySource, PushSource, memory, push
from .overflow import Overflow, OverflowPolicy
from .replay import ReplaySource, replay
from .store_changes import StateChangesSource, state_changes

#: ``rxagent.sources.websocket`` names the function (``from rxagent.sources import
#: websocket``) and, for old imports, the module re-exporting the connector
#: (rxagent.websocket). Loading a submodule sets the package's attribute of its
#: name, so the module is loaded above, before the name is bound to the function.
websocket = _websocket

if TYPE_CHECKING:
    from ..kafka import KafkaPartition, KafkaSource, kafka

# the Kafka connector lives in rxagent.kafka (which builds on this package):
# re-exported here lazily, so importing either never needs the other first
_KAFKA = frozenset({"KafkaPartition", "KafkaSource", "kafka"})


def __getattr__(name: str) -> Any:
    if name in _KAFKA:
        from .. import kafka as _kafka

        return getattr(_kafka, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
