"""Logs as text (the default) or JSON: one object per line.

A JSON line has ``time`` (ISO 8601 UTC), ``level``, ``logger`` and ``message``, and
the ``pipeline``, ``stage``, ``source``, ``store``, ``tool``, ``key`` and
``position`` a record carries (``log.info(..., extra={"pipeline": name})``), plus
``exception`` with the traceback. Every record goes through the same redaction
filter as text logs (:data:`rxagent._secrets.FILTER`) and the line is redacted
again as a whole.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from .._secrets import FILTER, redact, redact_data
from ..exceptions import ConfigurationError

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "LogFormat", "configure_logging"]

LogFormat = Literal["text", "json"]

#: Record attributes (set with ``extra=``) a JSON line carries when present.
CONTEXT_FIELDS = (
    "pipeline",
    "stage",
    "source",
    "sink",
    "store",
    "tool",
    "key",
    "position",
    "url",
)

#: The text format of ``rxagent`` commands.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        line = json.dumps(redact_data(data), ensure_ascii=False, default=str)
        return redact(line)


def configure_logging(level: int = logging.WARNING, fmt: str = "text") -> logging.Handler:
    """Log to stderr at ``level`` as ``fmt`` (``"text"`` or ``"json"``), every record
    redacted; replaces the root logger's handlers. Returns the handler."""
    if fmt not in ("text", "json"):
        raise ConfigurationError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(FILTER)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
