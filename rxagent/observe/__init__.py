"""Running it in production: Prometheus metrics, health and readiness, the live
dashboard's data and JSON logs (docs/operations.md).

:func:`serve` runs one HTTP server on the pipelines' event loop::

    async with rxagent.observe.serve(app, "127.0.0.1", 8000):
        await app.run()
"""

from __future__ import annotations

from .http import DEFAULT_PORT, LoopHeartbeat, ObserveServer, build_app, parse_listen, serve
from .logs import JsonFormatter, configure_logging
from .metrics import Collector, Observer, Readiness

__all__ = [
    "DEFAULT_PORT",
    "Collector",
    "JsonFormatter",
    "LoopHeartbeat",
    "ObserveServer",
    "Observer",
    "Readiness",
    "build_app",
    "configure_logging",
    "parse_listen",
    "serve",
]
