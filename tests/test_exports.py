"""The public API: every module says what it exports, and the top level re-exports truly."""

from __future__ import annotations

import importlib
import pkgutil

import rxagent


def _modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(rxagent.__path__, prefix="rxagent.")
        if not m.name.endswith("__main__")
    ]


def test_every_module_declares_all() -> None:
    missing = [name for name in _modules() if not hasattr(importlib.import_module(name), "__all__")]
    assert not missing, f"modules without __all__: {missing}"


def test_every_exported_name_exists() -> None:
    for name in ["rxagent", *_modules()]:
        module = importlib.import_module(name)
        for export in module.__all__:
            assert hasattr(module, export), f"{name}.__all__ names {export!r}, which is missing"


def test_top_level_exports_are_sorted_and_unique() -> None:
    names = [n for n in rxagent.__all__ if not n.startswith("_")]
    assert len(names) == len(set(names))
    # constants, then classes, then functions and modules (ruff's isort-style order)
    assert names == sorted(
        names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
    )


def test_the_websocket_connector_keeps_its_old_import_paths() -> None:
    # it moved to rxagent.websocket (issue 13); ``rxagent.sources.websocket`` stays
    # the documented function even once the old module path was imported
    import rxagent.websocket as connector
    from rxagent import sources
    from rxagent.sinks.websocket import WebSocketSink
    from rxagent.sources.websocket import WebSocketSource, websocket

    importlib.import_module("rxagent.sources.websocket")
    assert sources.websocket is websocket is connector.websocket
    assert callable(sources.websocket)
    assert WebSocketSource is connector.WebSocketSource is sources.WebSocketSource
    assert WebSocketSink is connector.WebSocketSink is rxagent.sinks.WebSocketSink
