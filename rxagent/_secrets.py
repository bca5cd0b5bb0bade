"""The one redaction of secrets, applied at every output boundary.

Secrets are known two ways:

* **by value**: a process-wide registry fed by the config loader (every value
  substituted from ``${VAR}``) and by the connectors (WebSocket tokens, secret
  headers and URL query values, Kafka credential settings, TLS key passwords,
  the MCP bearer token). :func:`redact` replaces every registered value in a
  text with ``***``, in its raw form and in the forms escaping gives it (JSON,
  ``repr``, URL quoting), so a value is matched before anything truncates or
  escapes it. A value registered with an ``owner`` is forgotten when the owner
  is garbage-collected (a loaded file, a source), so a long-lived process that
  loads many files does not mask their values forever.
* **by key name**: :func:`is_secret_key` recognises settings and headers that
  hold credentials (``sasl.password``, ``sasl.jaas.config``,
  ``sasl.oauthbearer.config``, ``ssl.key.pem``, ``ssl.keystore.password``,
  ``Authorization``, ``?token=``, ...). :func:`redact_config` hides their
  values in a mapping; :func:`redact` hides ``name=value`` of such names in URLs.

:class:`SecretFilter` is the :class:`logging.Filter` that redacts log records
(message, arguments and traceback); it is installed on rxagent's loggers here
and on the CLI's handler. Values shorter than :data:`MIN_LENGTH` characters are
not matched (they would blank unrelated text).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

__all__ = [
    "MASK",
    "MIN_LENGTH",
    "SecretFilter",
    "is_secret_key",
    "open_private",
    "redact",
    "redact_config",
    "redact_data",
    "register",
    "register_config",
    "register_url",
    "touch_private",
]

#: What a secret is replaced with.
MASK = "***"
#: Shorter values are not matched by value.
MIN_LENGTH = 3

#: Names of settings, headers and URL parameters whose values are credentials.
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)|secret|token|jaas|credential|private|cookie|authoriz"
    r"|oauthbearer[._](config|extensions)|ssl[._]key|keystore|truststore[._]password"
    r"|api[._-]?key|(^|[._-])key$|(^|[._-])(sig|signature|auth)$",
    re.IGNORECASE,
)
# ``name=value`` of a secret-named parameter in a URL (or a similar text)
_URL_PARAM = re.compile(r"(?<=[?&;])([A-Za-z0-9_.\-]+)=([^&#\s'\"]*)")
# ``user:password@`` in a URL
_USERINFO = re.compile(r"(?<=://)([^/@\s:'\"]*):([^/@\s'\"]+)@")

_lock = threading.Lock()
_permanent: set[str] = set()
_owned: dict[int, set[str]] = {}
_pattern: re.Pattern[str] | None = None
_dirty = False


def is_secret_key(name: object) -> bool:
    """Whether a setting, header or parameter named ``name`` holds a credential."""
    return isinstance(name, str) and _SECRET_KEY.search(name) is not None


def _forms(value: str) -> set[str]:
    """``value`` and what escaping makes of it in JSON, ``repr`` and URLs."""
    forms = {value}
    for ensure_ascii in (True, False):
        escaped = json.dumps(value, ensure_ascii=ensure_ascii)[1:-1]
        forms.add(escaped)
        forms.add(json.dumps(escaped, ensure_ascii=ensure_ascii)[1:-1])  # JSON in JSON
    forms.add(repr(value)[1:-1])
    forms.add(repr(value + "'")[1:-2])  # repr's other quoting
    forms.add(value.encode("unicode_escape").decode("ascii"))
    forms.add(quote(value, safe=""))
    forms.add(quote_plus(value, safe=""))
    return {f for f in forms if len(f) >= MIN_LENGTH}


def register(*values: object, owner: object = None) -> None:
    """Know ``values`` (strings or bytes; others are ignored) as secrets.

    With ``owner``, they are forgotten when ``owner`` is garbage-collected (or
    never, when it cannot be weakly referenced)."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", "replace")
        if isinstance(value, str) and len(value) >= MIN_LENGTH:
            found |= _forms(value)
    if not found:
        return
    global _dirty
    with _lock:
        target = _permanent
        if owner is not None:
            key = id(owner)
            known = _owned.get(key)
            if known is None:
                try:
                    weakref.finalize(owner, _forget, key)
                except TypeError:  # not weakly referenceable: keep for the process
                    known = None
                else:
                    known = _owned[key] = set()
            if known is not None:
                target = known
        if not found <= target:
            target |= found
            _dirty = True


def _forget(key: int) -> None:
    global _dirty
    with _lock:
        if _owned.pop(key, None):
            _dirty = True


def register_url(url: object, *, owner: object = None) -> None:
    """Know the password of ``user:password@`` and the values of secret-named
    query parameters of ``url`` as secrets."""
    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        register(parts.password, owner=owner)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if is_secret_key(name):
            register(value, owner=owner)


def register_config(config: Mapping[Any, Any], *, owner: object = None) -> None:
    """Know the values of ``config``'s secret-named keys (headers, librdkafka
    settings) as secrets."""
    for key, value in config.items():
        if is_secret_key(key):
            register(value if isinstance(value, str | bytes) else str(value), owner=owner)


def _current() -> re.Pattern[str] | None:
    global _pattern, _dirty
    if not _dirty:
        return _pattern
    with _lock:
        if _dirty:
            values = set(_permanent)
            for owned in _owned.values():
                values |= owned
            ordered = sorted(values, key=len, reverse=True)  # the longest form first
            _pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
            _dirty = False
        return _pattern


def _mask_param(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}={MASK}" if is_secret_key(name) and match.group(2) else match.group(0)


def redact(text: str) -> str:
    """``text`` with every known secret (and its escaped forms), every
    ``user:password@`` and every secret-named URL parameter value replaced by ``***``."""
    pattern = _current()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "=" in text:
        text = _URL_PARAM.sub(_mask_param, text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    return text


def redact_data(data: Any) -> Any:
    """``data`` (dicts, lists, tuples, strings, numbers) with every string redacted
    (:func:`redact`), keys included; other values are kept as they are."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, Mapping):
        return {(redact(k) if isinstance(k, str) else k): redact_data(v) for k, v in data.items()}
    if type(data) is list:
        return [redact_data(item) for item in data]
    if type(data) is tuple:
        return tuple(redact_data(item) for item in data)
    return data


def redact_config(config: Mapping[Any, Any]) -> dict[Any, Any]:
    """``config`` fit for logs and status: the values of secret-named keys are
    ``***``, every other value is redacted by value."""
    return {k: (MASK if is_secret_key(k) else redact_data(v)) for k, v in config.items()}


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, str):
        return redact(arg)
    # a dataclass carrying bytes that its ``str`` would truncate (a ``websockets``
    # frame in the wire log): redact the payload before anything formats it
    data = getattr(arg, "data", None)
    if isinstance(data, bytes) and dataclasses.is_dataclass(arg) and not isinstance(arg, type):
        text = data.decode("utf-8", "surrogateescape")
        cleaned = redact(text)
        if cleaned != text:
            try:
                return dataclasses.replace(arg, data=cleaned.encode("utf-8", "surrogateescape"))
            except (TypeError, ValueError):
                return MASK
    return arg


class SecretFilter(logging.Filter):
    """Redacts a log record's message, arguments and traceback (:func:`redact`).

    Arguments are redacted before they are formatted, so a value is matched before
    a formatter truncates it; the whole message is redacted after."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            args = record.args
            if isinstance(args, tuple):
                record.args = tuple(_redact_arg(a) for a in args)
            elif isinstance(args, Mapping):
                record.args = {k: _redact_arg(v) for k, v in args.items()}
            message = record.getMessage()
        except Exception:  # a broken record is logging's to report, not ours
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


#: rxagent's loggers (those that modules log to directly: a logger's filters do
#: not see its children's records)
LOGGERS = (
    "rxagent",
    "rxagent.mcp",
    "rxagent.websocket",
    "rxagent.events",
    "rxagent.config.registry",
)


def install(names: Iterable[str] = LOGGERS) -> SecretFilter:
    """Put the (one) :class:`SecretFilter` on the loggers ``names`` and on every
    ``rxagent.*`` logger that exists already."""
    existing = [
        n
        for n, item in logging.Logger.manager.loggerDict.items()
        if (n == "rxagent" or n.startswith("rxagent.")) and isinstance(item, logging.Logger)
    ]
    for name in {*names, *existing}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SecretFilter) for f in logger.filters):
            logger.addFilter(FILTER)
    return FILTER


FILTER = SecretFilter()


def open_private(path: str | os.PathLike[str], mode: str, **kwargs: Any) -> IO[Any]:
    """``open(path, mode)``, a file it creates being readable by its owner only
    (0600): recordings, dead letters and state files hold payloads."""
    flags = os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_RDWR if "+" in mode else os.O_WRONLY if mode[0] in "wa" else os.O_RDONLY
    if mode[0] == "w":
        flags |= os.O_TRUNC
    elif mode[0] == "a":
        flags |= os.O_APPEND
    fd = os.open(path, flags, 0o600)
    try:
        return open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def touch_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (for files that a
    library such as SQLite creates and opens itself). Errors are left to that
    library to report."""
    with contextlib.suppress(OSError):
        if not Path(path).exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


install()
