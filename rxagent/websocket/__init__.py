"""WebSocket: the connector's source, sink and the client code they share (one
package per external system, as :mod:`rxagent.kafka`).

``WebSocketSource`` / ``websocket()`` read a live feed with reconnects and
backpressure (:mod:`.source`), ``WebSocketSink`` publishes events and ends each
once sent (:mod:`.sink`); both build on :mod:`.common` (urls and their redaction,
the handshake's credentials, the wire log, lifecycle events, the default
backoff), so neither imports the other. ``rxagent.sources`` and ``rxagent.sinks``
export them too.
"""

from typing import TYPE_CHECKING, Any

from .common import LifecycleKind, TokenProvider, WebSocketError, WebSocketLifecycle

if TYPE_CHECKING:
    from .sink import WebSocketSink
    from .source import WebSocketSource, websocket

# the source and sink import rxagent.sources and rxagent.sinks, which export them:
# loaded on first use, so importing this package never needs either first
_LAZY = {"WebSocketSource": "source", "websocket": "source", "WebSocketSink": "sink"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LifecycleKind",
    "TokenProvider",
    "WebSocketError",
    "WebSocketLifecycle",
    "WebSocketSink",
    "WebSocketSource",
    "websocket",
]
