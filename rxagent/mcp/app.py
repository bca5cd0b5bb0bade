"""Running a pipeline file's app and its MCP server together on one event loop, or
(``from_changelog=True``) serving the file's stores from their changelog topics
without running any pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from ..exceptions import ConfigurationError
from .server import RxAgentMCP, transport_security

if TYPE_CHECKING:
    from ..config import BuiltApp, Config
    from ..kafka.view import StateView
    from ..state.durable import CodecName

__all__ = ["DEFAULT_PORT", "changelog_views", "run_mcp", "serve_built", "serve_file", "serve_views"]

log = logging.getLogger("rxagent.mcp")

#: The streamable-HTTP port when none is given.
DEFAULT_PORT = 8765

Transport = Literal["stdio", "http"]


def run_mcp(
    file: str,
    *,
    transport: Transport,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    pipelines: list[str] | None = None,
    min_interval: float = 0.5,
    path: str = "/mcp",
    from_changelog: bool = False,
    allowed_hosts: list[str] | None = None,
    allowed_origins: list[str] | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Load pipeline file ``file``, run its pipelines and serve them over MCP until stopped.

    ``transport="stdio"`` serves one client on stdin/stdout (until stdin
    closes); ``"http"`` serves streamable HTTP at ``http://host:port/path``
    and needs ``token``: requests must carry ``Authorization: Bearer <token>``.
    ``pipelines`` runs only those named (default: all). ``min_interval`` is the
    least time in seconds between two change notifications of one resource.

    ``from_changelog=True`` runs no pipeline: each store is served from the
    changelog topic its Kafka-sourced pipeline's workers write (the whole state,
    every partition: :func:`changelog_views`); ``pipelines`` then names the
    pipelines whose stores are served.

    ``host`` other than a loopback address needs ``allowed_hosts`` (the ``Host``
    header values clients send; ``allowed_origins`` for browser clients), or
    :class:`~rxagent.exceptions.ConfigurationError` before anything starts
    (:func:`~rxagent.mcp.server.transport_security`). ``ready(url)`` is called
    once HTTP listens, with the port bound.

    Raises :class:`~rxagent.exceptions.ConfigurationError` (and
    :class:`~rxagent.config.ConfigFileError`) before serving when the file or
    the options are wrong.
    """
    asyncio.run(
        serve_file(
            file,
            transport=transport,
            host=host,
            port=port,
            token=token,
            pipelines=pipelines,
            min_interval=min_interval,
            path=path,
            from_changelog=from_changelog,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
            ready=ready,
        )
    )


async def serve_file(
    file: str,
    *,
    transport: Transport,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    pipelines: list[str] | None = None,
    min_interval: float = 0.5,
    path: str = "/mcp",
    ready: Callable[[str], None] | None = None,
    from_changelog: bool = False,
    allowed_hosts: list[str] | None = None,
    allowed_origins: list[str] | None = None,
) -> None:
    """:func:`run_mcp` on the running loop; ``ready(url)`` is called once HTTP listens."""
    from ..config import load

    _check_transport(transport, token, host, allowed_hosts, allowed_origins)
    config = load(file)
    if from_changelog:
        from ..config.loader import tool_from_declaration
        from ..tools.tool_registry import ToolRegistry

        views = changelog_views(config, pipelines=pipelines)
        tools = ToolRegistry()  # the file's tools; no pipeline and no store of its own
        for tool_name, decl in config.model.tools.items():
            tools.register(tool_from_declaration(tool_name, decl))
        await serve_views(
            views,
            transport=transport,
            host=host,
            port=port,
            token=token,
            name=Path(config.file).stem,
            tools=tools,
            descriptions={n: d.description if d else None for n, d in config.model.state.items()},
            min_interval=min_interval,
            path=path,
            ready=ready,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
        )
        return
    built = config.build(pipelines=pipelines)
    await serve_built(
        built,
        transport=transport,
        host=host,
        port=port,
        token=token,
        min_interval=min_interval,
        path=path,
        ready=ready,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
    )


def _check_transport(
    transport: str,
    token: str | None,
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    allowed_origins: list[str] | None = None,
) -> None:
    if transport not in ("stdio", "http"):
        raise ConfigurationError(f"MCP transport must be 'stdio' or 'http', got {transport!r}")
    if transport == "http" and not token:
        raise ConfigurationError(
            "serving MCP over HTTP needs a bearer token: set one in an environment variable "
            "(--token-env, default RXAGENT_MCP_TOKEN); clients send 'Authorization: Bearer <token>'"
        )
    if transport == "http":
        transport_security(host, allowed_hosts, allowed_origins)  # refuse before anything starts


async def serve_built(
    built: BuiltApp,
    *,
    transport: Transport,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    min_interval: float = 0.5,
    path: str = "/mcp",
    ready: Callable[[str], None] | None = None,
    allowed_hosts: list[str] | None = None,
    allowed_origins: list[str] | None = None,
) -> None:
    """Run ``built``'s pipelines and serve its stores, tools and status over MCP.

    The pipelines and the server share this event loop. When the server ends
    (stdin closed, or HTTP interrupted) the pipelines are drained and stopped.
    Pipelines that finish (a file replayed to its end) leave their state
    served until then.
    """
    _check_transport(transport, token, host, allowed_hosts, allowed_origins)
    model = built.config.model
    descriptions = {name: decl.description if decl else None for name, decl in model.state.items()}
    mcp = RxAgentMCP(
        stores=built.stores,
        tools=built.tools,
        app=built.app,
        name=built.app.name,
        descriptions=descriptions,
        min_interval=min_interval,
        dead_letters=built.dead_letters,
    )
    drain_timeout = float(model.settings.drain_timeout)
    async with mcp:
        running = asyncio.ensure_future(built.app.run(drain_timeout=drain_timeout))
        running.add_done_callback(_report)
        await asyncio.sleep(0)  # let the app install its stop event before anything can stop it
        try:
            await _serve(
                mcp,
                transport,
                token=token,
                host=host,
                port=port,
                path=path,
                ready=ready,
                allowed_hosts=allowed_hosts,
                allowed_origins=allowed_origins,
            )
        finally:
            built.app.request_stop()
            try:
                await asyncio.wait_for(asyncio.shield(running), drain_timeout + 5.0)
            except (TimeoutError, asyncio.CancelledError):
                running.cancel()
                with contextlib.suppress(BaseException):
                    await running
            except Exception as error:  # already logged by _report when the run ended
                log.debug("the pipelines' run ended with %s", type(error).__name__)


def changelog_views(config: Config, *, pipelines: list[str] | None = None) -> dict[str, StateView]:
    """A :class:`~rxagent.kafka.StateView` per state store of ``config`` (those written
    by ``pipelines`` when named), reading the changelog its Kafka-sourced writer keeps:
    group id, bootstrap servers and client settings come from that pipeline's
    ``kafka`` source. Nothing connects yet.

    Raises :class:`ConfigurationError` naming every store without a Kafka-sourced
    writer keeping a changelog, and any store written from two Kafka groups."""
    from ..kafka.view import state_view

    chosen = list(config.pipelines) if not pipelines else list(pipelines)
    writers: dict[str, dict[tuple[str, str], tuple[str, Any]]] = {}
    others: dict[str, list[str]] = {}
    for name in chosen:
        spec = config.pipelines[name]
        for sink in spec.sinks:
            attr = sink.kind.writes_store
            if attr is None:
                continue
            store = getattr(sink.params, attr)
            source = spec.source
            decl = config.model.state.get(store)
            if getattr(decl, "durable", None) is False:
                others.setdefault(store, []).append(f"{name} (durable: false, no changelog)")
            elif source.kind.name == "kafka" and getattr(source.params, "changelog", True):
                params = source.params
                place = (params.group_id, params.bootstrap_servers)
                writers.setdefault(store, {}).setdefault(place, (name, params))
            else:
                others.setdefault(store, []).append(f"{name} ({source.kind.name})")
    everything = set(chosen) == set(config.pipelines)
    stores = list(config.model.state) if everything else [*writers, *others]
    stores = list(dict.fromkeys(s for s in stores if s in config.model.state))
    missing = [s for s in stores if s not in writers]
    if missing:
        described = "; ".join(
            f"{s!r} is written by {', '.join(others[s])}, not with a changelog"
            if s in others
            else f"{s!r} is written by no pipeline"
            for s in missing
        )
        raise ConfigurationError(
            f"{config.file}: --from-changelog serves each state store from the changelog "
            f"topic of the pipeline with a kafka source that writes it, but {described}; "
            "serve such stores by running their pipelines (without --from-changelog)"
        )
    if not stores:
        raise ConfigurationError(f"{config.file}: no state store to serve from a changelog")
    views: dict[str, StateView] = {}
    for store in stores:
        places = writers[store]
        if len(places) > 1:
            named = ", ".join(f"{n} (group {g!r})" for (g, _), (n, _) in places.items())
            raise ConfigurationError(
                f"{config.file}: state store {store!r} is written from several Kafka groups "
                f"({named}); each keeps a changelog of its own: serve one with --pipeline NAME"
            )
        ((group_id, bootstrap), (_, params)), *_ = places.items()
        # the codec the writers' store uses, when the file can say so
        codec = cast("CodecName", getattr(config.model.state.get(store), "codec", None) or "pickle")
        views[store] = state_view(
            store,
            group_id=group_id,
            bootstrap_servers=bootstrap,
            config=params.config,
            codec=codec,
        )
    return views


async def serve_views(
    views: dict[str, StateView],
    *,
    transport: Transport,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    name: str = "rxagent",
    tools: Any = None,
    descriptions: dict[str, str | None] | None = None,
    min_interval: float = 0.5,
    path: str = "/mcp",
    ready: Callable[[str], None] | None = None,
    allowed_hosts: list[str] | None = None,
    allowed_origins: list[str] | None = None,
) -> None:
    """Read every view to the end of its changelog, then serve them over MCP (each
    following its changelog live) until the server ends; the views are closed then."""
    _check_transport(transport, token, host, allowed_hosts, allowed_origins)
    try:
        await asyncio.gather(*(view.start() for view in views.values()))
        for view in views.values():
            info = view.describe()
            log.info(
                "serving state %r from changelog %s: %d keys, read in %.1fs",
                view.name,
                view.topic,
                info["keys"],
                info["catch_up_seconds"] or 0.0,
            )
        mcp = RxAgentMCP(
            stores=views,
            tools=tools,
            name=name,
            descriptions=descriptions,
            min_interval=min_interval,
        )
        async with mcp:
            await _serve(
                mcp,
                transport,
                token=token,
                host=host,
                port=port,
                path=path,
                ready=ready,
                allowed_hosts=allowed_hosts,
                allowed_origins=allowed_origins,
            )
    finally:
        await asyncio.gather(*(view.aclose() for view in views.values()), return_exceptions=True)


async def _serve(mcp: RxAgentMCP, transport: Transport, **http: Any) -> None:
    """Serve ``mcp`` on stdio (until a signal) or over HTTP (``http``: serve_http's options)."""
    if transport == "stdio":
        await _until_signalled(mcp.serve_stdio())
    else:
        await mcp.serve_http(**http)


async def _until_signalled(serving: Coroutine[Any, Any, None]) -> None:
    """Serve until the client closes stdin, or SIGINT / SIGTERM arrives (then stop
    serving, so the caller drains the pipelines before the process ends)."""
    from .._signals import stop_on_signals

    stop = stop_on_signals()
    server = asyncio.ensure_future(serving)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({server, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not server.done():
            server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


def _report(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("the pipelines stopped with an error: %s: %s", type(error).__name__, error)
