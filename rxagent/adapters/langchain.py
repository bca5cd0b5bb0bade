"""rxagent tools and state stores for LangChain (``pip install 'rxagent[langchain]'``).

- :func:`as_langchain_tool`: a :class:`~rxagent.tools.Tool` as a LangChain
  ``StructuredTool`` with the same schema (``args_schema`` is the tool's pydantic
  model) and the same path: LangChain validates against that model, then the
  call goes through :meth:`Tool.invoke` (validation, the tool's ``timeout`` and
  ``max_concurrency``, its counters). ``ainvoke`` awaits the tool on the running
  loop; ``invoke`` runs it on a loop of its own (in a worker thread when called
  from inside a running loop).
- :func:`as_langchain_tools`: every tool of a :class:`~rxagent.tools.ToolRegistry`.
- :func:`state_reader_tool`: the :func:`~rxagent.tools.state_query_tool` over
  stores, as a LangChain tool.
- :class:`StateStoreRetriever`: a LangChain retriever returning state entries as
  ``Document`` objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.tools import StructuredTool
except ImportError as error:  # pragma: no cover - exercised with the extra missing
    raise ImportError(
        "rxagent.adapters.langchain needs langchain-core, which is not installed: "
        "pip install 'rxagent[langchain]' (or langchain-core>=0.3)"
    ) from error
from pydantic import ConfigDict, Field

from ..exceptions import ConfigurationError
from ..state import Entry, StateStore, context_line, recent_entries
from ..tools.state_query import state_query_tool
from ..tools.tool import Tool
from ..tools.tool_registry import ToolRegistry

__all__ = [
    "StateStoreRetriever",
    "as_langchain_tool",
    "as_langchain_tools",
    "state_reader_tool",
]


def as_langchain_tool(tool: Tool, **options: Any) -> StructuredTool:
    """``tool`` as a LangChain ``StructuredTool``: same name, description and
    argument model; each call goes through :meth:`Tool.invoke`.

    Invalid arguments fail in LangChain's own validation (a pydantic
    ``ValidationError``, or what its ``handle_validation_error`` makes of it).
    ``options`` go to ``StructuredTool.from_function`` (``return_direct``,
    ``handle_tool_error``, ``handle_validation_error``, ...).
    """
    if not isinstance(tool, Tool):
        raise ConfigurationError(
            f"as_langchain_tool takes an rxagent Tool (use @tool or Tool(fn)), got {tool!r}"
        )

    async def call_async(**arguments: Any) -> Any:
        return await tool.invoke(arguments)

    def call_sync(**arguments: Any) -> Any:
        return _run_blocking(lambda: tool.invoke(arguments))

    return StructuredTool.from_function(
        func=call_sync,
        coroutine=call_async,
        name=tool.name,
        description=tool.description or tool.name,
        args_schema=tool.args_model,
        infer_schema=False,
        **options,
    )


def as_langchain_tools(registry: ToolRegistry, **options: Any) -> list[StructuredTool]:
    """Every tool of ``registry``, in registration order (see :func:`as_langchain_tool`)."""
    if not isinstance(registry, ToolRegistry):
        raise ConfigurationError(f"as_langchain_tools takes a ToolRegistry, got {registry!r}")
    return [as_langchain_tool(t, **options) for t in registry]


def state_reader_tool(*stores: StateStore, **options: Any) -> StructuredTool:
    """A LangChain tool reading ``stores`` on demand: :func:`~rxagent.tools.state_query_tool`
    (same arguments: ``name``, ``description``, ``max_chars``, ``max_keys``) adapted."""
    query_options = {
        k: options.pop(k) for k in ("name", "description", "max_chars", "max_keys") if k in options
    }
    return as_langchain_tool(state_query_tool(*stores, **query_options), **options)


class StateStoreRetriever(BaseRetriever):
    """State entries as LangChain ``Document`` objects.

    A query's words (split on whitespace, case-insensitive) are looked for in each
    entry's key and value text; entries matching more words come first, then the
    most recently changed. An empty query returns the most recent entries. At
    most ``k`` documents; ``page_content`` is the entry as
    :meth:`StateStore.context` shows it, ``metadata`` has the ``store``, ``key``
    (as text), ``version``, ``updates``, ``event_time`` and ``wall_time``.
    Reads take each store's immutable snapshot, so they never block writers.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stores: list[StateStore]
    k: int = Field(default=4, ge=1)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return self.search(query)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        return self.search(query)

    def search(self, query: str) -> list[Document]:
        """The documents for ``query`` (what ``invoke`` returns, without callbacks)."""
        words = [w.casefold() for w in query.split()]
        scored: list[tuple[int, float, int, Document]] = []
        for store in self.stores:
            now = store.now()
            for entry in recent_entries(store.snapshot):
                line = context_line(entry, now)
                hits = sum(1 for w in words if w in line.casefold())
                if words and not hits:
                    continue
                scored.append((-hits, -entry.wall_time, len(scored), _document(store, entry, line)))
        scored.sort(key=lambda s: s[:3])
        return [s[3] for s in scored[: self.k]]


def _document(store: StateStore, entry: Entry, line: str) -> Document:
    return Document(
        page_content=line,
        metadata={
            "store": store.name,
            "key": _key_text(entry.key),
            "version": entry.version,
            "updates": entry.updates,
            "event_time": entry.event_time,
            "wall_time": entry.wall_time,
        },
    )


def _key_text(key: Hashable) -> str:
    return key if isinstance(key, str) else json.dumps(key, default=str)


def _run_blocking(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to its end from synchronous code: on a new loop here, or,
    when this thread already runs a loop (a sync ``invoke`` inside async code), on
    a new loop in a worker thread, waiting for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(make))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rxagent-lc") as pool:
        return pool.submit(lambda: asyncio.run(_awaited(make))).result()


async def _awaited(make: Callable[[], Awaitable[Any]]) -> Any:
    return await make()
