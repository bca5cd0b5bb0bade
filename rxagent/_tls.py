"""Client TLS contexts from files, for configurations that cannot hold an ``ssl.SSLContext``.

:func:`client_context` builds the context of the WebSocket source and sink from
``ssl=`` (a ready context) or from files: ``ca_file`` (the CAs to trust, in
place of the system's), ``cert_file`` and ``key_file`` (a client certificate
for mutual TLS) and ``key_password`` (for an encrypted key). The context always
verifies the server's certificate and host name. Every problem (a file missing
or unreadable, a PEM that does not parse, a key that does not match its
certificate, a wrong password) is a :class:`~rxagent.exceptions.ConfigurationError`
naming the option and the path, raised when the source or sink is built, not
at the first connect. The password is never stored, logged or put in a message.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from typing import Any

from . import _secrets
from .exceptions import ConfigurationError

__all__ = ["KeyPassword", "PathLike", "client_context", "describe_tls"]

PathLike = str | os.PathLike[str]
#: A key's password: the password itself, ``"${NAME}"`` (read from the environment
#: variable NAME, for YAML configs), or a function returning it (called once, at build).
KeyPassword = str | bytes | Callable[[], str | bytes]

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def client_context(
    *,
    owner: str,
    url: str,
    ssl_context: ssl.SSLContext | None,
    ca_file: PathLike | None = None,
    cert_file: PathLike | None = None,
    key_file: PathLike | None = None,
    key_password: KeyPassword | None = None,
) -> ssl.SSLContext | None:
    """The client context for ``url``: ``ssl_context`` as given, one built from the
    files, or ``None`` (the system's default context, verifying, for ``wss://``).

    ``owner`` (e.g. ``"websocket source 'ticks'"``) starts every error message.
    """
    files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    given = [name for name, value in files.items() if value is not None]
    if key_password is not None:
        given.append("key_password")
    scheme = url.split("://", 1)[0].lower()
    if ssl_context is not None and given:
        raise ConfigurationError(
            f"{owner}: pass either ssl= (a ready SSLContext) or {', '.join(given)}, not both"
        )
    if (ssl_context is not None or given) and scheme != "wss":
        what = "ssl=" if ssl_context is not None else ", ".join(given)
        raise ConfigurationError(f"{owner}: {what} needs a wss:// url, got a {scheme}:// url")
    if ssl_context is not None or not given:
        return ssl_context
    if key_file is not None and cert_file is None:
        raise ConfigurationError(f"{owner}: key_file needs cert_file (the client certificate)")
    if key_password is not None and cert_file is None:
        raise ConfigurationError(f"{owner}: key_password needs cert_file and key_file")
    paths = {name: _readable(owner, name, value) for name, value in files.items() if value}

    ca = paths.get("ca_file")
    try:
        # with a cafile, only that file's CAs are trusted (the system's are not loaded);
        # verify_mode CERT_REQUIRED and check_hostname are on, as for the default context
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (ssl.SSLError, ValueError) as error:
        raise ConfigurationError(
            f"{owner}: ca_file {ca!r} holds no usable PEM CA certificate ({_reason(error)})"
        ) from error
    cert = paths.get("cert_file")
    if cert is not None:
        key = paths.get("key_file")
        password = _password(owner, key_password)
        try:
            context.load_cert_chain(cert, key, password)
        except (ssl.SSLError, ValueError, TypeError) as error:
            where = f"cert_file {cert!r}" + (f" and key_file {key!r}" if key else "")
            raise ConfigurationError(
                f"{owner}: cannot load the client certificate from {where} ({_reason(error)}); "
                "check that both are PEM, that the key matches the certificate, and the "
                "key_password if the key is encrypted"
            ) from error
    return context


def describe_tls(
    url: str, ssl_context: ssl.SSLContext | None, files: dict[str, PathLike | None]
) -> dict[str, Any] | None:
    """What ``describe()`` shows of TLS: ``None`` for ``ws://``; never a password."""
    if url.split("://", 1)[0].lower() != "wss":
        return None
    if ssl_context is not None:
        return {"context": "given", "verify": ssl_context.verify_mode == ssl.CERT_REQUIRED}
    shown = {name: os.fspath(value) for name, value in files.items() if value is not None}
    return {"context": "files" if shown else "system", "verify": True, **shown}


def _readable(owner: str, option: str, value: PathLike) -> str:
    """``value`` as a path after checking that it names a readable file."""
    path = os.fspath(value)
    if not os.path.exists(path):
        raise ConfigurationError(f"{owner}: {option} {path!r} does not exist")
    if not os.path.isfile(path):
        raise ConfigurationError(f"{owner}: {option} {path!r} is not a file")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise ConfigurationError(
            f"{owner}: {option} {path!r} cannot be read ({error.strerror or error})"
        ) from None
    return path


def _password(owner: str, key_password: KeyPassword | None) -> str | bytes | None:
    """The password itself: from the environment for ``"${NAME}"``, or from the
    function; known as a secret from then on (:mod:`rxagent._secrets`)."""
    value = _given_password(owner, key_password)
    _secrets.register(value)
    return value


def _given_password(owner: str, key_password: KeyPassword | None) -> str | bytes | None:
    if key_password is None:
        return None
    if callable(key_password):
        try:
            value = key_password()
        except Exception as error:
            raise ConfigurationError(
                f"{owner}: the key_password function raised {type(error).__name__}"
            ) from None
        if not isinstance(value, str | bytes):
            raise ConfigurationError(
                f"{owner}: the key_password function returned {type(value).__name__}, "
                "not str or bytes"
            )
        return value
    if isinstance(key_password, str) and (match := _ENV_REF.match(key_password)):
        name = match.group(1)
        if name not in os.environ:
            raise ConfigurationError(
                f"{owner}: key_password reads environment variable {name}, which is not set"
            )
        return os.environ[name]
    if isinstance(key_password, str | bytes):
        return key_password
    raise ConfigurationError(
        f"{owner}: key_password must be str, bytes, '${{NAME}}' or a function, "
        f"got {type(key_password).__name__}"
    )


def _reason(error: BaseException) -> str:
    """An ``ssl`` error's reason (``"PEM lib"``, ``"KEY_VALUES_MISMATCH"``...), never a secret."""
    reason = getattr(error, "reason", None)
    return f"{type(error).__name__}: {reason or error}"
