"""A request and a response of the WSGI app, and the JSON and safety headers every answer gets.

Route modules build on these types without importing the app (remoteci/http.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs

from remoteci.auth.identity import Identity
from remoteci.errors import ApiError

Headers = list[tuple[str, str]]


@dataclass
class Request:
    environ: dict[str, Any]
    method: str
    path: str
    params: dict[str, str]  # from the path pattern

    @cached_property
    def _query(self) -> dict[str, list[str]]:
        return parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)

    def query(self, name: str) -> str | None:
        values = self._query.get(name)
        return values[-1] if values else None

    @property
    def identity(self) -> Identity:
        """Who sent this request; set by authentication (routes without auth have none)."""
        return self.environ["remoteci.identity"]  # type: ignore[no-any-return]

    def header(self, name: str) -> str:
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    def body(self, limit: int) -> bytes:
        length = self.content_length()
        if length > limit:
            raise ApiError(413, f"the request body is larger than {limit // 1024} KB")
        return bytes(self.environ["wsgi.input"].read(length)) if length else b""

    def content_length(self) -> int:
        try:
            return max(0, int(self.environ.get("CONTENT_LENGTH") or 0))
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None


@dataclass
class Response:
    status: int
    headers: Headers
    body: Iterable[bytes]
    streamed: bool = False  # headers go out at once, before the first (maybe late) chunk


# One encoder for every response: json.dumps with any option builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"))


def json_response(status: int, obj: Any, headers: Headers | None = None) -> Response:
    data = _JSON.encode(obj).encode()
    return Response(status, [("Content-Type", "application/json"),
                             ("Content-Length", str(len(data))), *(headers or [])], [data])


def error_response(status: int, message: str, headers: Headers | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


# Anything not an HTML page of ours (a log, an artifact, JSON) is never a document a browser
# runs: no scripts, no styles, no requests, a unique origin. HTML pages carry their own policy.
RAW_CSP = "default-src 'none'; sandbox"


def with_safety_headers(headers: Headers) -> Headers:
    """nosniff on every answer, so a log or an artifact is never read as HTML or script."""
    names = {name.lower() for name, _ in headers}
    extra = [] if "x-content-type-options" in names else [("X-Content-Type-Options", "nosniff")]
    if "content-security-policy" not in names:
        extra.append(("Content-Security-Policy", RAW_CSP))
    return headers + extra if extra else headers
