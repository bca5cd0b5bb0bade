"""``python -m rxagent.mcp FILE [--http --port N --token-env VAR] [--from-changelog]``:
serve a file over MCP."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..exceptions import RxAgentError
from .app import DEFAULT_PORT, serve_file

_TOKEN_ENV = "RXAGENT_MCP_TOKEN"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, serve, return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m rxagent.mcp",
        description="Run a pipeline file and serve its state, tools and status over MCP "
        "(stdio by default; streamable HTTP on 127.0.0.1 with --http).",
    )
    parser.add_argument("file", help="the pipeline file (YAML)")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP, not stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    parser.add_argument(
        "--allow-host",
        action="append",
        dest="allowed_hosts",
        metavar="HOST[:PORT|:*]",
        help="a Host header value to accept (repeatable); needed when --host is not a "
        "loopback address",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        dest="allowed_origins",
        metavar="URL",
        help="an Origin header value to accept (repeatable; browser clients)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0: any)"
    )
    parser.add_argument(
        "--token-env",
        default=_TOKEN_ENV,
        metavar="VAR",
        help=f"environment variable holding the HTTP bearer token (default {_TOKEN_ENV})",
    )
    parser.add_argument(
        "--pipeline",
        action="append",
        dest="pipelines",
        metavar="NAME",
        help="run only this pipeline (repeatable; default: all)",
    )
    parser.add_argument(
        "--from-changelog",
        action="store_true",
        help="run no pipeline: serve each state store from the changelog topic its "
        "kafka-sourced pipeline's workers write (the whole state, followed live)",
    )
    parser.add_argument(
        "--min-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="least time between two change notifications of one resource (default 0.5)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    token = os.environ.get(args.token_env) if args.http else None

    def ready(url: str) -> None:
        print(f"rxagent MCP server listening on {url}", file=sys.stderr, flush=True)

    import asyncio

    try:
        asyncio.run(
            serve_file(
                args.file,
                transport="http" if args.http else "stdio",
                host=args.host,
                port=args.port,
                token=token,
                pipelines=args.pipelines,
                min_interval=args.min_interval,
                ready=ready,
                from_changelog=args.from_changelog,
                allowed_hosts=args.allowed_hosts,
                allowed_origins=args.allowed_origins,
            )
        )
    except RxAgentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
