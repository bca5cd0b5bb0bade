"""The WebSocket source, kept for old imports: it lives in :mod:`rxagent.websocket.source`."""

from ..websocket.source import (
    LifecycleKind,
    WebSocketError,
    WebSocketLifecycle,
    WebSocketSource,
    websocket,
)

__all__ = [
    "LifecycleKind",
    "WebSocketError",
    "WebSocketLifecycle",
    "WebSocketSource",
    "websocket",
]
