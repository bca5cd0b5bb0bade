"""An MCP server over rxagent state stores, tools and pipeline status.

Built on the low-level ``Server`` of the official ``mcp`` SDK (2.x), which
speaks both eras of the protocol on one connection type:

- the ``initialize`` handshake (revisions up to 2025-11-25), where a client
  subscribes with ``resources/subscribe`` and gets
  ``notifications/resources/updated`` on the connection;
- the per-request envelope of revision 2026-07-28, where a client opens a
  ``subscriptions/listen`` stream naming the resources it follows and the
  same notifications arrive on that stream.

What it serves:

- resources ``rxagent://state/{store}`` (the whole store) and the template
  ``rxagent://state/{store}/{key}`` (one key), compact JSON with ``version``,
  ``as_of`` and ``staleness_s``; ``rxagent://status`` (pipelines, stages,
  stores, tools);
- tools: every tool of the :class:`~rxagent.tools.ToolRegistry`, the state
  query tool (``query_state``) and ``changes_since(store, version)``.

Store changes reach subscribers through a :class:`~rxagent.mcp.conflate.Conflater`:
at most one notification per resource per ``min_interval`` seconds, the last
change always delivered. The store's change callback only marks resources
dirty; sending happens in separate tasks, so a slow client never stalls a
pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import quote, unquote

import mcp_types as types
from mcp.server import Server
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ListenHandler, ResourceUpdated, ServerEvent
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, create_model
from reactivex.abc import DisposableBase
from starlette.applications import Starlette

from .._secrets import redact, redact_data, register
from ..exceptions import ConfigurationError
from ..plain import plain
from ..runtime import App
from ..state import Snapshot, StateChange, StateStore
from ..tools.state_query import (
    MISSING_KEY,
    find_key,
    key_text,
    missing_key_message,
    state_query_tool,
)
from ..tools.tool import Tool
from ..tools.tool_registry import ToolRegistry
from .conflate import Conflater

__all__ = [
    "STATE_URI_PREFIX",
    "STATUS_URI",
    "KEY_URI_TEMPLATE",
    "RxAgentMCP",
    "is_loopback",
    "key_uri",
    "store_uri",
    "transport_security",
]

log = logging.getLogger("rxagent.mcp")

#: The status resource: pipelines, stages, stores and tools.
STATUS_URI = "rxagent://status"
#: Prefix of the state resources.
STATE_URI_PREFIX = "rxagent://state/"
#: The template of one key's resource.
KEY_URI_TEMPLATE = STATE_URI_PREFIX + "{store}/{key}"

_JSON = "application/json"
#: Dead letters shown in the status resource.
_RECENT_DEAD_LETTERS = 5
#: Followed resources named in the status resource (all are counted).
_STATUS_SUBSCRIBED = 100
#: What a loopback-bound server accepts as Host and Origin (the SDK's DNS rebinding defaults).
_LOCAL_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
_LOCAL_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


def store_uri(store: str) -> str:
    """The URI of a whole store's resource."""
    return STATE_URI_PREFIX + quote(store, safe="")


def key_uri(store: str, key: Hashable) -> str:
    """The URI of one key's resource; the key is percent-encoded (``/`` too)."""
    return f"{store_uri(store)}/{quote(key_text(key), safe='')}"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_security(
    host: str,
    allowed_hosts: list[str] | tuple[str, ...] | None = None,
    allowed_origins: list[str] | tuple[str, ...] | None = None,
) -> TransportSecuritySettings:
    """The ``Host``/``Origin`` checks (DNS rebinding protection) of an HTTP server bound to
    ``host``; always on. Bound to a loopback address, local hosts and origins are accepted
    plus ``allowed_hosts``/``allowed_origins``; bound to any other address (``0.0.0.0``, a
    LAN address), only ``allowed_hosts`` (at least one, or :class:`ConfigurationError`) and
    ``allowed_origins`` (none: requests carrying an ``Origin`` header are refused). An entry
    ending in ``:*`` accepts any port (``mcp.example.com:*``)."""
    hosts = [str(h) for h in allowed_hosts or ()]
    origins = [str(o) for o in allowed_origins or ()]
    for kind, values in (("allowed host", hosts), ("allowed origin", origins)):
        for value in values:
            if not value.strip() or value.strip() in ("*", ":*"):
                raise ConfigurationError(
                    f"MCP {kind} {value!r} is not a value clients send: name one, such as "
                    + (
                        "'mcp.example.com:8765' or 'mcp.example.com:*'"
                        if kind == "allowed host"
                        else "'https://app.example.com' or 'http://app.example.com:*'"
                    )
                )
    if is_loopback(host):
        own_host = f"{_bracketed(host)}:*"
        own = [] if own_host in _LOCAL_HOSTS else [own_host]
        own_origin = [f"http://{h}" for h in own]
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[*_LOCAL_HOSTS, *own, *hosts],
            allowed_origins=[*_LOCAL_ORIGINS, *own_origin, *origins],
        )
    if not hosts:
        raise ConfigurationError(
            f"serving MCP over HTTP on {host!r}, not a loopback address, lets other machines "
            "connect, so the Host header check needs the names clients use: pass "
            "--allow-host NAME:PORT (or NAME:* for any port; repeatable), and --allow-origin "
            "URL for browser clients; or bind 127.0.0.1 (the default) behind a TLS proxy"
        )
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _dumps(value: Any) -> str:
    """JSON of what the server sends: resources, status and tool results, with every
    known secret redacted in the data (before JSON escapes it)."""
    return json.dumps(
        redact_data(value),
        separators=(",", ":"),
        default=lambda v: redact(str(v)),
        ensure_ascii=False,
    )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _staleness(wall_time: float, now: float) -> float:
    return round(max(0.0, now - wall_time), 3)


class _Bus:
    """The in-process fan-out to ``subscriptions/listen`` streams.

    Implements the SDK's ``SubscriptionBus`` protocol and adds
    :meth:`publish_nowait`: the listen handler's listeners only put the event
    in their stream's bounded buffer, so publishing from a loop callback never
    waits for a client.
    """

    def __init__(self) -> None:
        self._listeners: dict[object, Callable[[ServerEvent], None]] = {}

    async def publish(self, event: ServerEvent) -> None:
        self.publish_nowait(event)
        await asyncio.sleep(0)

    def publish_nowait(self, event: ServerEvent) -> None:
        for listener in list(self._listeners.values()):
            try:
                listener(event)
            except Exception:  # one broken stream must not starve the others
                log.exception("MCP listen stream listener failed")

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = listener

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe


class _LegacyClient:
    """One handshake-era connection's ``resources/subscribe`` subscriptions.

    Notifications go out from this client's own task, newest set first-in
    first-out and deduplicated, so a slow client holds at most one pending
    notification per resource and never blocks the loop.
    """

    def __init__(self, session: ServerSession, gone: Callable[[_LegacyClient], None]) -> None:
        self.session = session
        self.uris: set[str] = set()
        self.sent = 0
        self._gone = gone
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self, uri: str) -> None:
        if uri not in self.uris:
            return
        self._pending[uri] = None
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._send_loop(), name="rxagent-mcp-notify"
            )

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                uri = next(iter(self._pending))
                del self._pending[uri]
                try:
                    await self.session.send_resource_updated(uri)
                except Exception as error:  # the connection is gone
                    log.debug("MCP client unreachable, dropping its subscriptions: %r", error)
                    self._task = None
                    self._gone(self)
                    return
                self.sent += 1

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class _StaticToken:
    """A ``TokenVerifier`` accepting one bearer token, compared in constant time."""

    def __init__(self, token: str) -> None:
        register(token, owner=self)
        self._token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token="<redacted>", client_id="rxagent", scopes=[])
        return None


class RxAgentMCP:
    """The MCP server of an rxagent app: state as resources, tools, live updates.

    ``stores`` are served as resources; ``tools`` (a registry, optional) as
    tools, with ``query_state`` and ``changes_since`` added unless disabled or
    a registered tool has the name already; ``app`` (optional) feeds the
    status resource. ``min_interval`` bounds notifications per resource.

    Use it as an async context manager on the loop that runs the pipelines (it
    follows the stores' changes while open), then serve with
    :meth:`serve_stdio` or :meth:`serve_http`::

        async with RxAgentMCP(stores=built.stores, tools=built.tools, app=built.app) as mcp:
            await mcp.serve_stdio()
    """

    def __init__(
        self,
        *,
        stores: Mapping[str, StateStore] | None = None,
        tools: ToolRegistry | None = None,
        app: App | None = None,
        name: str = "rxagent",
        descriptions: Mapping[str, str | None] | None = None,
        min_interval: float = 0.5,
        status_interval: float = 1.0,
        query_tool: bool = True,
        changes_tool: bool = True,
        dead_letters: Any = None,
        max_entries: int = 500,
        max_subscriptions: int = 100,
    ) -> None:
        if not min_interval >= 0:
            raise ConfigurationError(f"min_interval must be >= 0 seconds, got {min_interval!r}")
        if not status_interval > 0:
            raise ConfigurationError(
                f"status_interval must be > 0 seconds, got {status_interval!r}"
            )
        self.stores: dict[str, StateStore] = dict(stores or {})
        self.app = app
        self.name = name
        self.min_interval = min_interval
        self.status_interval = status_interval
        self.dead_letters = dead_letters
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be an int >= 1, got {max_entries!r}")
        #: most entries a whole-store read returns (the most recently updated first)
        self.max_entries = max_entries
        if (
            isinstance(max_subscriptions, bool)
            or not isinstance(max_subscriptions, int)
            or max_subscriptions < 1
        ):
            raise ConfigurationError(
                f"max_subscriptions must be an int >= 1, got {max_subscriptions!r}"
            )
        #: most resources one client session (or one listen stream) follows
        self.max_subscriptions = max_subscriptions
        self._descriptions = dict(descriptions or {})
        self.tools = ToolRegistry()
        for item in tools or ():
            self.tools.register(item)
        if self.stores and query_tool and "query_state" not in self.tools:
            self.tools.register(state_query_tool(*self.stores.values()))
        if self.stores and changes_tool and "changes_since" not in self.tools:
            self.tools.register(_changes_since_tool(self.stores))

        self._bus = _Bus()
        self._listen = ListenHandler(self._bus)
        self._legacy: dict[int, _LegacyClient] = {}
        self._interest: Counter[str] = Counter()
        self._watched_keys: dict[str, Counter[str]] = {}
        self._subscriptions: list[DisposableBase] = []
        self._conflater: Conflater | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._status_task: asyncio.Task[None] | None = None

        from .. import __version__

        self.server: Server[Any] = Server(
            name,
            version=__version__,
            title="rxagent",
            instructions=self._instructions(),
            cache_hints={
                "resources/read": CacheHint(ttl_ms=0),
                "resources/list": CacheHint(ttl_ms=0),
            },
            get_tool_input_schema=self._input_schema,
            on_list_resources=self._on_list_resources,
            on_list_resource_templates=self._on_list_templates,
            on_read_resource=self._on_read_resource,
            on_subscribe_resource=self._on_subscribe,
            on_unsubscribe_resource=self._on_unsubscribe,
            on_subscriptions_listen=self._on_listen,
            on_list_tools=self._on_list_tools,
            on_call_tool=self._on_call_tool,
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> RxAgentMCP:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Follow the stores' changes (call on the event loop that writes them)."""
        if self._loop is not None:
            return
        self._loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._conflater = Conflater(self.min_interval, self._emit, loop=loop)
        for name, store in self.stores.items():
            self._subscriptions.append(store.updates.subscribe(on_next=self._change_handler(name)))

    def close(self) -> None:
        """Stop following the stores and end every subscription stream."""
        for subscription in self._subscriptions:
            subscription.dispose()
        self._subscriptions.clear()
        if self._conflater is not None:
            self._conflater.close()
        for client in list(self._legacy.values()):
            client.close()
        self._legacy.clear()
        self._listen.close()
        if self._status_task is not None:
            self._status_task.cancel()
            self._status_task = None
        self._interest.clear()
        self._watched_keys.clear()
        self._conflater = None
        self._loop = self._loop_thread = None

    @property
    def conflater(self) -> Conflater | None:
        """The conflation of notifications (``touched`` and ``emitted`` counters)."""
        return self._conflater

    # -- serving -----------------------------------------------------------------------

    async def serve_stdio(self) -> None:
        """Serve one client over this process's stdin and stdout until stdin closes.

        Stdin is read on the event loop when it is a pipe (how MCP clients start
        servers), so cancelling this coroutine (SIGINT, SIGTERM) ends it at once;
        the SDK's default reader blocks a thread that no cancellation reaches.
        """
        from mcp.server.stdio import stdio_server

        lines = await _StdinLines.open()
        stdin = cast("Any", lines)  # duck-types the SDK's async text file: async lines
        try:
            async with stdio_server(stdin=stdin) as (read_stream, write_stream):
                await self.server.run(
                    read_stream, write_stream, self.server.create_initialization_options()
                )
        finally:
            if lines is not None:
                lines.close()

    def http_app(
        self,
        *,
        token: str | None,
        host: str = "127.0.0.1",
        path: str = "/mcp",
        allowed_hosts: list[str] | tuple[str, ...] | None = None,
        allowed_origins: list[str] | tuple[str, ...] | None = None,
    ) -> Starlette:
        """The streamable-HTTP ASGI app; with ``token``, requests without
        ``Authorization: Bearer <token>`` get 401. ``Host`` and ``Origin`` are
        checked as :func:`transport_security` says (a non-loopback ``host`` needs
        ``allowed_hosts``)."""
        security = transport_security(host, allowed_hosts, allowed_origins)
        if token is None:
            return self.server.streamable_http_app(
                streamable_http_path=path, host=host, transport_security=security
            )
        if not token:
            raise ConfigurationError("the MCP bearer token is empty")
        return self.server.streamable_http_app(
            streamable_http_path=path,
            host=host,
            transport_security=security,
            auth=AuthSettings(
                issuer_url=AnyHttpUrl(f"http://{_bracketed(host)}"), resource_server_url=None
            ),
            token_verifier=_StaticToken(token),
        )

    async def serve_http(
        self,
        *,
        token: str | None,
        host: str = "127.0.0.1",
        port: int = 8765,
        path: str = "/mcp",
        ready: Callable[[str], None] | None = None,
        allowed_hosts: list[str] | tuple[str, ...] | None = None,
        allowed_origins: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        """Serve streamable HTTP at ``http://host:port/path`` until cancelled or
        interrupted; ``ready(url)`` is called once the socket listens, with the
        port actually bound (``port=0`` picks a free port)."""
        import socket

        import uvicorn

        app = self.http_app(
            token=token,
            host=host,
            path=path,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
            sock.listen(128)  # clients connecting before uvicorn is up wait in the backlog
        except OSError as error:
            sock.close()
            raise ConfigurationError(
                f"cannot serve MCP on {host}:{port}: {error.strerror or error}"
            ) from None
        bound = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        if not is_loopback(host):
            log.warning(
                "MCP over HTTP bound to %s (not a loopback address): reachable from other "
                "machines; accepted Host headers: %s",
                host,
                ", ".join(allowed_hosts or ()),
            )
        if ready is not None:
            ready(f"http://{_bracketed(host)}:{bound}{path}")
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    # -- change path -------------------------------------------------------------------

    def _change_handler(self, store: str) -> Callable[[list[StateChange]], None]:
        uri = store_uri(store)

        def on_changes(changes: list[StateChange]) -> None:
            if threading.get_ident() != self._loop_thread:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(on_changes, changes)
                return
            conflater = self._conflater
            if conflater is None:
                return
            try:
                if self._interest[uri]:
                    conflater.touch(uri)
                watched = self._watched_keys.get(store)
                if watched:
                    for change in changes:
                        text = key_text(change.key)
                        if watched[text]:
                            conflater.touch(f"{uri}/{quote(text, safe='')}")
            except Exception:  # never let a notification problem fail the writing pipeline
                log.exception("MCP change notification for store %r failed", store)

        return on_changes

    def _emit(self, uri: str) -> None:
        self._bus.publish_nowait(ResourceUpdated(uri=uri))
        for client in list(self._legacy.values()):
            client.notify(uri)

    def _add_interest(self, uri: str) -> None:
        self._interest[uri] += 1
        parsed = _parse_uri(uri)
        if parsed is not None and parsed[0] == "key":
            _, store, key = parsed
            self._watched_keys.setdefault(store, Counter())[key] += 1
        if uri == STATUS_URI:
            self._ensure_status_task()

    def _drop_interest(self, uri: str) -> None:
        self._interest[uri] -= 1
        if self._interest[uri] > 0:
            return
        del self._interest[uri]
        if self._conflater is not None:
            self._conflater.forget(uri)
        parsed = _parse_uri(uri)
        if parsed is not None and parsed[0] == "key":
            _, store, key = parsed
            watched = self._watched_keys.get(store)
            if watched is not None:
                watched[key] -= 1
                if watched[key] <= 0:
                    del watched[key]
                if not watched:
                    del self._watched_keys[store]

    def _ensure_status_task(self) -> None:
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.get_running_loop().create_task(
                self._watch_status(), name="rxagent-mcp-status"
            )

    async def _watch_status(self) -> None:
        """While anyone follows the status resource, notify when its counters change."""
        last: str | None = None
        while self._interest[STATUS_URI] > 0:
            current = _dumps(self.status(include_time=False))
            if last is not None and current != last and self._conflater is not None:
                self._conflater.touch(STATUS_URI)
            last = current
            await asyncio.sleep(self.status_interval)
        self._status_task = None

    # -- resources ---------------------------------------------------------------------

    def _instructions(self) -> str:
        stores = ", ".join(self.stores) or "none"
        return (
            f"Live state kept by rxagent pipelines (stores: {stores}). Read "
            f"{STATE_URI_PREFIX}<store> or {KEY_URI_TEMPLATE}; subscribe to be told when they "
            "change; call changes_since(store, version) with the version you last saw to get "
            f"only what changed. {STATUS_URI} shows pipeline health."
        )

    async def _on_list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        resources = [
            types.Resource(
                name="status",
                title="rxagent status",
                uri=STATUS_URI,
                description="Pipelines and their stages (counts, drops, in flight, last "
                "errors), state stores and tools.",
                mime_type=_JSON,
            )
        ]
        for name, store in self.stores.items():
            described = self._descriptions.get(name)
            resources.append(
                types.Resource(
                    name=f"state-{name}",
                    title=f"state {name}",
                    uri=store_uri(name),
                    description=(described + ". " if described else "")
                    + f"Every key of state store {name!r} with version, as_of and "
                    "staleness (compact JSON).",
                    mime_type=_JSON,
                    size=None if store.version else 0,
                )
            )
        return types.ListResourcesResult(resources=resources)

    async def _on_list_templates(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        stores = ", ".join(self.stores) or "none"
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    name="state-key",
                    title="one key of a state store",
                    uri_template=KEY_URI_TEMPLATE,
                    description=f"One key's value with version, event time, as_of and "
                    f"staleness (stores: {stores}; percent-encode the key).",
                    mime_type=_JSON,
                )
            ]
        )

    async def _on_read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        text = self.read(uri)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type=_JSON, text=text)]
        )

    def read(self, uri: str) -> str:
        """The JSON text of resource ``uri``; :class:`MCPError` (invalid params) if unknown."""
        parsed = _parse_uri(uri)
        if parsed is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"unknown resource {uri!r}: use {STATUS_URI}, {STATE_URI_PREFIX}<store> or "
                f"{KEY_URI_TEMPLATE}",
                data={"uri": uri},
            )
        kind, store_name, wanted = parsed
        if kind == "status":
            return _dumps(self.status())
        store = self._store(store_name, uri)
        snap = store.snapshot
        now = store.now()  # the store's clock: what its wall_times were stamped with
        if kind == "store":
            data = _store_json(snap, now, self.max_entries)
            view = _changelog_status(store, partitions=False)
            if view is not None:
                data["changelog"] = view
            return _dumps(data)
        key = find_key(snap, wanted)
        entry = None if key is MISSING_KEY else snap.entry(key)
        if entry is None:
            raise MCPError(
                types.INVALID_PARAMS,
                missing_key_message(snap.store, snap, [wanted]),
                data={"uri": uri},
            )
        return _dumps(
            {
                "store": snap.store,
                "key": wanted,
                "value": plain(entry.value),
                "version": entry.version,
                "store_version": snap.version,
                "event_time": _iso(entry.event_time),
                "as_of": _iso(entry.wall_time),
                "staleness_s": _staleness(entry.wall_time, now),
                "updates": entry.updates,
            }
        )

    def _store(self, name: str, uri: str) -> StateStore:
        store = self.stores.get(name)
        if store is None:
            known = ", ".join(map(repr, self.stores)) or "none"
            raise MCPError(
                types.INVALID_PARAMS,
                f"no state store {name!r} (resource {uri!r}); stores: {known}",
                data={"uri": uri},
            )
        return store

    def status(self, *, include_time: bool = True) -> dict[str, Any]:
        """The status resource's data: pipelines, stages, stores, tools, notifications."""
        now = time.time()  # the status's own time stamp (wall)
        pipelines: dict[str, Any] = {}
        if self.app is not None:
            for name, pipeline in self.app.pipelines.items():
                status = pipeline.status().as_dict()
                if not include_time:
                    status.pop("started_at", None)
                    status.pop("stopped_at", None)
                sinks = status["sinks"]
                for sink in pipeline.sinks:
                    suppressions = getattr(sink, "suppressions", None)
                    if callable(suppressions) and sink.name in sinks:
                        try:
                            sinks[sink.name] = {**sinks[sink.name], "suppressions": suppressions()}
                        except Exception as error:  # status must render whatever a sink does
                            sinks[sink.name] = {
                                **sinks[sink.name],
                                "suppressions": f"unavailable: {type(error).__name__}: {error}",
                            }
                pipelines[name] = status
        stores: dict[str, Any] = {}
        for name, store in self.stores.items():
            snap = store.snapshot
            stores[name] = {"version": snap.version, "keys": len(snap)}
            if include_time:
                stores[name]["as_of"] = _iso(snap.wall_time) if snap.version else None
                stores[name]["staleness_s"] = (
                    _staleness(snap.wall_time, store.now()) if snap.version else None
                )
            view = _changelog_status(store, partitions=True)
            if view is not None:
                stores[name]["changelog"] = view
        result: dict[str, Any] = {
            "app": self.app.name if self.app is not None else self.name,
            "pipelines": pipelines,
            "stores": stores,
            "tools": {t.name: t.stats.as_dict() for t in self.tools},
        }
        total = getattr(self.dead_letters, "total", None)
        if isinstance(total, int):
            result["dead_letters"] = total
        letters = getattr(self.dead_letters, "letters", None)  # MemoryDeadLetters keeps them
        if isinstance(letters, list):
            result["recent_dead_letters"] = [
                {
                    "pipeline": getattr(letter, "pipeline", None),
                    "stage": getattr(letter, "stage", None),
                    "error": f"{getattr(letter, 'error_type', '?')}: "
                    f"{getattr(letter, 'message', '')}",
                    "time": _iso(getattr(letter, "time", None)) if include_time else None,
                }
                for letter in letters[-_RECENT_DEAD_LETTERS:]
            ]
        conflater = self._conflater
        followed = sorted(self._interest)
        result["notifications"] = {
            "min_interval_s": self.min_interval,
            "subscribed": followed[:_STATUS_SUBSCRIBED],
            "subscribed_count": len(followed),
            "changes": conflater.touched if conflater else 0,
            "sent": conflater.emitted if conflater else 0,
        }
        if include_time:
            result["time"] = _iso(now)
        return result

    # -- subscriptions -----------------------------------------------------------------

    def _check_subscribable(self, uri: str) -> None:
        """Refuse a URI that names no resource: not rxagent's, or an unknown store. A key
        the store does not hold yet may be followed (it may appear), within the cap."""
        parsed = _parse_uri(uri)
        if parsed is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"cannot subscribe to unknown resource {uri!r}: use {STATUS_URI}, "
                f"{STATE_URI_PREFIX}<store> or {KEY_URI_TEMPLATE}",
                data={"uri": uri},
            )
        if parsed[0] != "status":
            self._store(parsed[1], uri)

    def _check_count(self, count: int, what: str) -> None:
        if count > self.max_subscriptions:
            raise MCPError(
                types.INVALID_PARAMS,
                f"{what} would follow {count} resources, more than the "
                f"{self.max_subscriptions} allowed per session "
                "(RxAgentMCP(max_subscriptions=...)): "
                "unsubscribe from some first, or subscribe to a whole store "
                f"({STATE_URI_PREFIX}<store>) instead of many of its keys",
                data={"limit": self.max_subscriptions},
            )

    async def _on_subscribe(
        self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        uri = str(params.uri)
        self._check_subscribable(uri)
        connection = _connection_of(ctx.session)
        client = self._legacy.get(id(connection))
        if client is not None and uri not in client.uris:
            self._check_count(len(client.uris) + 1, f"subscribing to {uri!r}")
        if client is None:
            client = self._legacy[id(connection)] = _LegacyClient(ctx.session, self._client_gone)
            # the SDK unwinds a connection's exit stack when it closes: release its subscriptions
            stack = getattr(connection, "exit_stack", None)
            if isinstance(stack, contextlib.AsyncExitStack):
                stack.callback(self._client_gone, client)
        if uri not in client.uris:
            client.uris.add(uri)
            self._add_interest(uri)
        return types.EmptyResult()

    async def _on_unsubscribe(
        self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        uri = str(params.uri)
        client = self._legacy.get(id(_connection_of(ctx.session)))
        if client is not None and uri in client.uris:
            client.uris.discard(uri)
            self._drop_interest(uri)
        return types.EmptyResult()

    def _client_gone(self, client: _LegacyClient) -> None:
        client.close()
        for key, known in list(self._legacy.items()):
            if known is client:
                del self._legacy[key]
        for uri in client.uris:
            self._drop_interest(uri)
        client.uris.clear()

    async def _on_listen(
        self, ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        uris = list(dict.fromkeys(map(str, params.notifications.resource_subscriptions or ())))
        self._check_count(len(uris), "this subscriptions/listen request")
        for uri in uris:
            self._check_subscribable(uri)
        for uri in uris:
            self._add_interest(uri)
        try:
            return await self._listen(ctx, params)
        finally:
            for uri in uris:
                self._drop_interest(uri)

    # -- tools -------------------------------------------------------------------------

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        return self.tools.get(name).json_schema() if name in self.tools else None

    async def _on_list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.json_schema())
                for t in self.tools
            ]
        )

    async def _on_call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await self.call_tool(params.name, params.arguments)

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None
    ) -> types.CallToolResult:
        """Validate and run tool ``name``; every failure is a tool error result
        (``isError``) with a message the model can act on, never a crash."""
        try:
            result = await self.tools.invoke(name, dict(arguments or {}))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not isinstance(error, ConfigurationError | LookupError | ValueError):
                log.warning("MCP tool %r failed: %s: %s", name, type(error).__name__, error)
            message = str(error) or type(error).__name__
            if not _is_rxagent_error(error):
                message = f"{type(error).__name__}: {message}"
            message = redact(message)
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=message)], is_error=True
            )
        value = plain(result)
        text = value if isinstance(value, str) else _dumps(value)
        structured = value if isinstance(value, dict) else None
        if structured is not None:
            structured = json.loads(text)  # plain JSON types only
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=structured
        )


def _is_rxagent_error(error: BaseException) -> bool:
    from ..exceptions import RxAgentError

    return isinstance(error, RxAgentError)


def _connection_of(session: ServerSession) -> object:
    """The connection a per-request session belongs to (one key per client)."""
    # The SDK builds one ServerSession per request around the connection; its
    # standalone channel (what resources/updated uses) belongs to the connection.
    return getattr(session, "_connection", session)


class _StdinLines:
    """This process's stdin as async text lines read on the event loop (cancellable).

    Reads a duplicate of fd 0, so closing it leaves fd 0 open, and puts fd 0's
    blocking mode back when closed. :meth:`open` returns ``None`` when stdin is
    not something the loop can watch (a regular file): the SDK's reader then.
    """

    LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; tool results can be large

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        self._reader = reader
        self._transport = transport

    @classmethod
    async def open(cls) -> _StdinLines | None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=cls.LIMIT)
        pipe = os.fdopen(os.dup(0), "rb", buffering=0)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
        except (ValueError, OSError):  # a regular file, or no stdin: not pollable
            pipe.close()
            return None
        return cls(reader, transport)

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")

    def close(self) -> None:
        self._transport.close()
        with contextlib.suppress(OSError):
            os.set_blocking(0, True)


def _store_json(snap: Snapshot, now: float, max_entries: int | None = None) -> dict[str, Any]:
    """The whole store; past ``max_entries`` keys, the most recently updated ones
    and how many were left out, so one read cannot flood an agent's context."""
    entries = list(snap.entries())
    data: dict[str, Any] = {
        "store": snap.store,
        "version": snap.version,
        "as_of": _iso(snap.wall_time) if snap.version else None,
        "staleness_s": _staleness(snap.wall_time, now) if snap.version else None,
        "keys": len(snap),
    }
    if max_entries is not None and len(entries) > max_entries:
        entries = sorted(entries, key=lambda e: e.version, reverse=True)[:max_entries]
        data["omitted"] = len(snap) - max_entries
        data["hint"] = (
            "the most recently updated entries are shown; read "
            f"{KEY_URI_TEMPLATE} for one key, or call changes_since / query_state"
        )
    data["entries"] = {key_text(e.key): plain(e.value) for e in entries}
    return data


def _changelog_status(store: StateStore, *, partitions: bool) -> dict[str, Any] | None:
    """How fresh a store served from its changelog is (``rxagent mcp --from-changelog``):
    what :meth:`~rxagent.kafka.StateView.describe` says, times as ISO strings; ``None``
    for any other store."""
    from ..kafka.view import StateView

    if not isinstance(store, StateView):
        return None
    info = store.describe()
    keep = (
        "changelog",
        "state",
        "caught_up",
        "lag",
        "newest_record_at",
        "last_applied_at",
        "records",
        "error",
    )
    out: dict[str, Any] = {k: info[k] for k in keep}
    for k in ("newest_record_at", "last_applied_at"):
        out[k] = _iso(out[k])
    if partitions:
        out["group_id"] = info["group_id"]
        out["client_errors"] = info["client_errors"]
        out["last_client_error"] = info["last_client_error"]
        out["partitions"] = {
            p: {**part, "newest_record_at": _iso(part["newest_record_at"])}
            for p, part in info["partitions"].items()
        }
    return out


def _parse_uri(uri: str) -> tuple[Literal["status", "store", "key"], str, str] | None:
    """``("status", "", "")``, ``("store", store, "")`` or ``("key", store, key)``."""
    if uri == STATUS_URI:
        return ("status", "", "")
    if not uri.startswith(STATE_URI_PREFIX):
        return None
    parts = uri[len(STATE_URI_PREFIX) :].split("/")
    if len(parts) == 1 and parts[0]:
        return ("store", unquote(parts[0]), "")
    if len(parts) == 2 and parts[0] and parts[1]:
        return ("key", unquote(parts[0]), unquote(parts[1]))
    return None


def _changes_since_tool(stores: Mapping[str, StateStore]) -> Tool:
    """``changes_since(store, version)``: what changed in a store after ``version``."""
    names = tuple(stores)
    store_field: Any = (
        Literal[names],
        Field(names[0] if len(names) == 1 else ..., description="Name of the state store."),
    )
    args_model: type[BaseModel] = create_model(
        "ChangesSinceArgs",
        __config__=ConfigDict(extra="forbid"),
        store=store_field,
        version=(
            int,
            Field(
                0,
                ge=0,
                description="The version you last saw (the 'version' of a previous answer or "
                "resource read); 0 for everything.",
            ),
        ),
    )

    async def changes_since(store: str, version: int = 0) -> dict[str, Any]:
        target = stores[store]
        reset = version > target.version  # the store started over (a restart)
        changes = target.changes_since(0 if reset else version)
        snap = target.snapshot
        out: dict[str, Any] = {
            "store": store,
            "since": version,
            "version": changes.version,
            "as_of": _iso(snap.wall_time) if snap.version else None,
            "changed": {key_text(k): plain(e.value) for k, e in changes.changed.items()},
            "deleted": [key_text(k) for k in changes.deleted],
        }
        if reset:
            out["reset"] = True
        return out

    return Tool(
        changes_since,
        name="changes_since",
        description="What changed in a state store after a version: pass the 'version' from "
        "your previous call (0 the first time) to get only the keys changed or deleted since; "
        "keep the returned 'version' for next time.",
        args_model=args_model,
    )
