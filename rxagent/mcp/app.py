"""Running a pipeline file's app and its MCP server together on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

from ..exceptions import ConfigurationError
from .server import RxAgentMCP

if TYPE_CHECKING:
    from ..config import BuiltApp

__all__ = ["DEFAULT_PORT", "run_mcp", "serve_built", "serve_file"]

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
) -> None:
    """Load pipeline file ``file``, run its pipelines and serve them over MCP until stopped.

    ``transport="stdio"`` serves one client on stdin/stdout (until stdin
    closes); ``"http"`` serves streamable HTTP at ``http://host:port/path``
    and needs ``token``: requests must carry ``Authorization: Bearer <token>``.
    ``pipelines`` runs only those named (default: all). ``min_interval`` is the
    least time in seconds between two change notifications of one resource.

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
) -> None:
    """:func:`run_mcp` on the running loop; ``ready(url)`` is called once HTTP listens."""
    from ..config import load

    _check_transport(transport, token)
    built = load(file).build(pipelines=pipelines)
    await serve_built(
        built,
        transport=transport,
        host=host,
        port=port,
        token=token,
        min_interval=min_interval,
        path=path,
        ready=ready,
    )


def _check_transport(transport: str, token: str | None) -> None:
    if transport not in ("stdio", "http"):
        raise ConfigurationError(f"MCP transport must be 'stdio' or 'http', got {transport!r}")
    if transport == "http" and not token:
        raise ConfigurationError(
            "serving MCP over HTTP needs a bearer token: set one in an environment variable "
            "(--token-env, default RXAGENT_MCP_TOKEN); clients send 'Authorization: Bearer <token>'"
        )


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
) -> None:
    """Run ``built``'s pipelines and serve its stores, tools and status over MCP.

    The pipelines and the server share this event loop. When the server ends
    (stdin closed, or HTTP interrupted) the pipelines are drained and stopped.
    Pipelines that finish (a file replayed to its end) leave their state
    served until then.
    """
    _check_transport(transport, token)
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
            if transport == "stdio":
                await _until_signalled(mcp.serve_stdio())
            else:
                await mcp.serve_http(token=token, host=host, port=port, path=path, ready=ready)
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
