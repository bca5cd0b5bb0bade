"""The WebSocket connector's shared parts (:mod:`rxagent.websocket.common`).

The source is :mod:`rxagent.sources.websocket`, the sink :mod:`rxagent.sinks.websocket`;
both build on :mod:`.common`, so neither imports the other.
"""

__all__: list[str] = []
