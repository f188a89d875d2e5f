"""The worker's side of the wire: small requests to the API with the admin token, bounded.

http.client, not a library: four request shapes on one keep-alive connection per thread.
An unreachable API, a 5xx, a 429 or a 503 is `Unreachable` (try again later); any other
answer that is not a success is `Refused` (trying again cannot help).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from remoteci.shipping import protocol

TIMEOUT = 30.0  # seconds any one network step may take
CHUNK = 1024 * 1024


class Unreachable(Exception):
    """No answer, or one saying to come back later."""


class Refused(Exception):
    """The API answered that this request cannot succeed; the message is its reason."""


class TooLarge(Refused):
    """413: something between us and the API (a proxy's body limit) takes smaller bodies."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        try:
            return str(json.loads(self.body)["error"])
        except (ValueError, KeyError, TypeError):
            return self.body[:200].decode(errors="replace")


class ApiClient:
    """One keep-alive connection to the API; not shared between threads."""

    def __init__(self, base_url: str, token: str, timeout: float = TIMEOUT):
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._conn = kind(self.host, self.port, timeout=self.timeout)
        return self._conn

    def _send(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        try:
            conn = self._connection()
            conn.request(method, self.prefix + path, body=body, headers=all_headers)
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Unreachable(f"{method} {path}: {exc or type(exc).__name__}") from None

    def _call(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,)) -> Answer:
        resp = self._send(method, path, body, headers)
        try:
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Unreachable(f"{method} {path}: {exc or type(exc).__name__}") from None
        if answer.status in ok:
            return answer
        if answer.status >= 500 or answer.status == 429:
            raise Unreachable(f"{method} {path}: {answer.status} {answer.error()}")
        if answer.status == 413:
            raise TooLarge(f"{method} {path}: 413 {answer.error()}")
        raise Refused(f"{method} {path}: {answer.status} {answer.error()}")

    # --- the log ---------------------------------------------------------------------------

    def append_log(self, job_id: str, start: int, data: bytes) -> int:
        """Send bytes at `start`; return the length the API's copy has now (where to go on)."""
        answer = self._call("PATCH", f"{protocol.PREFIX}/{job_id}/log", data,
                            {"Content-Range": protocol.content_range(start, len(data)),
                             "Content-Type": "application/octet-stream"}, ok=(200, 416))
        try:
            return int(answer.headers["x-log-offset"])
        except (KeyError, ValueError):
            raise Refused(f"the API answered a log append without X-Log-Offset "
                          f"({answer.status})") from None

    # --- the upload ------------------------------------------------------------------------

    def fetch_upload(self, job_id: str, dest: Path, size: int | None, sha256: str | None) -> None:
        """Stream the job's archive to `dest` (0600), checked against its size and sha256."""
        path = f"{protocol.PREFIX}/{job_id}/upload"
        resp = self._send("GET", path)
        if resp.status != 200:
            answer = Answer(resp.status, {}, resp.read())
            if resp.status >= 500 or resp.status == 429:
                raise Unreachable(f"GET {path}: {resp.status} {answer.error()}")
            raise Refused(f"GET {path}: {resp.status} {answer.error()}")
        expected = sha256 or resp.getheader(protocol.SHA256_HEADER)
        digest = hashlib.sha256()
        got = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            while chunk := resp.read(CHUNK):
                got += len(chunk)
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Unreachable(f"GET {path}: cut off after {got} bytes: {exc}") from None
        finally:
            os.close(fd)
        if size is not None and got != size:
            self.close()
            raise Unreachable(f"GET {path}: got {got} bytes of {size}")
        if expected and digest.hexdigest() != expected:
            raise Unreachable(f"GET {path}: the copy's sha256 is not the upload's")

    def drop_upload(self, job_id: str) -> None:
        self._call("DELETE", f"{protocol.PREFIX}/{job_id}/upload", ok=(200, 404))

    # --- artifacts -------------------------------------------------------------------------

    def put_artifact(self, job_id: str, rel: str, source: Path) -> None:
        """The file in pieces of at most MAX_LOG_APPEND bytes; a failed piece starts it over."""
        path = f"{protocol.PREFIX}/{job_id}/artifacts/{quote(rel)}"
        limit = protocol.MAX_LOG_APPEND
        with open(source, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            position = 0
            while True:
                piece = os.pread(f.fileno(), min(limit, size - position), position)
                headers = {"Content-Type": "application/octet-stream"}
                if piece:
                    headers["Content-Range"] = protocol.content_range(position, len(piece))
                try:
                    self._call("PUT", path, piece, headers)
                except TooLarge:
                    if limit <= protocol.MIN_PIECE:
                        raise
                    limit //= 2  # a proxy's body limit: smaller pieces, the same bytes
                    continue
                position += len(piece)
                if position >= size:
                    return

    def commit_artifacts(self, job_id: str, manifest: dict[str, Any]) -> None:
        self._call("POST", f"{protocol.PREFIX}/{job_id}/artifacts",
                   json.dumps(manifest).encode(), {"Content-Type": "application/json"})
