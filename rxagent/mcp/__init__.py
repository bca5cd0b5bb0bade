"""Serve an rxagent app over MCP (the Model Context Protocol), on the official ``mcp`` SDK.

State stores become resources (``rxagent://state/{store}``, one key at
``rxagent://state/{store}/{key}``), pipeline health the ``rxagent://status``
resource, and the app's tools MCP tools, with ``query_state`` and
``changes_since`` added. Subscribed clients are told when a resource changes,
conflated to at most one notification per resource per interval.

From a pipeline file::

    python -m rxagent.mcp pipelines.yaml                      # stdio
    RXAGENT_MCP_TOKEN=s3cret python -m rxagent.mcp pipelines.yaml --http --port 8765

or from code, :func:`run_mcp` (blocking) and :func:`serve_built` (async). With
``--from-changelog`` no pipeline runs: the stores are served from the changelog
topics their Kafka workers write (:func:`changelog_views`, :func:`serve_views`).
See docs/mcp.md.
"""

from .app import DEFAULT_PORT, changelog_views, run_mcp, serve_built, serve_file, serve_views
from .conflate import Conflater
from .server import KEY_URI_TEMPLATE, STATE_URI_PREFIX, STATUS_URI, RxAgentMCP, key_uri, store_uri

__all__ = [
    "DEFAULT_PORT",
    "KEY_URI_TEMPLATE",
    "STATE_URI_PREFIX",
    "STATUS_URI",
    "Conflater",
    "RxAgentMCP",
    "changelog_views",
    "key_uri",
    "run_mcp",
    "serve_built",
    "serve_file",
    "serve_views",
    "store_uri",
]
