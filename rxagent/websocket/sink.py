"""The WebSocket sink: publishes each event to a server, reconnecting on failure.

Every value is encoded (``encode``: ``"json"``, ``"text"``, ``"bytes"``, or a
function returning ``str`` or ``bytes``) when its batch arrives and queued; one
task sends the queue in order over a ``websockets`` asyncio client connection.
A row **ends when its message was sent** (handed to the connection), so the
pipeline's credit bounds what waits here and a slow or absent server slows the
source instead of filling memory. WebSocket has no acknowledgements: messages
already written when the server closes the connection are lost unless the
application acknowledges them itself.

A connection that fails while sending is reopened on the ``backoff`` schedule
(the attempt count resets after ``stable_after`` seconds up, as in
:class:`~rxagent.websocket.source.WebSocketSource`) and the message whose send
failed is sent again. A connection the server closes while the sink is idle is
reopened at once, before the next event needs it. When the backoff gives up,
the rows still queued go to dead letters and the pipeline fails. A value that
cannot be encoded goes to dead letters at once and the stream goes on.

Messages the server sends on this connection are read and discarded, so its
pings are answered and its chatter never fills the client's buffers.
``lifecycle`` streams the same :class:`~rxagent.websocket.common.WebSocketLifecycle`
events as the source; headers and tokens are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

from reactivex.subject import Subject
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .. import _secrets
from .._tls import KeyPassword, PathLike, client_context, describe_tls
from ..backoff import Backoff
from ..events import Batch
from ..exceptions import ConfigurationError, StageError
from ..sinks.base import Sink
from .common import (
    DEFAULT_BACKOFF,
    LifecycleKind,
    TokenProvider,
    WebSocketError,
    WebSocketLifecycle,
    close_of,
    connect_headers,
    error_text,
    redact_url,
    url_problem,
    wire_log,
)

__all__ = ["WebSocketSink"]

Encode = Literal["json", "text", "bytes"] | Callable[[Any], str | bytes]


def _encoder(encode: Encode) -> Callable[[Any], str | bytes]:
    if callable(encode):
        return encode
    if encode == "json":
        return lambda value: json.dumps(value, separators=(",", ":"))
    if encode == "text":
        return lambda value: value if isinstance(value, str) else str(value)
    if encode == "bytes":
        return lambda value: value if isinstance(value, bytes) else str(value).encode("utf-8")
    raise ConfigurationError(f"encode must be json, text, bytes or a function, got {encode!r}")


class WebSocketSink(Sink):
    """Sends each event's value to the WebSocket at ``url`` (see the module docstring).

    Args:
        url: the ``ws://`` or ``wss://`` address.
        encode: how a value becomes a message: ``"json"`` (default), ``"text"``,
            ``"bytes"``, or a function of the value returning str or bytes.
        headers: extra HTTP headers of the handshake.
        token_provider: a function (may be async) returning a token, called on every
            connect (so a refreshed token is used on reconnect); sent as
            ``token_header: token_prefix + token``.
        token_header: the header carrying the token (default ``Authorization``).
        token_prefix: what precedes the token in it (default ``"Bearer "``).
        ssl: an :class:`ssl.SSLContext` for ``wss://`` (default: the system's,
            verifying); or give the TLS files below where a configuration cannot
            hold a context. Verification is always on.
        ca_file: the certificate authorities to trust, instead of the system's.
        cert_file: a client certificate, for servers that require one.
        key_file: the client certificate's private key.
        key_password: an encrypted key's password: the password, ``"${NAME}"`` to
            read it from the environment, or a function returning it; never stored
            or logged. The files are read when the object is built; a problem with
            one is a :class:`ConfigurationError` naming it.
        ping_interval: seconds between keepalive pings (None: no pings).
        ping_timeout: seconds a ping waits for its pong before the connection is
            considered lost (None: forever).
        compression: ``"deflate"`` to negotiate per-message compression, or None.
        open_timeout: seconds the connection and handshake may take (None: no limit).
        close_timeout: seconds the closing handshake may take (None: no limit).
        backoff: the delays between reconnection attempts (default: from 0.5 s,
            doubling up to 30 s, equal jitter, never giving up).
        stable_after: seconds a connection must stay up before the attempt count
            resets (so a server that accepts and closes at once meets growing
            delays).
        rng: the random source of the backoff's jitter (for reproducible tests).
        name: the sink's name in status and dead letters (default: ``websocket``).
    """

    kind = "websocket"

    def __init__(
        self,
        url: str,
        *,
        encode: Encode = "json",
        headers: Mapping[str, str] | None = None,
        token_provider: TokenProvider | None = None,
        token_header: str = "Authorization",
        token_prefix: str = "Bearer ",
        ssl: ssl_module.SSLContext | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        key_password: KeyPassword | None = None,
        compression: Literal["deflate"] | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float | None = 10.0,
        close_timeout: float | None = 5.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        stable_after: float = 5.0,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        _secrets.register_url(url, owner=self)
        _secrets.register_config(headers or {}, owner=self)
        problem = url_problem(url)
        if problem is not None:
            raise ConfigurationError(f"websocket sink {self.name!r}: {problem}")
        self.url = url
        self.encoder = _encoder(encode)
        self.headers = dict(headers or {})
        self.token_provider = token_provider
        self.token_header = token_header
        self.token_prefix = token_prefix
        tls_files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        #: The client TLS context (see :class:`~rxagent.websocket.source.WebSocketSource`).
        self.ssl = client_context(
            owner=f"websocket sink {self.name!r}",
            url=url,
            ssl_context=ssl,
            key_password=key_password,
            **tls_files,
        )
        self._tls = describe_tls(url, ssl, tls_files)
        self.compression = compression
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backoff = backoff
        self.stable_after = stable_after
        self.rng = rng
        #: Lifecycle events of the connection.
        self.lifecycle: Subject[WebSocketLifecycle] = Subject()
        self.sent = 0
        self.connects = 0
        self.reconnects = 0
        self.connected = False
        self._queue: deque[tuple[str | bytes, Batch, int]] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "url": redact_url(self.url),
            "tls": self._tls,
            "connected": self.connected,
            "queued": len(self._queue),
            "sent": self.sent,
            "connects": self.connects,
            "reconnects": self.reconnects,
        }

    # -- receiving ------------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        encoder = self.encoder
        queue = self._queue
        for i, value in enumerate(batch.values):
            try:
                message = encoder(value)
                if not isinstance(message, str | bytes):
                    raise TypeError(f"encode returned {type(message).__name__}, not str or bytes")
            except Exception as error:
                batch.ctx.dead_letter(batch.event(i, take=True), self.name, error)
            else:
                queue.append((message, batch, i))
        if queue:
            self._idle.clear()
            self._wakeup.set()
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(
                    self._run(), name=f"rxagent-ws-sink-{self.name}"
                )

    async def drain(self) -> None:
        await self._idle.wait()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._give_up(
            WebSocketError(
                f"websocket sink {self.name!r} closed before sending",
                source=self.name,
                url=redact_url(self.url),
            )
        )

    # -- sending --------------------------------------------------------------------------

    def _report(self, kind: LifecycleKind, **fields: Any) -> None:
        # wall time: a record of the real connection for logs and status, not stream time
        self.lifecycle.on_next(
            WebSocketLifecycle(kind, self.name, redact_url(self.url), time.time(), **fields)
        )

    async def _connect(self) -> ClientConnection:
        headers = await connect_headers(
            self.headers, self.token_provider, self.token_header, self.token_prefix, owner=self
        )
        tls: dict[str, Any] = {} if self.ssl is None else {"ssl": self.ssl}
        return await connect(
            self.url,
            additional_headers=headers,
            compression="deflate" if self.compression else None,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            proxy=None,
            logger=wire_log,
            **tls,
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        failing_since: float | None = None
        while True:
            opened_at: float | None = None
            error: Exception | None = None
            reader: asyncio.Task[None] | None = None
            try:
                self._report("connecting")
                ws = self._ws = await self._connect()
                # the loop's clock, not the pipeline's: how long a real network
                # connection stayed up (stable_after) and the reconnect backoff
                opened_at = loop.time()
                self.connected = True
                self.connects += 1
                self._report("opened")
                reader = loop.create_task(_discard(ws))
                await self._send_all(ws, reader)
            except ConnectionClosed as closed:
                error = closed
                code, reason = close_of(closed)
                self._report("closed", code=code, reason=reason)
            except asyncio.CancelledError:
                raise
            except Exception as failure:
                error = failure
                self._report("error", error=error_text(failure))
            finally:
                self.connected = False
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                live, self._ws = self._ws, None
                if live is not None:  # closed already after a failure; 1000 when we stop
                    await live.close(1000, "sink closed")
            now = loop.time()  # real seconds, as opened_at
            if opened_at is not None and now - opened_at >= self.stable_after:
                attempt, failing_since = 0, None
            if failing_since is None:
                failing_since = now if opened_at is None else opened_at
            attempt += 1
            delay = self.backoff.next_delay(attempt, now - failing_since, error, self.rng)
            if delay is None:
                failed = WebSocketError(
                    f"websocket sink {self.name!r} gave up reconnecting to "
                    f"{redact_url(self.url)} after {attempt} attempts: {error_text(error)}",
                    source=self.name,
                    url=redact_url(self.url),
                )
                self._give_up(failed)
                if self.ctx is not None:
                    self.ctx.fail(failed, self.name)
                return
            self.reconnects += 1
            self._report("reconnect_scheduled", attempt=attempt, delay=delay)
            await asyncio.sleep(delay)

    async def _send_all(self, ws: ClientConnection, reader: asyncio.Task[None]) -> None:
        """Send the queue in order, forever; raises when the connection closes."""
        queue = self._queue
        while True:
            while queue:
                message, batch, i = queue[0]
                await ws.send(message)
                queue.popleft()
                self.sent += 1
                batch.end_row(i)
            self._idle.set()
            self._wakeup.clear()
            # idle: wait for work, or for the server to close (then reconnect now,
            # not when the next event arrives)
            waiter = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait((waiter, reader), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if reader.done():
                await ws.wait_closed()
                raise ws.protocol.close_exc

    def _give_up(self, error: Exception) -> None:
        """Dead-letter every row still queued (they end), with ``error``."""
        queue = self._queue
        while queue:
            _, batch, i = queue.popleft()
            # fail_fast raises StageError once the event ended: the pipeline fails anyway
            with contextlib.suppress(StageError):
                batch.ctx.dead_letter(batch.event(i, take=True), self.name, error)
        self._idle.set()


async def _discard(ws: ClientConnection) -> None:
    """Read and drop what the server sends, until the connection closes."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass
