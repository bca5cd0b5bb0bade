"""One HTTP server for operations: Prometheus metrics, health, readiness, the
dashboard and its data, and (optionally) MCP over streamable HTTP.

It runs on the pipelines' event loop (uvicorn serving one Starlette app), bound to
127.0.0.1 by default, with the MCP server's rules: ``Host`` and ``Origin`` are
checked as :func:`rxagent.mcp.server.transport_security` says and, with a token,
every request must carry it (``Authorization: Bearer <token>``; a browser opens
``/?token=<token>`` once and keeps it in an HttpOnly cookie).

Endpoints (docs/operations.md): ``/metrics``, ``/healthz``, ``/ready``,
``/api/snapshot``, ``/api/events`` (server-sent events), ``/api/state/{store}``,
``/`` and ``/static/*`` (the dashboard), ``/mcp`` when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .._secrets import redact, register
from ..exceptions import ConfigurationError
from ..mcp.server import is_loopback, transport_security
from ..runtime import App
from ..state import StateStore
from ..tools.tool import Tool
from .metrics import MAX_STATE_LIMIT, Collector, Observer

if TYPE_CHECKING:
    from ..mcp.server import RxAgentMCP

__all__ = [
    "DEFAULT_PORT",
    "EVENTS_INTERVAL",
    "STATIC_DIR",
    "LoopHeartbeat",
    "ObserveServer",
    "build_app",
    "parse_listen",
    "serve",
]

log = logging.getLogger("rxagent.observe")

#: The port of ``--http`` when only a host is given.
DEFAULT_PORT = 8000
#: Least seconds between two snapshots on one ``/api/events`` stream.
EVENTS_INTERVAL = 0.5
#: The dashboard's files.
STATIC_DIR = Path(__file__).with_name("static")
#: The cookie a browser keeps the token in after opening ``/?token=...``.
_COOKIE = "rxagent_token"


class LoopHeartbeat:
    """Measures how late the event loop runs a task that sleeps ``interval`` seconds.

    ``lag`` is the latest lateness (or, when the heartbeat is overdue, how overdue it
    is); ``max_lag`` the worst in the last ``window`` seconds. The loop counts as
    blocked (``healthy`` false) when ``max_lag`` passed ``threshold``. A loop blocked
    right now cannot answer at all: a probe's timeout is that failure.
    """

    def __init__(
        self, *, interval: float = 0.25, threshold: float = 5.0, window: float = 30.0
    ) -> None:
        for label, value in (("interval", interval), ("threshold", threshold), ("window", window)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"health {label} must be > 0 seconds, got {value!r}")
        self.interval = float(interval)
        self.threshold = float(threshold)
        self.window = float(window)
        self._beats: deque[tuple[float, float]] = deque()  # (when, lateness) of late beats
        self._last = time.monotonic()
        self._latest = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start beating on the running loop (idempotent)."""
        if self._task is None:
            self._last = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="rxagent-heartbeat"
            )

    async def stop(self) -> None:
        """Stop beating and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self.interval
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            late = max(0.0, now - self._last - interval)
            self._last = now
            self._latest = late
            if late >= 0.05 * interval:
                self._beats.append((now, late))
            while self._beats and self._beats[0][0] < now - self.window:
                self._beats.popleft()

    @property
    def lag(self) -> float:
        """Seconds the loop is late now: the last beat's lateness, or how overdue
        the next beat is while the loop is blocked."""
        overdue = time.monotonic() - self._last - self.interval
        return round(max(self._latest, overdue, 0.0), 4)

    @property
    def max_lag(self) -> float:
        """The worst lateness within the last ``window`` seconds (or now)."""
        horizon = time.monotonic() - self.window
        worst = max((late for when, late in list(self._beats) if when >= horizon), default=0.0)
        return round(max(worst, self.lag), 4)

    @property
    def healthy(self) -> bool:
        """Whether the loop kept up: no lateness past ``threshold`` in the window."""
        return self.max_lag < self.threshold


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=lambda v: redact(str(v)))


def _json(data: Any, status: int = 200) -> Response:
    return Response(_dumps(data), status_code=status, media_type="application/json")


class _Guard:
    """The MCP server's Host / Origin checks and the bearer token, as ASGI middleware
    (paths under ``skip`` are left to an app that checks them itself: MCP)."""

    def __init__(
        self, app: ASGIApp, *, security: Any, token: str | None, skip: tuple[str, ...] = ()
    ) -> None:
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.app = app
        self._checks = TransportSecurityMiddleware(security)
        self._token = None if token is None else token.encode()
        self._skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(
            scope["path"] == p or scope["path"].startswith(p + "/") for p in self._skip
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = await self._checks.validate_request(request)
        if refused is None and self._token is not None:
            refused = self._check_token(request)
            if refused is None and request.query_params.get("token") and scope["path"] == "/":
                await self._set_cookie(scope, receive, send)
                return
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_token(self, request: Request) -> Response | None:
        assert self._token is not None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        candidates = [given.strip()] if scheme.lower() == "bearer" else []
        candidates += [request.cookies.get(_COOKIE, ""), request.query_params.get("token", "")]
        for candidate in candidates:
            if candidate and hmac.compare_digest(candidate.encode(), self._token):
                return None
        return JSONResponse(
            {"error": "unauthorized: send 'Authorization: Bearer <token>' (or open /?token=...)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _set_cookie(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/?token=...``: keep the token in a cookie and reload without it in the URL."""
        assert self._token is not None
        response = Response(status_code=303, headers={"Location": "/"})
        response.set_cookie(
            _COOKIE, self._token.decode(), httponly=True, samesite="strict", path="/"
        )
        await response(scope, receive, send)


class ObserveServer:
    """The running server: its ``url``, ``observer`` and ``heartbeat``."""

    def __init__(self, observer: Observer, heartbeat: LoopHeartbeat, url: str) -> None:
        self.observer = observer
        self.heartbeat = heartbeat
        self.url = url


class _Endpoints:
    def __init__(self, observer: Observer, heartbeat: LoopHeartbeat, interval: float) -> None:
        self.observer = observer
        self.heartbeat = heartbeat
        self.interval = interval
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(observer, heartbeat))
        self.closing = asyncio.Event()
        self.started = asyncio.Event()
        self._cached: tuple[float, str] | None = None

    def snapshot_text(self) -> str:
        """The snapshot's JSON, built at most once per half interval for every reader."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < self.interval / 2:
            return cached[1]
        text = _dumps(self.observer.snapshot())
        self._cached = (now, text)
        return text

    async def metrics(self, request: Request) -> Response:
        body = redact(generate_latest(self.registry).decode())
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        beat = self.heartbeat
        data = {
            "ok": beat.healthy,
            "loop_lag": beat.lag,
            "max_loop_lag": beat.max_lag,
            "threshold": beat.threshold,
            "window": beat.window,
        }
        return _json(data, 200 if data["ok"] else 503)

    async def ready(self, request: Request) -> Response:
        found = self.observer.ready()
        return _json({"ready": found.ready, "waiting": found.waiting}, 200 if found.ready else 503)

    async def snapshot(self, request: Request) -> Response:
        return Response(self.snapshot_text(), media_type="application/json")

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self._stream(request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, request: Request) -> AsyncIterator[str]:
        # each snapshot is built when the previous one was sent: a slow client gets
        # the latest state, never a backlog
        closing = self.closing
        while not closing.is_set():
            yield f"event: snapshot\ndata: {self.snapshot_text()}\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), self.interval)

    async def state(self, request: Request) -> Response:
        name = request.path_params["store"]
        stores = self.observer.stores
        if name not in stores:
            known = ", ".join(repr(s) for s in sorted(stores)) or "none"
            return _json({"error": f"no state store {name!r}; stores: {known}"}, 404)
        raw = request.query_params.get("limit", "100")
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_STATE_LIMIT:
            return _json(
                {"error": f"limit must be an integer from 1 to {MAX_STATE_LIMIT}, got {raw!r}"},
                400,
            )
        q = request.query_params.get("q") or None
        return _json(self.observer.state(name, q=q, limit=limit))

    async def index(self, request: Request) -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return _json({"error": "the dashboard is not installed (no static/index.html)"}, 404)
        return FileResponse(page, headers={"Cache-Control": "no-cache"})


def build_app(
    observer: Observer,
    *,
    heartbeat: LoopHeartbeat | None = None,
    token: str | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] | None = None,
    mcp: RxAgentMCP | None = None,
    events_interval: float = EVENTS_INTERVAL,
) -> Starlette:
    """The ASGI app of the endpoints (see the module docstring); with ``mcp``, its
    streamable-HTTP app is served at ``/mcp`` (with the same token)."""
    if token is not None and not token:
        raise ConfigurationError("the HTTP token is empty: set a value or leave it out")
    if token:
        register(token)
    if not events_interval > 0:
        raise ConfigurationError(f"events_interval must be > 0 seconds, got {events_interval!r}")
    hosts = list(allowed_hosts or ())
    origins = list(allowed_origins or ())
    security = transport_security(host, hosts, origins)
    beat = heartbeat if heartbeat is not None else LoopHeartbeat()
    ends = _Endpoints(observer, beat, events_interval)
    routes: list[BaseRoute] = [
        Route("/metrics", ends.metrics),
        Route("/healthz", ends.healthz),
        Route("/ready", ends.ready),
        Route("/api/snapshot", ends.snapshot),
        Route("/api/events", ends.events),
        Route("/api/state/{store:path}", ends.state),
        Route("/", ends.index),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    inner: Starlette | None = None
    if mcp is not None:
        inner = mcp.http_app(
            token=token, host=host, path="/mcp", allowed_hosts=hosts, allowed_origins=origins
        )
        routes.append(Mount("", app=inner))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        ends.started.set()
        try:
            if inner is None:
                yield
            else:
                async with inner.router.lifespan_context(inner):
                    yield
        finally:
            ends.closing.set()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.endpoints = ends
    guarded = _Guard(
        app.build_middleware_stack(),
        security=security,
        token=token,
        skip=("/mcp",) if mcp is not None else (),
    )
    app.middleware_stack = guarded
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[::1]:PORT"``, ``":PORT"`` or ``"HOST"`` as ``(host, port)``."""
    text = listen.strip()
    if not text:
        raise ConfigurationError("an HTTP listen address is empty: use HOST:PORT (127.0.0.1:8000)")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    host = host or "127.0.0.1"
    if not port_text:
        return host, DEFAULT_PORT
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigurationError(
            f"HTTP listen address {listen!r}: the port must be 0-65535 (HOST:PORT)"
        )
    return host, port


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise ConfigurationError(
            f"cannot serve HTTP on {host}:{port}: {error.strerror or error}"
        ) from None
    return sock


@contextlib.asynccontextmanager
async def serve(
    app: App,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    stores: Mapping[str, StateStore] | Iterable[StateStore] | None = None,
    tools: Iterable[Tool] | None = None,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] | None = None,
    mcp: RxAgentMCP | None = None,
    health_threshold: float = 5.0,
    health_window: float = 30.0,
    events_interval: float = EVENTS_INTERVAL,
    ready: Callable[[str], None] | Callable[[str], Awaitable[None]] | None = None,
) -> AsyncIterator[ObserveServer]:
    """Serve ``app``'s metrics, health, readiness and dashboard on ``host:port`` (on
    this event loop) while the block runs::

        async with rxagent.observe.serve(app, "127.0.0.1", 8000) as server:
            await app.run()

    ``port=0`` picks a free port (``server.url`` says which). ``stores`` and
    ``tools`` add to those the pipelines' sinks use. A ``host`` that is not a
    loopback address needs ``allowed_hosts`` (the Host headers clients send), as
    for MCP. ``health_threshold``: ``/healthz`` answers 503 when the loop was
    blocked longer than that in the last ``health_window`` seconds.
    """
    import uvicorn

    heartbeat = LoopHeartbeat(threshold=health_threshold, window=health_window)
    observer = Observer(app, stores=stores, tools=tools)
    asgi = build_app(
        observer,
        heartbeat=heartbeat,
        token=token,
        host=host,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        mcp=mcp,
        events_interval=events_interval,
    )
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"http://{shown}:{bound}"
    config = uvicorn.Config(
        asgi, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=2
    )
    server = _Server(config)
    if not is_loopback(host):
        log.warning(
            "HTTP endpoints bound to %s (not a loopback address): reachable from other machines",
            host,
        )
    heartbeat.start()
    observer.start()
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        started = asyncio.ensure_future(asgi.state.endpoints.started.wait())
        await asyncio.wait({started, serving}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if serving.done():
            serving.result()  # raises what stopped it
        log.info("serving metrics, health and the dashboard on %s", url, extra={"url": url})
        if ready is not None:
            result = ready(url)
            if asyncio.iscoroutine(result):
                await result
        yield ObserveServer(observer, heartbeat, url)
    finally:
        asgi.state.endpoints.closing.set()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(serving, 5.0)
        if not serving.done():
            serving.cancel()
        sock.close()
        observer.close()
        await heartbeat.stop()


class _Server:
    """uvicorn's server without its signal handlers: the app owns SIGINT / SIGTERM."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        return Quiet(config)
