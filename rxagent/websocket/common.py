"""What the WebSocket source and sink share: urls and their redaction, the wire
log, the handshake's credentials, lifecycle events, the default reconnect backoff,
close codes.

:mod:`rxagent.websocket.source` and :mod:`rxagent.websocket.sink` both import
this module and neither imports the other.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from .. import _secrets
from ..backoff import Backoff
from ..exceptions import RxAgentError

__all__ = [
    "DEFAULT_BACKOFF",
    "LifecycleKind",
    "TokenProvider",
    "WebSocketError",
    "WebSocketLifecycle",
    "close_of",
    "connect_headers",
    "error_text",
    "redact_url",
    "url_problem",
    "wire_log",
]

LifecycleKind = Literal["connecting", "opened", "closed", "error", "reconnect_scheduled"]
TokenProvider = Callable[[], str | Awaitable[str]]

#: Reconnect forever by default, growing to 30 s; "equal" jitter never retries at once.
DEFAULT_BACKOFF = Backoff(
    initial=0.5, factor=2.0, max_delay=30.0, jitter="equal", max_attempts=None
)

# Handshake headers whose values the wire log may show; every other value is hidden.
_SHOWN_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "user-agent",
        "server",
        "date",
    }
)


class WebSocketError(RxAgentError):
    """The source or sink gave up reconnecting (its backoff said so, or the server refused the
    credentials more than ``auth_retries`` times). Carries ``source`` and ``url``."""

    def __init__(self, message: str, *, source: str, url: str) -> None:
        super().__init__(message)
        self.source = source
        self.url = url


@dataclass(frozen=True, slots=True)
class WebSocketLifecycle:
    """One lifecycle event of a WebSocket source, at ``time`` (wall clock, epoch seconds).

    ``code`` and ``reason`` are set for ``closed``; ``error`` (``"Type: message"``)
    for ``error``; ``attempt`` and ``delay`` for ``reconnect_scheduled`` (attempt 1
    is the first retry since the last stable connection).
    """

    kind: LifecycleKind
    source: str
    url: str
    time: float
    code: int | None = None
    reason: str | None = None
    error: str | None = None
    attempt: int | None = None
    delay: float | None = None


def redact_url(url: str) -> str:
    """``url`` without user info and query (where tokens tend to hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a WebSocket url (None: nothing): it must be
    ``ws://`` or ``wss://`` with a host and, if any, a port in 1-65535. The
    message never shows the url's user info or query (where tokens hide)."""
    if not isinstance(url, str):
        return f"url must be a string, got {type(url).__name__}"
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        return f"url must start with ws:// or wss://, got {parts.scheme!r}"
    hostport = parts.netloc.rpartition("@")[2]
    if not parts.hostname:
        return f"url {parts.scheme}://{hostport}{parts.path} has no host (expected {parts.scheme}://host[:port]/path)"
    port = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    if ":" in port:
        text = port.rpartition(":")[2]
        if text and not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
            return f"url port must be a number in 1-65535, got {text!r}"
    return None


class _RedactHandshake(logging.Filter):
    """Hides header values (but a few harmless ones) and the request query in the
    ``websockets`` debug log of the handshake."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and record.msg in ("> %s: %s", "< %s: %s"):
            if str(args[0]).lower() not in _SHOWN_HEADERS:
                record.args = (args[0], "<redacted>")
        elif isinstance(args, tuple) and len(args) == 1 and record.msg == "> GET %s HTTP/1.1":
            record.args = (str(args[0]).split("?", 1)[0],)
        return True


#: The logger handed to ``websockets`` (its handshake and frame debug log), redacted.
wire_log = logging.getLogger("rxagent.websocket")
wire_log.addFilter(_RedactHandshake())


async def connect_headers(
    headers: Mapping[str, str],
    token_provider: TokenProvider | None,
    token_header: str,
    token_prefix: str,
    *,
    owner: object,
) -> dict[str, str]:
    """The handshake's headers: ``headers`` plus, with a ``token_provider`` (called on
    every connect, may be async), ``token_header: token_prefix + token``. The token is
    registered as a secret of ``owner``, so no output shows it."""
    sent = dict(headers)
    if token_provider is not None:
        token = token_provider()
        if inspect.isawaitable(token):
            token = await token
        _secrets.register(token, owner=owner)
        sent[token_header] = f"{token_prefix}{token}"
    return sent


def close_of(closed: ConnectionClosed) -> tuple[int | None, str | None]:
    """The close that counts: the one received first, or else the one sent."""
    first: Close | None
    if closed.rcvd is not None and (closed.sent is None or closed.rcvd_then_sent):
        first = closed.rcvd
    else:
        first = closed.sent or closed.rcvd
    if first is None:
        return 1006, "connection lost"
    return first.code, first.reason


def error_text(error: BaseException | None) -> str | None:
    """``"Type: message"`` of a connection's error, for lifecycle events and logs."""
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"
