"""The WebSocket source: a live feed over ``websockets``, with reconnects and backpressure.

:class:`WebSocketSource` connects with the ``websockets`` asyncio client, sends
its subscription messages on every (re)connect, decodes each message at the
boundary and emits batches while it holds credit.

**Backpressure.** The source reads only while it holds credit: it awaits
``out.credit(n)``, then the next message. Without credit nobody reads, the
client's small receive queue (``max_queue`` frames) fills, ``websockets``
pauses the transport, and TCP flow control makes the server's writes block.
Memory stays bounded by ``credit + max_queue`` messages of at most
``max_size`` bytes, plus the kernel's socket buffers.

**Batching.** After the first message of a batch, the messages already queued
in the client are taken without awaiting the network, up to the granted credit,
and leave as one batch: a burst costs one loop hop, not one per message. Nothing
waits to fill a batch, so a lone message leaves at once. Free credit is taken
without an await, and the loop's other work runs between batches: through the
next ``recv()``, which waits for the network when nothing is queued, or an
explicit yield when messages remain queued (a burst larger than the batch).

**Reading for less than recv().** While the reader holds credit and nothing is
queued, it waits on a future of its own, and the connection's ``data_received``
(right after ``websockets`` parsed the frames read) emits the whole messages
queued in that same loop callback: no task wakes per message, and such batches run
outside any task. What it cannot do (no free credit, a fragmented message, text
that is not UTF-8, the connection's end, an error) goes through the reader and
``recv()``. The connection is an :class:`asyncio.BufferedProtocol`: it reads into
one buffer of its own, not a new 256 KiB ``bytes`` per read.

**Latency or CPU.** At a moderate rate (10,000 messages a second on a local
feed) messages arrive one at a time, so each batch holds about one, and the
fixed cost of a batch through the pipeline is paid per message. ``batch_wait``
trades latency for CPU: after a batch's first message the source waits up to
that long for more to queue (it stops waiting once ``batch_size`` or
``max_queue`` are reached), so a batch gathers about ``rate * batch_wait``
messages and each message waits half of it on average. Default 0: no wait.
While the source waits the connection goes on being read into the client's
queue, so a connection carries at most about ``max_queue`` messages per quarter
of ``batch_wait``: raise ``max_queue`` with it for fast feeds. On a stop during
the wait, what was received is emitted first.

**Reconnects.** A closed or failed connection is retried on the ``backoff``
schedule. The attempt count is reset only once a connection stayed up
``stable_after`` seconds, so a server that accepts and closes at once meets
growing delays, not a tight loop (the trap of ``async for ws in connect()``,
which resets on every successful handshake). An optional
:class:`~rxagent.circuit.CircuitBreaker` holds reconnects back while
it is open. The first failure of an outage is logged as a warning, each
further attempt at debug level; ``describe()["health"]`` (status, the live
view) shows the attempt count and the last error. A handshake the server
refuses with HTTP 401 or 403 is logged at ERROR the first time, and after
``auth_retries`` more refusals in a row (default 3; ``None``: retry forever)
the source fails with a :class:`WebSocketError` saying so: a wrong token
does not get better by retrying. ``subscribe`` may be a callable of the last
sequence seen (see ``sequence``), so a server can resume where the previous
connection stopped.

**Positions and durable state.** With ``sequence``, each message's position is
its sequence number (an int), so it means the same message in every process: a
durable :class:`~rxagent.state.StateStore` recognises a message it already
folded when a restarted process receives it again. A message whose number is not
an int above every earlier one of the run (a resend, one out of order, a
numbering that restarted) is emitted without a position (counted in
``out_of_sequence``). Without ``sequence`` no message has a position (arrival
order in one process says nothing after a restart); dead letters are numbered by
arrival either way. The
**resume position**, the sequence number up to which every message *ended*
(the completion watermark, not merely what was received), is stored with each
checkpoint of the pipeline's durable stores, in the same transaction as their
state (:meth:`WebSocketSource.checkpoint_meta`); a restarted process starts with
``last_seq`` set to it (the lowest, when several stores hold one; ``None`` when
any durable store holds none), so its first ``subscribe(last_seq)`` asks the
server to resume there. Messages between that position and the stored state are
sent again and skipped by the stores. This needs increasing integer sequence
numbers and a server that resumes after the one asked for (docs/state.md,
"Non-replayable sources").

**Lifecycle.** ``source.lifecycle`` is a reactivex ``Subject`` of
:class:`WebSocketLifecycle` events: ``connecting``, ``opened``,
``closed`` (code, reason), ``error`` and ``reconnect_scheduled`` (attempt,
delay). ``describe()`` (hence ``status()``) summarises it.

**A long pause and keepalive.** While the source holds no credit it reads
nothing, and pong frames are not read either: a pause longer than about
``ping_interval + ping_timeout`` makes ``websockets`` close the connection with
1011 ("keepalive ping timeout"). The source treats that as any disconnect: the
messages already queued are still delivered, the close is reported on the
lifecycle, and it reconnects *only once credit is free again* (it takes its
credit before it connects), sending ``subscribe(last_seq)`` so a server that
resumes loses nothing. A pipeline that can pause for long against a server that
cannot resume should raise ``ping_timeout`` (or set it to ``None``) instead, or
make the source lossy with ``overflow=Overflow("latest", key=...)`` where only
the newest message per key matters: it never stops reading.

**Bad input.** A message that fails decoding or validation goes to dead letters
as a :class:`~rxagent.exceptions.DecodeError` with the reason, and the stream
goes on. A message larger than ``max_size`` makes the client close with 1009;
that is reported (``closed`` with code 1009, then ``error``) and the source
reconnects.

**Secrets.** Headers and ``token_provider`` tokens are sent on every connect
and never logged, nor is a key's password: ``describe()`` shows header names
only, the URL's user info and query are hidden, and the ``websockets`` wire log
of the handshake is redacted.

**TLS.** A ``wss://`` url verifies the server's certificate and host name with
the system's trust store by default. ``ssl=`` takes a ready
:class:`ssl.SSLContext`; configurations that cannot hold one (YAML) give files
instead: ``ca_file`` (trusted in place of the system's CAs), ``cert_file`` and
``key_file`` for mutual TLS, and ``key_password`` for an encrypted key (see
:mod:`rxagent._tls`). Either ``ssl=`` or the files, not both, and only with
``wss://``.

**Compression.** ``compression="deflate"`` (permessage-deflate) saves bandwidth
on a slow link but costs CPU on every message (about 35 % of throughput on a
local feed); the default is ``None``, which is right for local or fast links.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import operator
import random
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Literal

from pydantic import TypeAdapter
from reactivex.subject import Subject
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.protocol import State

from .. import _secrets
from .._tls import KeyPassword, PathLike, client_context, describe_tls
from ..backoff import Backoff
from ..circuit import CircuitBreaker
from ..decoding import describe_error, loader, type_adapter
from ..events import Event, Position
from ..exceptions import ConfigurationError, DecodeError, RxAgentError
from ..flow import Flow
from ..sources.base import Emitter, Source
from ..sources.health import SourceHealth
from ..sources.overflow import Overflow
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

__all__ = [
    "LifecycleKind",
    "WebSocketError",
    "WebSocketLifecycle",
    "WebSocketSource",
    "websocket",
]

log = logging.getLogger("rxagent")

Message = str | bytes
Subscribe = Sequence[Any] | Callable[[Any], Sequence[Any]] | None

#: A queued frame's FIN bit: it ends a message.
_FIN = attrgetter("fin")

#: The types of a batch of plain int sequence numbers.
_INT = frozenset({int})
#: What stands for a sequence number that ``sequence()`` failed to give.
_NO_SEQ: Any = object()


class _Decoder:
    """Raw messages to values (the formats of :func:`rxagent.operators.decode`):
    a whole batch in one pass, row by row only to find the bad ones."""

    def __init__(self, decode: Any, where: str = "websocket source") -> None:
        fmt = "json"
        model: Any = None
        if isinstance(decode, str):
            fmt = decode
        elif decode is not None:
            model = decode
        self.raw = fmt == "raw"
        self.loader = None if self.raw else loader(fmt)  # type: ignore[arg-type]
        self.adapter: TypeAdapter[Any] | None = (
            None if model is None else type_adapter(model, where)
        )

    def one(self, raw: Message) -> Any:
        if self.adapter is not None:
            return self.adapter.validate_json(raw)
        return raw if self.loader is None else self.loader(raw)

    def all(self, raws: list[Message]) -> list[Any]:
        if self.raw:
            return raws
        # one call per message, never one parse of the messages joined into a JSON
        # array: frames that are each invalid ('{"a":1', '"b":2}', '3,4') can join
        # into as many valid values, and a count check would not notice
        if self.adapter is not None:
            return list(map(self.adapter.validate_json, raws))
        loader = self.loader
        assert loader is not None
        return list(map(loader, raws))


class WebSocketSource(Source):
    """Emits the messages of the WebSocket at ``url`` (see the module docstring).

    Args:
        url: the ``ws://`` or ``wss://`` address (credentials in it are redacted
            in logs and status).
        subscribe: messages sent on every (re)connect, or a function of the last
            sequence seen (None before any) returning them; a dict or list is sent as
            JSON (default None: send nothing).
        sequence: a function of a decoded value giving its sequence number, which
            ``subscribe`` receives to resume from. Ints that increase along the
            stream become the messages' positions and make the resume point durable
            (a restart resumes after the last message whose processing ended).
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
        decode: ``"json"`` (default), ``"text"``, ``"bytes"``, ``"raw"`` (str or bytes
            as received), or a pydantic model / type to validate JSON into.
        ping_interval: seconds between keepalive pings (None: no pings).
        ping_timeout: seconds a ping waits for its pong before the connection is
            considered lost (None: forever).
        compression: ``"deflate"`` to negotiate per-message compression, or None.
        max_size: most bytes in one message (None: no limit); a larger one closes
            the connection.
        max_queue: frames buffered by the client before it stops reading the socket.
        open_timeout: seconds the connection and handshake may take (None: no limit).
        close_timeout: seconds the closing handshake may take (None: no limit).
        backoff: the delays between reconnection attempts (default: from 0.5 s,
            doubling up to 30 s, equal jitter, never giving up).
        stable_after: seconds a connection must stay up before the attempt count
            resets (so a server that accepts and closes at once meets growing
            delays).
        auth_retries: handshakes refused with HTTP 401/403 retried before the source
            fails (default 3; None: forever).
        circuit: a :class:`~rxagent.circuit.CircuitBreaker` that holds reconnects
            back while open (default None).
        rng: the random source of the backoff's jitter (for reproducible tests).
        name: the source's name in positions, status and dead letters (default:
            ``websocket``).
        overflow: an :class:`~rxagent.sources.Overflow` makes the source lossy: it
            reads as fast as the server sends and never waits for credit; what credit
            cannot take at once is queued or dropped by the policy (``latest`` keeps
            the newest message per key), and keepalive never starves (default None:
            wait for credit, lose nothing).
        credit: most events in flight from this source at once; reading pauses
            beyond it (backpressure to the server through TCP).
        batch_size: most events in one emission (a batch).
        batch_wait: seconds a batch waits after its first message for more to
            queue (default 0: emit what is queued at once). Trades latency for
            CPU per message at moderate rates (see the module docstring).
    """

    kind = "websocket"
    event_bytes_hint = 1 << 20  # max_size by default: byte credit expects the largest

    def __init__(
        self,
        url: str,
        *,
        subscribe: Subscribe = None,
        sequence: Callable[[Any], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        token_provider: TokenProvider | None = None,
        token_header: str = "Authorization",
        token_prefix: str = "Bearer ",
        ssl: ssl_module.SSLContext | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        key_password: KeyPassword | None = None,
        decode: Any = "json",
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        compression: Literal["deflate"] | None = None,
        max_size: int | None = 1 << 20,
        max_queue: int = 64,
        open_timeout: float | None = 10.0,
        close_timeout: float | None = 5.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        stable_after: float = 5.0,
        auth_retries: int | None = 3,
        circuit: CircuitBreaker | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
        overflow: Overflow | None = None,
        credit: int = 4096,
        batch_size: int = 512,
        batch_wait: float = 0.0,
    ) -> None:
        super().__init__(name, credit=credit, batch_size=batch_size)
        _secrets.register_url(url, owner=self)
        _secrets.register_config(headers or {}, owner=self)
        where = f"websocket source {self.name!r}"
        problem = url_problem(url)
        if problem is not None:
            raise ConfigurationError(f"{where}: {problem}")
        if compression not in (None, "deflate"):
            raise ConfigurationError(
                f"{where}: compression must be None or 'deflate', got {compression!r}"
            )
        if max_queue < 1:
            raise ConfigurationError(f"{where}: max_queue must be >= 1, got {max_queue}")
        if stable_after < 0:
            raise ConfigurationError(f"{where}: stable_after must be >= 0, got {stable_after}")
        if not 0 <= batch_wait < float("inf"):
            raise ConfigurationError(
                f"{where}: batch_wait must be a number of seconds >= 0, got {batch_wait!r}"
            )
        if auth_retries is not None and (isinstance(auth_retries, bool) or auth_retries < 0):
            raise ConfigurationError(
                f"{where}: auth_retries must be >= 0 or None (retry forever), got {auth_retries!r}"
            )
        if isinstance(decode, str) and decode not in ("json", "text", "bytes", "raw"):
            raise ConfigurationError(
                f"{where}: decode must be json, text, bytes, raw or a model, got {decode!r}"
            )
        self.url = url
        self.subscribe = subscribe
        self.sequence = sequence
        self.headers = dict(headers or {})
        self.token_provider = token_provider
        self.token_header = token_header
        self.token_prefix = token_prefix
        tls_files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        #: The client TLS context: ``ssl`` or one built from the files; ``None`` means
        #: the system's default context (verifying) for ``wss://``.
        self.ssl = client_context(
            owner=where, url=url, ssl_context=ssl, key_password=key_password, **tls_files
        )
        self._tls = describe_tls(url, ssl, tls_files)
        self.decoder = _Decoder(decode, where)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.compression = compression
        self.max_size = max_size
        self.max_queue = max_queue
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backoff = backoff
        self.stable_after = stable_after
        self.auth_retries = auth_retries
        self.circuit = circuit
        self.rng = rng
        self.overflow = overflow
        self.batch_wait = batch_wait
        #: Lifecycle events (see :class:`WebSocketLifecycle`).
        self.lifecycle: Subject[WebSocketLifecycle] = Subject()
        self.last_seq: Any = None
        #: The stored resume position this run started from (``None``: none).
        self.resumed_from: int | None = None
        #: Messages emitted without a position: their sequence number was not an
        #: int above every earlier one (resent, out of order, or not a number).
        self.out_of_sequence = 0
        self._highest: int | None = None  # the highest position emitted in this run
        self._resume_seq: int | None = None  # the last resume position computed
        self._flow: Flow | None = None
        self.received = 0
        self.emitted = 0
        self.bad_messages = 0
        self.connects = 0
        self.reconnects = 0
        self.connected = False
        self.last_event: WebSocketLifecycle | None = None
        self.last_close: tuple[int | None, str | None] | None = None
        self.last_error: str | None = None
        #: Connected, reconnecting (attempt, last error), auth refused, stopped.
        self.health = SourceHealth()
        #: Handshakes the server refused with HTTP 401 or 403 (in all).
        self.auth_refusals = 0
        self._refused_in_a_row = 0
        self._position = 0
        self._held = 0  # credit taken and not used yet
        #: what the reader awaits while the connection's callback emits (see _read_direct)
        self._parked: asyncio.Future[None] | None = None
        self._close_reported: ClientConnection | None = None

    def describe(self) -> dict[str, Any]:
        last = self.last_event
        return {
            "kind": self.kind,
            "name": self.name,
            "credit": self.credit,
            "url": redact_url(self.url),
            "headers": sorted(self.headers) + ([self.token_header] if self.token_provider else []),
            "tls": self._tls,
            "connected": self.connected,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "received": self.received,
            "emitted": self.emitted,
            "bad_messages": self.bad_messages,
            "dropped": None if self.overflow is None else self.overflow.dropped,
            "last_seq": self.last_seq,
            "resume_seq": self._resume_seq,
            "resumed_from": self.resumed_from,
            "out_of_sequence": self.out_of_sequence,
            "last_event": None if last is None else last.kind,
            "last_close": self.last_close,
            "last_error": self.last_error,
            "health": self.health.as_dict(),
            "auth_refusals": self.auth_refusals,
            "batch_wait": self.batch_wait,
            "backoff": self.backoff.describe(),
            "circuit": None if self.circuit is None else str(self.circuit.state),
        }

    # -- lifecycle ------------------------------------------------------------------------

    def _report(self, kind: LifecycleKind, **fields: Any) -> None:
        # wall time: a record of the real connection for logs and status, not stream time
        event = WebSocketLifecycle(kind, self.name, redact_url(self.url), time.time(), **fields)
        self.last_event = event
        if kind == "closed":
            self.last_close = (event.code, event.reason)
        elif kind == "error":
            self.last_error = event.error
        try:
            self.lifecycle.on_next(event)
        except Exception:  # a broken lifecycle subscriber must not stop the feed
            log.exception("websocket source %r: a lifecycle subscriber raised", self.name)

    # -- connecting -----------------------------------------------------------------------

    async def _headers(self) -> dict[str, str]:
        return await connect_headers(
            self.headers, self.token_provider, self.token_header, self.token_prefix, owner=self
        )

    def _subscriptions(self) -> list[Message]:
        subscribe = self.subscribe
        if subscribe is None:
            return []
        messages = subscribe(self.last_seq) if callable(subscribe) else subscribe
        return [m if isinstance(m, str | bytes) else json.dumps(m) for m in messages]

    def _connect(self, headers: dict[str, str]) -> Any:
        high = self.max_queue
        # ssl=None would refuse a wss:// url; leaving it out means the system's
        # default context, verifying certificates and host names
        tls: dict[str, Any] = {} if self.ssl is None else {"ssl": self.ssl}
        return connect(
            self.url,
            additional_headers=headers,
            **tls,
            compression="deflate" if self.compression else None,
            max_size=self.max_size,
            max_queue=(high, high // 4),
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            proxy=None,
            logger=wire_log,
            create_connection=_Connection,
        )

    # -- resume position ------------------------------------------------------------------

    def checkpoint_meta(self) -> Mapping[str, Any] | None:
        """``{"last_seq": n}``: the resume position, stored with the state of every
        durable store of the pipeline in the transaction of their checkpoint.

        ``n`` is the sequence number up to which every message ended (read off the
        completion watermark: positions are sequence numbers, so it is the
        watermark minus one; nothing is kept per message), or the position this run
        resumed from while none of its own ended yet. ``None`` without
        ``sequence`` or before any position is known."""
        if self.sequence is None:
            return None
        flow = self._flow
        watermark = None if flow is None else flow.watermark(None)
        if watermark is not None:
            self._resume_seq = watermark - 1
        elif self._resume_seq is None:
            self._resume_seq = self.resumed_from
        return None if self._resume_seq is None else {"last_seq": self._resume_seq}

    def _resume(self, stored: list[Mapping[str, Any] | None]) -> None:
        """Start from the resume position the durable sinks stored (the lowest; none
        when any of them holds none: it must see the stream from the start)."""
        if self.sequence is None or not stored:
            return
        seqs = [None if meta is None else meta.get("last_seq") for meta in stored]
        ints = [seq for seq in seqs if isinstance(seq, int) and not isinstance(seq, bool)]
        if len(ints) < len(seqs):
            log.info(
                "websocket source %r: a durable store holds no resume position; "
                "subscribing with last_seq=%r",
                self.name,
                self.last_seq,
            )
            return
        low = min(ints)
        self.last_seq = self.resumed_from = self._resume_seq = low
        log.info(
            "websocket source %r: resuming after sequence %d (stored with the state)",
            self.name,
            low,
        )

    async def run(self, out: Emitter) -> None:
        # positions increase within a flow (a run): a server that sends again what a
        # store holds (from before the resume position) gets them, and is skipped
        self._flow, self._highest = out.flow, None
        self._resume(out.ctx.resume_meta())
        try:
            await self._run(out)
        except Exception as error:
            self.health.set("stopped", error=error_text(error))
            raise
        finally:
            if self.health.state != "stopped":
                self.health.set("stopped")
            if self.overflow is not None:
                await self.overflow.close()

    async def _run(self, out: Emitter) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0  # failed connections since the last stable one
        failing_since: float | None = None
        while True:
            # take credit before connecting: a source paused by a slow pipeline
            # does not reconnect (and get flooded) until the pipeline has room
            await self._wait_circuit(out)  # holding no credit while it is open
            if self.overflow is None:
                self._held = await out.credit(self.batch_size)
            opened_at: float | None = None
            error: Exception | None = None
            try:
                self._report("connecting")
                headers = await self._headers()
                async with self._connect(headers) as ws:
                    # the loop's clock, not the pipeline's: how long a real network
                    # connection stayed up (stable_after) and the reconnect backoff
                    # are real seconds even when the pipeline's clock is virtual
                    opened_at = loop.time()
                    self.connected = True
                    self.connects += 1
                    self._refused_in_a_row = 0
                    if attempt:
                        log.info(
                            "websocket source %r: connected again to %s after %d failed attempts",
                            self.name,
                            redact_url(self.url),
                            attempt,
                        )
                    self.health.set("connected")
                    self._report("opened")
                    # report a close when it happens, even while no credit lets us read
                    watcher = loop.create_task(ws.wait_closed(), name=f"rxagent-ws-{self.name}")
                    watcher.add_done_callback(functools.partial(self._closed_callback, ws))
                    try:
                        for message in self._subscriptions():
                            await ws.send(message)
                        if self.overflow is None:
                            await self._read(ws, out)
                        else:
                            await self._read_lossy(ws, out, self.overflow)
                    except asyncio.CancelledError:
                        # the pipeline stops: close with 1000 (leaving the block
                        # on an exception would close with 1011)
                        await ws.close(1000, "source stopped")
                        raise
                    finally:
                        watcher.cancel()
                        self._report_close(ws)
            except ConnectionClosed as closed:
                error = closed
            except RxAgentError:
                raise  # a pipeline error (fail_fast, flow), not the network's
            except Exception as failure:
                error = failure
                self._report("error", error=error_text(failure))
            finally:
                self.connected = False
                if self._held:
                    out.give_back(self._held)
                    self._held = 0
            now = loop.time()  # real seconds, as opened_at
            stable = opened_at is not None and now - opened_at >= self.stable_after
            if self.circuit is not None:
                # the breaker reads the pipeline's clock, shared with the operator
                # and the tool sink that may hold the same breaker (Decision 8)
                at = self._circuit_now(out)
                if stable:
                    self.circuit.record_success(at)
                else:
                    self.circuit.record_failure(at, error)
            if stable:
                attempt, failing_since = 0, None
            if failing_since is None:
                failing_since = now if opened_at is None else opened_at
            attempt += 1
            refused = self._note_refusal(error)
            delay = self.backoff.next_delay(attempt, now - failing_since, error, self.rng)
            if delay is None:
                raise WebSocketError(
                    f"websocket source {self.name!r} gave up reconnecting to "
                    f"{redact_url(self.url)} after {attempt} attempts: {error_text(error)}",
                    source=self.name,
                    url=redact_url(self.url),
                ) from error
            self.reconnects += 1
            self.health.set(
                "auth_refused" if refused else "reconnecting",
                attempt=attempt,
                error=error_text(error) or "connection closed",
            )
            if attempt == 1 and not refused:
                # one warning per outage; each further attempt is in the debug log,
                # the live view and status (health: attempt and last error)
                log.warning(
                    "websocket source %r: connection to %s %s; reconnecting (attempt %d in %.1fs)",
                    self.name,
                    redact_url(self.url),
                    "failed" if opened_at is None else "closed",
                    attempt,
                    delay,
                )
            else:
                log.debug(
                    "websocket source %r: reconnect attempt %d in %.1fs (%s)",
                    self.name,
                    attempt,
                    delay,
                    error_text(error),
                )
            self._report("reconnect_scheduled", attempt=attempt, delay=delay)
            await asyncio.sleep(delay)

    def _note_refusal(self, error: BaseException | None) -> bool:
        """Whether ``error`` is the server refusing the credentials (HTTP 401 or 403 on
        the handshake): reported at ERROR the first time in a row; past
        ``auth_retries`` refusals in a row the source fails (retrying cannot help)."""
        status = error.response.status_code if isinstance(error, InvalidStatus) else None
        if status not in (401, 403):
            self._refused_in_a_row = 0
            return False
        self.auth_refusals += 1
        self._refused_in_a_row += 1
        refused = f"HTTP {status} {'Unauthorized' if status == 401 else 'Forbidden'}"
        retries = self.auth_retries
        if self._refused_in_a_row == 1:
            log.error(
                "websocket source %r: %s refused the credentials (%s): check the token and "
                "headers; %s",
                self.name,
                redact_url(self.url),
                refused,
                "retrying forever (auth_retries=None)"
                if retries is None
                else f"the source fails after {retries} more refusal{'' if retries == 1 else 's'} "
                f"(auth_retries={retries})",
            )
        if retries is not None and self._refused_in_a_row > retries:
            raise WebSocketError(
                f"websocket source {self.name!r}: {redact_url(self.url)} refused the "
                f"credentials {self._refused_in_a_row} times in a row ({refused}); check the "
                f"token and headers (auth_retries={retries}; auth_retries=None retries forever)",
                source=self.name,
                url=redact_url(self.url),
            ) from error
        return True

    def _closed_callback(self, ws: ClientConnection, _task: asyncio.Task[None]) -> None:
        self._report_close(ws)

    def _report_close(self, ws: ClientConnection) -> None:
        """Report the close of ``ws`` once (from the watcher or the reader, whichever is first)."""
        if ws is self._close_reported or ws.protocol.state is not State.CLOSED:
            return
        self._close_reported = ws
        self.connected = False
        code, reason = close_of(ws.protocol.close_exc)
        self._report("closed", code=code, reason=reason)
        if code == 1009:
            self._report("error", error=f"message too big: {reason}")

    def _circuit_now(self, out: Emitter) -> float:
        """Now for the breaker: its own clock if it has one, else the pipeline's."""
        circuit = self.circuit
        return circuit.now() if circuit is not None and circuit.clock else out.ctx.now()

    async def _wait_circuit(self, out: Emitter) -> None:
        circuit = self.circuit
        while circuit is not None and not circuit.allow(now := self._circuit_now(out)):
            until = circuit.open_until
            wait = 0.05 if until is None else max(until - now, 0.001)
            await asyncio.sleep(wait)

    # -- reading --------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection, out: Emitter) -> None:
        """Read and emit until the connection closes (``ConnectionClosed``)."""
        frames = _frame_queue(ws)
        wait = self.batch_wait > 0 and frames is not None
        if not wait and frames is not None and isinstance(ws, _Connection):
            await self._read_direct(ws, frames, out)
            return
        recv = ws.recv
        flow = out.flow
        want = self.batch_size
        while True:
            if not self._held:
                # credit that is free is taken without an await (no coroutine per batch)
                self._held = flow.try_acquire(want) or await out.credit(want)
            batch = [await recv()]
            stopping = wait and await self._linger(frames, self._held - 1)
            # what is already queued leaves with it, without awaiting the network
            if frames:
                await _take_queued(ws, frames, batch, self._held)
            # the rows emitted keep their credit; dead-lettered ones give it back
            self._held -= len(batch)
            out.give_back(self._held + len(batch) - self._emit(out, batch))
            self._held = 0
            if stopping:
                raise asyncio.CancelledError
            # let timers, sinks and other pipelines run between batches; when nothing
            # is queued the next recv() waits for the network, which lets them run
            # without a loop turn of its own per batch
            if frames is None or frames:
                await asyncio.sleep(0)

    async def _read_direct(self, ws: _Connection, frames: Any, out: Emitter) -> None:
        """:meth:`_read` without a task wake-up per message: while the reader holds
        credit and waits, the connection's own callback (``data_received``, right
        after ``websockets`` queued the frames it parsed) takes the whole messages
        queued and emits them, in the same loop callback. The reader wakes only for
        what that cannot do: no free credit (it awaits credit; frames stay queued and
        ``websockets`` pauses reading, as with ``recv()``), a fragmented message or
        text that is not UTF-8 (``recv()`` assembles or refuses it), a burst larger
        than the credit, the connection's end (``recv()`` raises), or an error of the
        emission (raised in the reader, as from ``recv()``'s path)."""
        flow = out.flow
        want = self.batch_size
        assembler = ws.recv_messages

        def on_data() -> None:
            parked = self._parked
            if parked is None or parked.done():
                return  # the reader is busy (credit, recv(), a batch): it takes them
            try:
                # credit for what is queued (one message, mostly): none to give back
                if frames and (self._held or self._take_credit(flow, min(len(frames), want))):
                    self._emit_queued(out, assembler, frames)
                if (frames or assembler.closed) and not parked.done():
                    parked.set_result(None)
            except Exception as error:  # raised in the reader, never into websockets
                if not parked.done():
                    parked.set_exception(error)
                else:  # the emission failed the pipeline, which cancelled the reader
                    log.debug("websocket source %r: emission failed: %r", self.name, error)

        loop = asyncio.get_running_loop()
        ws.on_data = on_data
        try:
            while True:
                if not self._held:
                    self._held = flow.try_acquire(want) or await out.credit(want)
                if frames and self._emit_queued(out, assembler, frames):
                    if frames:  # a burst larger than the credit: let the others run
                        await asyncio.sleep(0)
                    continue
                if frames or assembler.closed:
                    # a fragmented message, text that is not UTF-8, or the end:
                    # recv() assembles, refuses (1007) or raises ConnectionClosed
                    batch = [await ws.recv()]
                    self._held -= 1
                    out.give_back(self._held + 1 - self._emit(out, batch))
                    self._held = 0
                    continue
                self._parked = parked = loop.create_future()
                try:
                    await parked
                finally:
                    self._parked = None
        finally:
            ws.on_data = None

    def _take_credit(self, flow: Flow, want: int) -> int:
        self._held = flow.try_acquire(want)
        return self._held

    def _emit_queued(self, out: Emitter, assembler: Any, frames: Any) -> int:
        """Emit the whole messages queued in the client, up to the credit held, as
        one batch; returns how many (0: none at the head of the queue)."""
        batch = _pop_messages(assembler, frames, self._held)
        n = len(batch)
        if n:
            # the rows emitted keep their credit; dead-lettered ones give it back
            self._held -= n
            out.give_back(self._held + n - self._emit(out, batch))
            self._held = 0
        return n

    async def _read_lossy(self, ws: ClientConnection, out: Emitter, overflow: Overflow) -> None:
        """Read as fast as the server sends, never waiting for credit: the
        ``overflow`` policy emits what credit allows and queues or drops the rest."""
        frames = _frame_queue(ws)
        recv = ws.recv
        limit = self.batch_size
        wait = self.batch_wait > 0 and frames is not None
        while True:
            batch = [await recv()]
            stopping = wait and await self._linger(frames, limit - 1)
            if frames:
                await _take_queued(ws, frames, batch, limit)
            self._emit(out, batch, overflow)
            if stopping:
                raise asyncio.CancelledError
            if frames is None or frames:  # as in _read: recv() lets the others run
                await asyncio.sleep(0)

    async def _linger(self, frames: Any, more: int) -> bool:
        """Wait up to ``batch_wait`` until ``more`` messages are queued (or ``max_queue``
        frames, where the client stops reading), looking four times; True when the
        wait was cancelled (a stop): the caller emits what it has, then stops."""
        step = self.batch_wait / 4
        full = self.max_queue
        try:
            for _ in range(4):
                if len(frames) >= full or _complete_messages_queued(frames, more) >= more:
                    break
                await asyncio.sleep(step)
        except asyncio.CancelledError:
            return True
        return False

    def _emit(self, out: Emitter, raws: list[Message], overflow: Overflow | None = None) -> int:
        """Decode ``raws``, emit the good ones, dead-letter the rest; returns the count emitted."""
        self.received += len(raws)
        start = self._position  # arrival numbers: dead letters are named by them
        self._position += len(raws)
        try:
            values = self.decoder.all(raws)
        except Exception:
            values = []
            for i, raw in enumerate(raws):
                try:
                    values.append(self.decoder.one(raw))
                except Exception as error:
                    self._dead_letter(out, raw, start + i, error)
        if not values:
            return 0
        # rows without a position are None (Emitter.emit and Overflow.offer take them)
        positions = None if self.sequence is None else self._positions(values)
        self.emitted += len(values)
        if overflow is None:
            # charged against the byte credit (frames' lengths, in C; bad ones excluded)
            nbytes = sum(map(len, raws)) if out.flow.capacity_bytes is not None else 0
            if len(values) < len(raws):
                nbytes = nbytes * len(values) // len(raws)
            out.emit(values, positions=positions, nbytes=nbytes)  # type: ignore[arg-type]
        else:
            overflow.offer(out, values, positions=positions)  # type: ignore[arg-type]
        return len(values)

    def _positions(self, values: list[Any]) -> list[int | None] | None:
        """The values' sequence numbers as their positions (``None`` for one that is
        not an int above every earlier one); sets ``last_seq``. One ``map`` and a
        few checks in C per batch when the numbers simply increase."""
        sequence = self.sequence
        assert sequence is not None
        try:
            seqs: list[Any] = list(map(sequence, values))
        except Exception:
            seqs = []
            error: Exception | None = None
            for value in values:
                try:
                    seqs.append(sequence(value))
                except Exception as failure:
                    seqs.append(_NO_SEQ)
                    error = error or failure
            log.warning("websocket source %r: sequence() raised %r", self.name, error)
        if seqs[-1] is not _NO_SEQ:
            self.last_seq = seqs[-1]
        high = self._highest
        if (
            set(map(type, seqs)) == _INT  # ints all (not bools)
            and (high is None or seqs[0] > high)
            and all(map(operator.lt, seqs, itertools.islice(seqs, 1, None)))
        ):
            self._highest = seqs[-1]
            return seqs
        positions: list[int | None] = []
        for seq in seqs:
            if type(seq) is int and (high is None or seq > high):
                high = seq
                positions.append(seq)
            else:
                positions.append(None)
        self._highest = high
        missing = positions.count(None)
        self.out_of_sequence += missing
        return None if missing == len(positions) else positions

    def _dead_letter(self, out: Emitter, raw: Message, position: int, error: Exception) -> None:
        self.bad_messages += 1
        problem = DecodeError(
            f"cannot decode message at {self.name}@{position}: {describe_error(error)}",
            source=self.name,
            raw=raw,
        )
        event = Event(raw, position=Position(self.name, None, position))
        out.ctx.dead_letter(event, self.name, problem)


#: Bytes a connection reads from its socket at once (asyncio's own read size).
_READ_SIZE = 256 * 1024


class _Connection(ClientConnection, asyncio.BufferedProtocol):
    """A ``websockets`` client connection that calls ``on_data`` after each chunk it
    read was parsed and its frames queued (and once more when the connection is
    lost), so the source can take the messages in that same loop callback instead
    of waking a task that waits in ``recv()`` (see ``WebSocketSource._read_direct``).

    It is also an :class:`asyncio.BufferedProtocol`: the transport reads into one
    buffer made per connection (``recv_into``), and only the bytes read are copied
    out for ``websockets``. A plain protocol gets each read as a new ``bytes`` of
    the full read size (256 KiB), which the allocator maps and unmaps every time:
    two page faults and ~13 µs per read on a feed of small messages."""

    on_data: Callable[[], None] | None = None
    _buffer: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = memoryview(bytearray(_READ_SIZE))
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        assert buffer is not None
        self.data_received(bytes(buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        on_data = self.on_data
        if on_data is not None:
            on_data()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        on_data = self.on_data
        if on_data is not None:
            on_data()


_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY


def _pop_messages(assembler: Any, frames: Any, limit: int) -> list[Message]:
    """Take up to ``limit`` messages from the head of the client's frame queue, as
    ``recv()`` returns them (text as str, binary as bytes): the messages of one
    frame each; stops at a fragmented message or text that is not UTF-8, which
    ``recv()`` handles. The caller makes sure no ``recv()`` runs meanwhile."""
    taken: list[Message] = []
    append = taken.append
    while frames and len(taken) < limit:
        frame = frames[0]
        if not frame.fin:
            break
        data = frame.data
        opcode = frame.opcode
        if opcode is _TEXT:
            try:
                message: Message = (data if type(data) is bytes else bytes(data)).decode()
            except UnicodeDecodeError:
                break
        elif opcode is _BINARY:
            message = data if type(data) is bytes else bytes(data)
        else:
            break
        frames.popleft()
        append(message)
    if taken:
        assembler.maybe_resume()  # below the low-water mark: websockets reads again
    return taken


def _frame_queue(ws: ClientConnection) -> Any:
    """The client's queue of received frames, if this ``websockets`` version has one."""
    return getattr(getattr(getattr(ws, "recv_messages", None), "frames", None), "queue", None)


def _complete_messages_queued(frames: Any, limit: int) -> int:
    """How many of the next ``limit`` messages ``recv()`` would return at once: the
    final frames (``fin``) among the first ``limit`` frames queued, each ending one
    message (a lower bound when messages are fragmented). Counted once per batch,
    in C, not once per message."""
    if not frames or limit <= 0:
        return 0
    return sum(map(_FIN, itertools.islice(frames, limit)))


async def _take_queued(ws: ClientConnection, frames: Any, batch: list[Message], limit: int) -> None:
    """Append to ``batch`` the messages already queued in the client, up to ``limit``
    in all. None of these ``recv()`` calls waits: the frames are there (and nothing
    else runs meanwhile, so none can be taken away)."""
    recv = ws.recv
    append = batch.append
    for _ in range(_complete_messages_queued(frames, limit - len(batch))):
        append(await recv())


def websocket(url: str, **options: Any) -> WebSocketSource:
    """A source reading the WebSocket at ``url`` (see :class:`WebSocketSource`)."""
    return WebSocketSource(url, **options)
