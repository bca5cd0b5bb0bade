"""The WebSocket sink, kept for old imports: it lives in :mod:`rxagent.websocket.sink`."""

from ..websocket.sink import WebSocketSink

__all__ = ["WebSocketSink"]
