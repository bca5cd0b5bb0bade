"""The ``rxagent`` command line.

Verbs: ``demo`` (the market-feed demo), ``validate``, ``graph``, ``schema``, ``state``,
``run``, ``replay``, ``test``, ``dry-run`` and ``mcp`` for pipeline files
(docs/cli.md, docs/mcp.md).

Exit codes: 0 success; 1 an invalid pipeline file, a failed pipeline or a
failed test; 2 a usage error (a missing file, an unknown pipeline name, a bad
option). User errors are one clear line on stderr, never a traceback; ``-vv``
adds the traceback of an unexpected error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__

if TYPE_CHECKING:
    from .config import BuiltApp, Config
    from .runtime import PipelineStatus

__all__ = ["main"]

USAGE = 2
INVALID = 1


class _Exit(Exception):
    """Leave the command with ``code`` after printing ``message`` (if any) on stderr."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fail(code: int, message: str) -> NoReturn:
    raise _Exit(code, message)


@contextlib.contextmanager
def _guard(verbose: int) -> Iterator[None]:
    """Turn every error into one line on stderr and an exit code (no traceback)."""
    from ._secrets import redact
    from .exceptions import ConfigurationError

    try:
        yield
    except _Exit as done:
        if done.message:
            click.echo(redact(f"rxagent: {done.message}"), err=True)
        raise SystemExit(done.code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except ConfigurationError as error:  # a problem the user can fix
        click.echo(redact(f"rxagent: {error}"), err=True)
        raise SystemExit(INVALID) from None
    except Exception as error:
        if verbose >= 2:
            raise
        first = redact(str(error).strip() or "").split("\n")[0]
        click.echo(
            f"rxagent: unexpected error: {type(error).__name__}: {first} "
            "(run with -vv for the traceback)",
            err=True,
        )
        raise SystemExit(INVALID) from None


def _verbosity() -> int:
    ctx = click.get_current_context()
    root = ctx.find_root()
    return int(root.params.get("verbose", 0) or 0)


def _add_python_path(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    from .config.loader import add_import_paths

    add_import_paths(value)


#: ``--path DIR`` (repeatable) for every command that reads pipeline files: python
#: references also import from DIR (besides the file's folder and the current directory).
_python_path = click.option(
    "--path",
    "python_path",
    multiple=True,
    type=click.Path(file_okay=False),
    expose_value=False,
    is_eager=True,
    callback=_add_python_path,
    help="Also import the file's python references from DIR (repeatable).",
)


@click.group()
@click.version_option(__version__, prog_name="rxagent")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """rxagent: reactive pipelines that turn live data into agent state and tool calls."""
    from ._secrets import FILTER

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # every record printed is redacted
        handler.addFilter(FILTER)


@main.command()
@click.option("--duration", type=float, default=12.0, show_default=True, help="Seconds to run.")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="Ticks per second.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed of the feed.")
@click.option("--window", type=float, default=5.0, show_default=True, help="Window seconds.")
@click.option(
    "--threshold", type=float, default=0.3, show_default=True, help="Alert on a move of this %."
)
@click.option("--live/--no-live", default=None, help="Live table (default: when on a terminal).")
@click.option(
    "--http",
    metavar="HOST:PORT",
    help="Also serve the dashboard, /metrics, /healthz and /ready there (docs/operations.md).",
)
def demo(
    duration: float,
    rate: float,
    seed: int,
    window: float,
    threshold: float,
    live: bool | None,
    http: str | None,
) -> None:
    """Run the market-feed demo: a simulated feed served on 127.0.0.1 (no outside network)
    read over WebSocket, deduplicated, reordered, throttled and windowed into live state,
    with an alert tool activated when a move passes the threshold."""
    from .demo import run_demo

    if live is None:
        live = sys.stdout.isatty()
    try:
        asyncio.run(
            run_demo(
                duration=duration,
                rate=rate,
                seed=seed,
                live=live,
                window=window,
                threshold=threshold,
                http=http,
            )
        )
    except KeyboardInterrupt:  # pragma: no cover - second Ctrl-C
        raise SystemExit(130) from None


# -- loading -----------------------------------------------------------------------------


def _read(path: str) -> Config:
    """Load a pipeline file; a missing file is a usage error (2), an invalid one
    prints its located problems and is exit 1."""
    from .config import ConfigFileError, load
    from .exceptions import ConfigurationError

    if not Path(path).is_file():
        what = "is a directory" if Path(path).is_dir() else "does not exist"
        _fail(USAGE, f"pipeline file {path!r} {what}")
    try:
        return load(path)
    except ConfigFileError as error:
        for problem in error.problems:
            click.echo(str(problem), err=True)
        raise _Exit(INVALID) from None
    except ConfigurationError as error:
        _fail(USAGE, str(error))


def _pick(config: Config, names: Sequence[str]) -> list[str]:
    """The pipelines named (all when none is); an unknown name is a usage error."""
    for name in names:
        if name not in config.pipelines:
            _fail(
                USAGE,
                f"{config.file}: no pipeline named {name!r}; the file has "
                f"{', '.join(config.pipelines)}",
            )
    return list(dict.fromkeys(names)) or list(config.pipelines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- validate, graph, schema ---------------------------------------------------------------


@main.command()
@_python_path
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def validate(files: tuple[str, ...]) -> None:
    """Check pipeline files: YAML, kinds, parameters, state stores, tools and test
    cases. Prints "FILE: ok (...)" or every problem as file:line:col: path: message."""
    from .config import ConfigFileError, load
    from .config.testing import check_cases
    from .exceptions import ConfigurationError

    with _guard(_verbosity()):
        code = 0
        for path in files:
            if not Path(path).is_file():
                click.echo(f"{path}: error: no such file", err=True)
                code = max(code, USAGE)
                continue
            try:
                config = load(path)
            except ConfigFileError as error:
                for problem in error.problems:
                    click.echo(str(problem))
                code = max(code, INVALID)
                continue
            except ConfigurationError as error:
                click.echo(f"{path}: error: {error}", err=True)
                code = max(code, USAGE)
                continue
            problems = check_cases(config)
            if problems:
                for problem in problems:
                    click.echo(str(problem))
                code = max(code, INVALID)
                continue
            model = config.model
            tests = len(model.tests)
            click.echo(
                f"{path}: ok ({_plural(len(config.pipelines), 'pipeline')}: "
                f"{', '.join(config.pipelines)}; {_plural(len(model.state), 'state store')}; "
                f"{_plural(len(model.tools), 'tool')}"
                + (f"; {_plural(tests, 'test')}" if tests else "")
                + ")"
            )
        if code:
            raise _Exit(code)


@main.command()
@_python_path
@click.argument("file")
@click.option(
    "--pipeline", "pipelines", multiple=True, metavar="NAME", help="Only this pipeline (repeat)."
)
def graph(file: str, pipelines: tuple[str, ...]) -> None:
    """Print a Mermaid flowchart of FILE's pipelines, state stores and tools."""
    from .config.graph import mermaid

    with _guard(_verbosity()):
        config = _read(file)
        names = _pick(config, pipelines)
        click.echo(mermaid(config, pipelines=names), nl=False)


def schema_text() -> str:
    """The JSON Schema of pipeline files as ``rxagent schema`` prints it."""
    from .config.schema import json_schema

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file.")
def schema(output: str | None) -> None:
    """Print (or write) the JSON Schema of pipeline files, for editors and CI."""
    with _guard(_verbosity()):
        text = schema_text()
        if output is None:
            click.echo(text, nl=False)
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as error:
            _fail(USAGE, f"cannot write {output!r}: {error.strerror}")
        click.echo(f"wrote {output}", err=True)


# -- run and replay ------------------------------------------------------------------------


class _Rates:
    """Events per second over the last second, from counters sampled over time."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self, counts: dict[str, int], now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        self._samples.append((now, counts))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        then, old = self._samples[0]
        span = now - then
        if span <= 0:
            return {name: 0.0 for name in counts}
        return {name: max(0, n - old.get(name, 0)) / span for name, n in counts.items()}


def _counts(status: PipelineStatus) -> dict[str, int]:
    counts = {"": int(status.flow.get("emitted", 0))}
    for name, stage in status.stages.items():
        counts[name] = int(stage.get("in", 0))
    return counts


def _totals(status: PipelineStatus) -> dict[str, int]:
    out = {"dropped": 0, "dead_lettered": 0, "errors": 0}
    for stage in status.stages.values():
        for field in out:
            out[field] += int(stage.get(field, 0) or 0)
    return out


def _suppressed(status: PipelineStatus) -> str:
    """``stage: reason N, ...`` of what stages held back (why something did not fire)."""
    parts = []
    for stage, info in status.suppressions.items():
        totals = info.get("totals") or {}
        if totals:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(totals.items()))
            parts.append(f"{stage}: {reasons}")
    return "; ".join(parts)


def _last_error(status: PipelineStatus) -> str | None:
    """The pipeline's failure, else its stages' most frequent error (not merely the
    latest: a rare error must not hide the one hitting most events)."""
    if status.last_error:
        return status.last_error
    best: tuple[int, str] | None = None
    for name, stage in status.stages.items():
        for top in stage.get("top_errors") or ():
            if best is None or top["count"] > best[0]:
                best = (top["count"], f"{name}: {top['error']} ({top['count']:,}x)")
        if best is None and stage.get("last_error"):
            best = (0, f"{name}: {stage['last_error']}")
    return None if best is None else best[1]


def _storms(status: PipelineStatus) -> list[str]:
    """What to say of stages that dead-lettered most of what they received."""
    from .context import STORM_SHARE, dead_letter_summary

    return [
        dead_letter_summary(name, dead, stage.get("in", 0), stage.get("top_errors") or [])
        for name, stage in status.stages.items()
        if (dead := stage.get("dead_lettered", 0))
        and dead > STORM_SHARE * max(stage.get("in", 0), 1)
    ]


def _compact(value: Any, limit: int = 80) -> str:
    from ._secrets import redact

    try:
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    text = redact(text)  # before truncating: a secret's prefix must not show
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Monitor:
    """What ``rxagent run`` shows while pipelines run: a live table or log lines."""

    def __init__(self, built: BuiltApp) -> None:
        self.built = built
        self.rates = {name: _Rates() for name in built.pipelines}
        self.last: dict[str, dict[str, float]] = {}

    def statuses(self) -> dict[str, PipelineStatus]:
        out = {}
        for name, pipeline in self.built.pipelines.items():
            status = pipeline.status()
            self.last[name] = self.rates[name].sample(_counts(status))
            out[name] = status
        return out

    def log_lines(self) -> list[str]:
        redact = self.built.config.redact
        lines = []
        stamp = time.strftime("%H:%M:%S")
        for name, status in self.statuses().items():
            flow = status.flow
            totals = _totals(status)
            fields: list[tuple[str, Any]] = [
                ("pipeline", name),
                ("state", str(status.state)),
                ("events", flow.get("emitted", 0)),
                ("rate", f"{self.last[name].get('', 0.0):.1f}/s"),
                ("in_flight", flow.get("in_flight", 0)),
                ("dropped", totals["dropped"]),
                ("dead_lettered", totals["dead_lettered"]),
                ("errors", totals["errors"]),
            ]
            lag = status.source.get("lag")
            if lag is not None:
                fields.append(("lag", lag))
            waiting = status.source.get("waiting")
            if waiting:
                fields.append(("waiting", json.dumps(waiting)))
            health, attempt, reconnects, source_error = self._health(status)
            if health:
                fields.append(("source", health))
            if attempt:
                fields.append(("attempt", attempt))
            if reconnects:
                fields.append(("reconnects", reconnects))
            error = _last_error(status) or source_error
            if error:
                fields.append(("last_error", json.dumps(error)))
            lines.append(redact(f"{stamp} " + " ".join(f"{k}={v}" for k, v in fields)))
        return lines

    @staticmethod
    def _health(status: PipelineStatus) -> tuple[str | None, int, int, str | None]:
        """The source's health (``describe()["health"]``): its state, the attempt count
        while not connected, reconnects so far, and the last error while not connected."""
        source = status.source
        health = source.get("health") or {}
        state = health.get("state")
        down = state not in (None, "connected", "stopped")
        attempt = int(health.get("attempt") or 0) if down else 0
        reconnects = int(source.get("reconnects") or 0)
        error = health.get("last_error") if down or state == "stopped" else None
        return state, attempt, reconnects, error

    def view(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        redact = self.built.config.redact
        parts: list[Any] = []
        for name, status in self.statuses().items():
            flow = status.flow
            rates = self.last[name]
            lag = status.source.get("lag")
            health, attempt, reconnects, source_error = self._health(status)
            table = Table(
                title=f"pipeline {name} - {status.state}",
                caption=redact(
                    f"events {flow.get('emitted', 0)} ({rates.get('', 0.0):.1f}/s) | in flight "
                    f"{flow.get('in_flight', 0)}/{flow.get('capacity', 0)}"
                    + (f" | lag {lag}" if lag is not None else "")
                    + (
                        f" | source {health}"
                        + (f" (attempt {attempt})" if attempt else "")
                        + (f", {reconnects} reconnects" if reconnects else "")
                        if health
                        else ""
                    )
                    + (
                        f" | waiting: {waiting}"
                        if (waiting := status.source.get("waiting"))
                        else ""
                    )
                    + (f" | error: {status.last_error}" if status.last_error else "")
                    + (
                        f" | source error: {source_error}"
                        if source_error and not status.last_error
                        else ""
                    )
                ),
                title_justify="left",
                min_width=60,
            )
            columns = ("stage", "in", "out", "rate/s", "dropped", "dead letters", "in flight")
            for col in (*columns, "last error"):
                table.add_column(col, justify="left" if col in ("stage", "last error") else "right")
            source = status.source
            emitted = str(flow.get("emitted", 0))
            table.add_row(
                f"{source.get('name', 'source')} ({source.get('kind', 'source')})",
                "",
                emitted,
                f"{rates.get('', 0.0):.1f}",
                "",
                str(source.get("dead_lettered", "")),
                str(flow.get("in_flight", 0)),
                redact(source_error or ""),
            )
            for stage_name, stage in status.stages.items():
                sink = status.sinks.get(stage_name, {})
                busy = (
                    str(int(sink.get("running", 0)) + int(sink.get("queued", 0)))
                    if "running" in sink
                    else ""
                )
                table.add_row(
                    stage_name,
                    str(stage.get("in", 0)),
                    str(stage.get("out", 0)),
                    f"{rates.get(stage_name, 0.0):.1f}",
                    str(stage.get("dropped", 0)),
                    str(stage.get("dead_lettered", 0)),
                    busy,
                    redact(str(stage.get("last_error") or "")),
                )
            suppressed = _suppressed(status)
            if suppressed:
                table.caption = redact(f"held back: {suppressed}")
                table.caption_justify = "left"
            parts.append(table)
        for store_name, store in self.built.stores.items():
            table = Table(
                title=f"state {store_name} v{store.version} - {_plural(len(store), 'key')}"
                + _durability(store.durability()),
                title_justify="left",
                min_width=40,
            )
            table.add_column("key")
            table.add_column("value")
            entries = list(store.snapshot.to_dict().items())
            for key, value in entries[:10]:
                table.add_row(redact(str(key)), redact(_compact(value)))
            if len(entries) > 10:
                table.add_row("...", f"{len(entries) - 10} more")
            parts.append(table)
        return Group(*parts)


def _durability(info: dict[str, Any]) -> str:
    """A durable store's restore progress or checkpoint age, for the live view."""
    if not info:
        return ""
    if info.get("restoring"):
        return f" - restoring {info['restoring']}: {info.get('restore_read', 0)} changes read"
    last = info.get("last_checkpoint")
    if last is None:
        return f" - durable, restored {_plural(int(info.get('restored', 0)), 'key')}"
    return f" - checkpoint {max(0.0, time.time() - last):.1f}s ago"


def _final(built: BuiltApp, statuses: dict[str, PipelineStatus], max_entries: int = 50) -> int:
    """Print the final state; returns the exit code (1 if a pipeline failed)."""
    redact = built.config.redact
    code = 0
    for name, status in statuses.items():
        totals = _totals(status)
        line = (
            f"pipeline {name}: {status.state}"
            + (" (completed)" if status.completed else "")
            + f", {status.flow.get('emitted', 0)} events, {totals['dropped']} dropped, "
            f"{totals['dead_lettered']} dead-lettered"
        )
        if status.last_error:
            code = INVALID
            where = f" in {status.failed_stage!r}" if status.failed_stage else ""
            line += f"; failed{where}: {status.last_error}"
        click.echo(redact(line))
        for storm in _storms(status):
            click.echo(redact(f"  {storm}"))
        suppressed = _suppressed(status)
        if suppressed:
            click.echo(redact(f"  held back: {suppressed}"))
    for store_name, store in built.stores.items():
        entries = list(store.snapshot.to_dict().items())
        click.echo(
            redact(f"state {store_name} (version {store.version}, {_plural(len(store), 'key')}):")
        )
        for key, value in entries[:max_entries]:
            click.echo(redact(f"  {key}: {_compact(value, 200)}"))
        if len(entries) > max_entries:
            click.echo(f"  ... {_plural(len(entries) - max_entries, 'more key')}")
    total = getattr(built.dead_letters, "total", None)
    if total is not None:
        click.echo(f"dead letters: {total}")
    return code


@dataclass
class _Http:
    """The operations HTTP server of ``rxagent run`` (``--http`` or ``settings.http``)."""

    host: str
    port: int
    token: str | None = None
    mcp: bool = False
    allowed_hosts: list[str] = dataclasses.field(default_factory=list)
    allowed_origins: list[str] = dataclasses.field(default_factory=list)
    health_threshold: float = 5.0
    #: Say where it serves on stderr (text logs); JSON logs carry it as a record.
    announce: bool = True


def _http_options(
    config: Config,
    listen: str | None,
    token_env: str,
    mcp: bool,
    allowed_hosts: Sequence[str],
    allowed_origins: Sequence[str],
) -> _Http | None:
    """``--http`` and its options over ``settings.http``; None: no HTTP server."""
    import os

    from .observe.http import parse_listen

    settings = config.model.settings.http
    if listen is None and settings is None:
        if mcp:
            _fail(USAGE, "--mcp serves MCP on the --http server: give --http HOST:PORT too")
        return None
    host, port = parse_listen(listen if listen is not None else settings.listen)  # type: ignore[union-attr]
    token = os.environ.get(token_env) or (settings.token if settings is not None else None)
    http = _Http(
        host,
        port,
        token=token or None,
        mcp=mcp or (settings is not None and settings.mcp),
        allowed_hosts=[*(settings.allow_hosts if settings else ()), *allowed_hosts],
        allowed_origins=[*(settings.allow_origins if settings else ()), *allowed_origins],
        health_threshold=float(settings.health_threshold) if settings else 5.0,
    )
    if http.mcp and not http.token:
        _fail(
            USAGE,
            f"--mcp needs a bearer token: set one in ${token_env} (--http-token-env) or in "
            "settings.http.token; clients send 'Authorization: Bearer <token>'",
        )
    return http


@contextlib.asynccontextmanager
async def _serving(built: BuiltApp, http: _Http | None) -> Any:
    """The HTTP server of ``http`` (metrics, health, dashboard; MCP when asked) while
    the block runs; nothing when ``http`` is None."""
    if http is None:
        yield None
        return
    from .observe import serve

    async with contextlib.AsyncExitStack() as stack:
        mcp = None
        if http.mcp:
            from .mcp.server import RxAgentMCP

            model = built.config.model
            mcp = await stack.enter_async_context(
                RxAgentMCP(
                    stores=built.stores,
                    tools=built.tools,
                    app=built.app,
                    name=built.app.name,
                    descriptions={n: d.description if d else None for n, d in model.state.items()},
                    dead_letters=built.dead_letters,
                )
            )
        server = await stack.enter_async_context(
            serve(
                built.app,
                http.host,
                http.port,
                stores=built.stores,
                tools=built.tools,
                token=http.token,
                allowed_hosts=http.allowed_hosts,
                allowed_origins=http.allowed_origins,
                mcp=mcp,
                health_threshold=http.health_threshold,
            )
        )
        if http.announce:
            click.echo(
                f"rxagent: serving {server.url}/ (dashboard), /metrics, /healthz, /ready"
                + (", /mcp" if mcp is not None else ""),
                err=True,
            )
        yield server


async def _run_app(
    built: BuiltApp,
    *,
    duration: float | None,
    live: bool,
    drain_timeout: float,
    http: _Http | None = None,
    otel: Any = None,
) -> int:
    """Run until every pipeline stopped, ``duration`` passed, or SIGINT/SIGTERM;
    drain, print the final state, return the exit code. With ``http``, serve the
    operations endpoints meanwhile (until the final state is printed); with ``otel``
    (a TracerProvider), trace tool activations with it."""
    async with _serving(built, http), _tracing(built, otel):
        return await _run_watched(built, duration=duration, live=live, drain_timeout=drain_timeout)


def _otel_provider(app_name: str) -> Any:
    """``--otel``: an OpenTelemetry SDK TracerProvider configured from the ``OTEL_*``
    variables (docs/operations.md), made the global one (for the tools' own spans)."""
    try:
        from opentelemetry import trace

        from .observe.otel import tracer_provider_from_env

        provider = tracer_provider_from_env(service_name=app_name)
    except ImportError as error:
        _fail(USAGE, f"--otel: {error}")
    trace.set_tracer_provider(provider)
    return provider


@contextlib.asynccontextmanager
async def _tracing(built: BuiltApp, provider: Any) -> Any:
    """One span per tool activation while the block runs (``provider``: None, none);
    then the provider's last spans are flushed, off the event loop."""
    if provider is None:
        yield None
        return
    from .observe.otel import trace_activations

    try:
        with trace_activations(built.app, provider):
            yield provider
    finally:
        await asyncio.to_thread(provider.shutdown)


async def _run_watched(
    built: BuiltApp, *, duration: float | None, live: bool, drain_timeout: float
) -> int:
    from ._signals import sleep_or_stop, stop_on_signals

    app = built.app
    stop = stop_on_signals()
    monitor = _Monitor(built)
    await app.start()
    everything = asyncio.ensure_future(app.wait())
    everything.add_done_callback(lambda _: stop.set())
    deadline = None if duration is None else time.monotonic() + duration

    def remaining() -> float:
        return 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())

    def running() -> bool:
        return not stop.is_set() and remaining() > 0

    try:
        if live:
            from rich.console import Console
            from rich.live import Live

            with Live(monitor.view(), console=Console(), refresh_per_second=4) as screen:
                while running():
                    await sleep_or_stop(stop, min(0.25, remaining()))
                    screen.update(monitor.view())
        else:
            monitor.statuses()  # the rates' first sample
            next_line = time.monotonic() + 1.0
            while running():
                await sleep_or_stop(stop, min(max(0.0, next_line - time.monotonic()), remaining()))
                if time.monotonic() < next_line or everything.done():
                    continue  # stopping, or the duration ends first: the final state follows
                next_line += 1.0
                for line in monitor.log_lines():
                    click.echo(line)
    finally:
        statuses = await app.drain(drain_timeout)
        everything.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everything
        # durable stores: the last checkpoint, then their files and changelog producers close
        for store in built.stores.values():
            try:
                await store.aclose()
            except Exception as error:
                click.echo(
                    built.config.redact(f"rxagent: closing state {store.name!r}: {error}"), err=True
                )
    return _final(built, statuses)


def _execute(
    built: BuiltApp,
    *,
    duration: float | None,
    live: bool,
    http: _Http | None = None,
    otel: Any = None,
) -> None:
    drain_timeout = built.config.model.settings.drain_timeout
    code = asyncio.run(
        _run_app(
            built, duration=duration, live=live, drain_timeout=drain_timeout, http=http, otel=otel
        )
    )
    if code:
        raise _Exit(code)


@main.command()
@_python_path
@click.argument("file")
@click.option(
    "--pipeline", "pipelines", multiple=True, metavar="NAME", help="Only this pipeline (repeat)."
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds (default: when the sources end, or Ctrl-C).",
)
@click.option(
    "--live/--no-live", default=None, help="Live table (default: when stdout is a terminal)."
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where durable stores keep their files (default: settings.state_dir, else "
    ".rxagent/state/<file name>).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run N processes in one Kafka consumer group; each holds the state of its partitions.",
)
@click.option(
    "--http",
    "listen",
    metavar="HOST:PORT",
    help="Serve /metrics, /healthz, /ready and the dashboard there (docs/operations.md; "
    "default: settings.http, else none). With --workers, worker i serves PORT+i.",
)
@click.option(
    "--http-token-env",
    default="RXAGENT_HTTP_TOKEN",
    show_default=True,
    metavar="VAR",
    help="Environment variable holding the bearer token HTTP requests must carry "
    "(unset: settings.http.token, else no token).",
)
@click.option("--mcp", is_flag=True, help="Also serve MCP over HTTP at /mcp (needs a token).")
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="HOST[:PORT|:*]",
    help="A Host header value to accept (repeat); required when --http is not a loopback address.",
)
@click.option(
    "--allow-origin",
    "allowed_origins",
    multiple=True,
    metavar="URL",
    help="An Origin header value to accept (repeat; browsers on other origins).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text (default) or one JSON object per line.",
)
@click.option(
    "--max-dead-letter-ratio",
    "max_dead_letter_ratio",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="R",
    help="Fail a pipeline whose stage dead-letters more than this share of what it receives "
    "(after 100 dead letters; settings.max_dead_letter_ratio in YAML). Without: a warning.",
)
@click.option(
    "--otel",
    is_flag=True,
    help="Export one OpenTelemetry span per tool activation, configured by the OTEL_* "
    "variables (OTEL_TRACES_EXPORTER=otlp|console|none; needs rxagent[otel]; "
    "docs/operations.md).",
)
def run(
    file: str,
    pipelines: tuple[str, ...],
    duration: float | None,
    live: bool | None,
    state_dir: str | None,
    workers: int,
    listen: str | None,
    http_token_env: str,
    mcp: bool,
    allowed_hosts: tuple[str, ...],
    allowed_origins: tuple[str, ...],
    log_format: str | None,
    max_dead_letter_ratio: float | None,
    otel: bool,
) -> None:
    """Run FILE's pipelines until their sources end, --duration passes, or Ctrl-C /
    SIGTERM (which drain the pipelines first), then print the final state.

    Durable stores (docs/state.md) keep their files in the state directory and are
    restored on start; with --workers N, worker i uses <state dir>/worker-<i> and
    sees RXAGENT_WORKER=i (for a source's instance_id: orders-${RXAGENT_WORKER})."""
    with _guard(_verbosity()):
        _log_format(log_format)
        config = _read(file)
        names = _pick(config, pipelines)
        where = _state_dir(config, file, state_dir)
        http = _http_options(config, listen, http_token_env, mcp, allowed_hosts, allowed_origins)
        if http is not None:
            http.announce = log_format != "json"
        if workers > 1:
            _check_workers(config, names, workers)
            extra = [] if log_format is None else ["--log-format", log_format]
            for name in allowed_hosts:
                extra += ["--allow-host", name]
            for name in allowed_origins:
                extra += ["--allow-origin", name]
            if mcp:
                extra.append("--mcp")
            if max_dead_letter_ratio is not None:
                extra += ["--max-dead-letter-ratio", str(max_dead_letter_ratio)]
            if otel:
                extra.append("--otel")
            extra += ["--http-token-env", http_token_env]
            raise _Exit(_run_workers(file, pipelines, duration, where, workers, http, extra))
        built = config.build(pipelines=names, state_dir=where)
        if max_dead_letter_ratio is not None:
            for pipeline in built.pipelines.values():
                pipeline.max_dead_letter_ratio = max_dead_letter_ratio
        _execute(
            built,
            duration=duration,
            live=(sys.stdout.isatty() if live is None else live) and log_format != "json",
            http=http,
            otel=_otel_provider(built.app.name) if otel else None,
        )


def _log_format(log_format: str | None) -> None:
    """``--log-format``: log as text (what ``main`` set up) or JSON lines."""
    if log_format is None:
        return
    from .observe.logs import configure_logging

    configure_logging(logging.getLogger().level, log_format)


def _state_dir(config: Config, file: str, option: str | None) -> Path:
    """``--state-dir``, else ``settings.state_dir``, else ``.rxagent/state/<file name>``."""
    if option is not None:
        return Path(option)
    return config.state_dir() or Path(".rxagent") / "state" / Path(file).stem


def _check_workers(config: Config, names: Sequence[str], workers: int) -> None:
    """Workers share input through Kafka's consumer groups, and only through them."""
    for name in names:
        source = config.pipelines[name].source
        if source.kind.name != "kafka":
            _fail(
                USAGE,
                f"--workers {workers}: pipeline {name!r} reads a {source.kind.name} source; "
                "only Kafka sources share their input between workers (each worker would "
                "read all of it)",
            )
        if getattr(source.params, "assign", False):
            _fail(
                USAGE,
                f"--workers {workers}: pipeline {name!r} reads Kafka with assign: true (every "
                "partition in every worker); remove it so the group shares the partitions",
            )


def _run_workers(
    file: str,
    pipelines: tuple[str, ...],
    duration: float | None,
    where: Path,
    workers: int,
    http: _Http | None = None,
    extra: Sequence[str] = (),
) -> int:
    """Start ``workers`` ``rxagent run`` processes, prefix their output with the worker,
    pass SIGINT/SIGTERM on, and return the first non-zero exit code."""
    import os
    import signal
    import subprocess
    import threading

    verbose = ["-" + "v" * _verbosity()] if _verbosity() else []
    args = [sys.executable, "-c", "from rxagent.cli import main; main()", *verbose, "run", file]
    for name in pipelines:
        args += ["--pipeline", name]
    if duration is not None:
        args += ["--duration", str(duration)]
    children: list[subprocess.Popen[str]] = []
    for i in range(workers):
        env = {**os.environ, "RXAGENT_WORKER": str(i)}
        child_args = [*args, "--no-live", "--state-dir", str(where / f"worker-{i}"), *extra]
        if http is not None:  # one server per worker: PORT+i (0: each picks a free port)
            port = http.port + i if http.port else 0
            host = f"[{http.host}]" if ":" in http.host else http.host
            child_args += ["--http", f"{host}:{port}"]
        children.append(
            subprocess.Popen(
                child_args,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    def relay(i: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            click.echo(f"[worker {i}] {line}", nl=False)

    threads = [
        threading.Thread(target=relay, args=(i, child), daemon=True)
        for i, child in enumerate(children)
    ]
    for thread in threads:
        thread.start()

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for thread in threads:
            thread.join(5)
    return next((code for code in codes if code), 0)


@main.command("state")
@_python_path
@click.argument("file")
@click.argument("store", required=False)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="The state directory (default: as `rxagent run` picks it).",
)
@click.option("--worker", type=click.IntRange(min=0), help="Worker i's state (--workers runs).")
@click.option(
    "--export",
    "export",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write every entry as a JSON line to this file ('-': stdout).",
)
@click.option(
    "--reset",
    is_flag=True,
    help="Delete the local state file(s): emptied, or rebuilt from the changelog on the "
    "next start when the store has one.",
)
@click.option("--yes", is_flag=True, help="Reset without asking.")
@click.option("--max-entries", type=click.IntRange(min=0), default=20, show_default=True)
def state_command(
    file: str,
    store: str | None,
    state_dir: str | None,
    worker: int | None,
    export: str | None,
    reset: bool,
    yes: bool,
    max_entries: int,
) -> None:
    """Inspect, export or reset the durable state stores of FILE (or STORE alone):
    the file, its version, keys, checkpoint metadata (changelog offsets) and entries."""
    with _guard(_verbosity()):
        config = _read(file)
        durable = config.durable_stores()
        if store is not None and store not in durable:
            known = ", ".join(sorted(durable)) or "none"
            _fail(USAGE, f"{file}: no state store named {store!r} (stores: {known})")
        names = [store] if store is not None else [n for n, d in durable.items() if d]
        if not names:
            _fail(USAGE, f"{file}: no durable state store (docs/state.md: durable: true)")
        where = _state_dir(config, file, state_dir)
        if worker is not None:
            where = where / f"worker-{worker}"
        from ._secrets import open_private
        from .state.durable import store_path

        paths = {name: store_path(where, name) for name in names}
        if reset:
            existing = {n: p for n, p in paths.items() if p.exists()}
            if not existing:
                click.echo(f"nothing to reset: no state file in {where}")
                return
            listing = ", ".join(str(p) for p in existing.values())
            if not yes and not click.confirm(f"delete {listing}?"):
                raise _Exit(INVALID, "reset cancelled")
            for path in existing.values():
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                click.echo(f"reset: deleted {path}")
            return
        out = None
        try:
            if export is not None:
                # entries are payloads: the file is its owner's only (0600)
                out = sys.stdout if export == "-" else open_private(export, "w")
            for name in names:
                decl = config.model.state[name]
                codec = "pickle" if decl is None else decl.codec
                _show_store(name, paths[name], codec, out, max_entries)
        finally:
            if out is not None and out is not sys.stdout:
                out.close()


def _show_store(name: str, path: Path, codec: str, out: Any, max_entries: int) -> None:
    """Print one store file's summary (and write its entries as JSON lines to ``out``)."""
    from .state.durable import SQLiteBackend, codec_for
    from .state.snapshot import entry_from_record

    if not path.exists():
        click.echo(
            f"state {name}: no file at {path} (nothing checkpointed yet)", err=out is sys.stdout
        )
        return
    backend = SQLiteBackend(path, store=name, codec=codec_for(codec))  # type: ignore[arg-type]
    try:
        meta = backend.open()
        rows = [(entry_from_record(key, record), part) for key, part, record in backend.rows()]
    finally:
        backend.close()
    info = f"state {name}: {path}, version {meta.get('version', 0)}, {_plural(len(rows), 'key')}"
    lines = [info]
    if meta.get("changelog_topic"):
        offsets = ", ".join(f"{p}: {o}" for p, o in sorted((meta.get("changelog") or {}).items()))
        lines.append(f"  changelog {meta['changelog_topic']} (offsets read: {offsets or 'none'})")
    if out is None:
        for entry, _part in rows[:max_entries]:
            pos = f", at {entry.position}" if entry.position is not None else ""
            lines.append(
                f"  {entry.key}: {_compact(entry.value, 160)} "
                f"(version {entry.version}, {entry.updates} updates{pos})"
            )
        if len(rows) > max_entries:
            lines.append(f"  ... {len(rows) - max_entries} more")
    for line in lines:
        click.echo(line, err=out is sys.stdout)
    if out is not None:
        for entry, part in rows:
            record = {
                "store": name,
                "key": entry.key,
                "value": entry.value,
                "version": entry.version,
                "updates": entry.updates,
                "event_time": entry.event_time,
                "wall_time": entry.wall_time,
                "position": None if entry.position is None else str(entry.position),
                "partition": part,
            }
            out.write(json.dumps(record, default=str) + "\n")


def _split_target(target: str) -> tuple[str, str | None]:
    """``FILE[:NAME]`` -> (file, name); a path that exists as given has no name."""
    if Path(target).exists() or ":" not in target:
        return target, None
    file, _, name = target.rpartition(":")
    return file, name or None


@main.command()
@click.argument("recording")
@click.option(
    "--pipeline",
    "target",
    required=True,
    metavar="FILE[:NAME]",
    help="The pipeline file, and the pipeline's name if it has several.",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    help="1 = the recorded pace, 2 = twice as fast (default: as fast as possible).",
)
def replay(recording: str, target: str, speed: float | None) -> None:
    """Play RECORDING (made by the record sink) through a pipeline of a file, in
    place of its source; print the final state and the dead letters count."""
    from .sources.replay import ReplaySource

    with _guard(_verbosity()):
        file, name = _split_target(target)
        if not Path(recording).is_file():
            _fail(USAGE, f"recording {recording!r} does not exist")
        config = _read(file)
        if name is None:
            if len(config.pipelines) != 1:
                _fail(
                    USAGE,
                    f"{file} has {len(config.pipelines)} pipelines "
                    f"({', '.join(config.pipelines)}): name one with --pipeline {file}:NAME",
                )
            name = next(iter(config.pipelines))
        _pick(config, [name])
        source = ReplaySource(recording, speed=speed)
        built = config.build(pipelines=[name], sources={name: source})
        _execute(built, duration=None, live=False)


# -- test ----------------------------------------------------------------------------------


@main.command("test")
@_python_path
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def test_command(files: tuple[str, ...]) -> None:
    """Run the marble test cases under tests: in each FILE, in virtual time; print
    PASS/FAIL per case with the diagrams of any difference."""
    from .config.testing import run_cases

    with _guard(_verbosity()):
        failed = ran = 0
        for file in files:
            config = _read(file)
            results = run_cases(config)
            if not config.model.tests:
                click.echo(f"{file}: no test cases (add them under tests:)")
            for result in results:
                ran += 1
                click.echo(result.report())
                failed += not result.passed
        if ran:
            click.echo(f"{ran - failed} passed, {failed} failed")
        if failed or not ran:
            raise _Exit(INVALID)


# -- dry-run and mcp --------------------------------------------------------------------


@main.command("dry-run")
@_python_path
@click.argument("file")
@click.option(
    "--pipeline", "pipelines", multiple=True, metavar="NAME", help="Only this pipeline (repeat)."
)
@click.option(
    "--recording",
    metavar="REC",
    help="Replay this recording through the (single named) pipeline instead of its source.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds (needed for live sources that never end).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def dry_run_command(
    file: str,
    pipelines: tuple[str, ...],
    recording: str | None,
    duration: float | None,
    as_json: bool,
) -> None:
    """Run FILE's pipelines with every tool activation recorded, not executed:
    which tool would have fired, when, with which arguments, and what was
    suppressed and why (throttled, in cooldown, dropped while busy, ...)."""
    from .sources.replay import ReplaySource
    from .testing.dryrun import dry_run_report

    with _guard(_verbosity()):
        config = _read(file)
        names = _pick(config, pipelines)
        sources = None
        if recording is not None:
            if not Path(recording).is_file():
                _fail(USAGE, f"recording {recording!r} does not exist")
            if len(names) != 1:
                _fail(USAGE, "--recording replays through one pipeline: name it with --pipeline")
            sources = {names[0]: ReplaySource(recording)}
        built = config.build(pipelines=names, sources=sources)
        report = asyncio.run(
            dry_run_report(
                built, duration=duration, drain_timeout=config.model.settings.drain_timeout
            )
        )
        if as_json:
            from ._secrets import redact_data

            # redacted as data: text replacement could break the JSON
            click.echo(json.dumps(redact_data(report.as_json()), indent=2, sort_keys=True))
        else:
            from rich.console import Console

            console = Console(width=max(160, Console().width))
            with console.capture() as captured:
                console.print(report.table())
            click.echo(config.redact(captured.get()), nl=False)


@main.command("mcp")
@_python_path
@click.argument("file")
@click.option("--http", is_flag=True, help="Serve streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address.")
@click.option("--port", type=int, default=None, help="HTTP port (0: any free port).")
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="HOST[:PORT|:*]",
    help="A Host header value to accept (repeat); required when --host is not a loopback address.",
)
@click.option(
    "--allow-origin",
    "allowed_origins",
    multiple=True,
    metavar="URL",
    help="An Origin header value to accept (repeat; browser clients).",
)
@click.option(
    "--token-env",
    default="RXAGENT_MCP_TOKEN",
    show_default=True,
    metavar="VAR",
    help="Environment variable holding the HTTP bearer token.",
)
@click.option(
    "--pipeline", "pipelines", multiple=True, metavar="NAME", help="Only this pipeline (repeat)."
)
@click.option(
    "--min-interval",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Least seconds between two change notifications of one resource.",
)
@click.option(
    "--from-changelog",
    is_flag=True,
    help="Run no pipeline: serve each state store from the changelog topic that its "
    "kafka-sourced pipeline's workers write (the whole state of every partition, followed live).",
)
def mcp_command(
    file: str,
    http: bool,
    host: str,
    port: int | None,
    allowed_hosts: tuple[str, ...],
    allowed_origins: tuple[str, ...],
    token_env: str,
    pipelines: tuple[str, ...],
    min_interval: float,
    from_changelog: bool,
) -> None:
    """Run FILE's pipelines and serve their state stores, tools and status over
    the Model Context Protocol: stdio by default, or streamable HTTP on
    127.0.0.1 with a bearer token from --token-env (docs/mcp.md).

    With --from-changelog no pipeline runs: each store is read from the
    changelog topic rxagent-changelog.<group>.<store> (group and brokers from
    the kafka source of the pipeline writing it), first to its end, then
    followed live; any number of workers may be writing it (docs/state.md).

    Bound to an address other than a loopback one, --allow-host must name the
    Host header values clients send. The URL served is printed on stderr."""
    import os

    from .mcp.app import DEFAULT_PORT, run_mcp

    with _guard(_verbosity()):
        config = _read(file)  # located errors before anything starts
        names = _pick(config, pipelines)
        token = os.environ.get(token_env) if http else None
        if http and not token:
            _fail(USAGE, f"--http needs a bearer token: set the environment variable {token_env}")
        run_mcp(
            file,
            transport="http" if http else "stdio",
            host=host,
            port=DEFAULT_PORT if port is None else port,
            token=token,
            pipelines=names,
            min_interval=min_interval,
            from_changelog=from_changelog,
            allowed_hosts=list(allowed_hosts),
            allowed_origins=list(allowed_origins),
            ready=lambda url: click.echo(f"rxagent MCP server listening on {url}", err=True),
        )


if __name__ == "__main__":  # pragma: no cover
    main()
