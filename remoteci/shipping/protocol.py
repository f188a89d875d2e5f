"""The worker routes' wire format, pure: parsed and checked here, used by both sides."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

PREFIX = "/api/worker/jobs"
# Bytes in one log append or artifact piece. The API's server refuses bodies over
# REMOTE_CI_MAX_UPLOAD_MB + 2 MiB from their Content-Length, and that setting is at least 1:
# 2 MiB always passes, whatever the API's upload limit.
MAX_LOG_APPEND = 2 * 1024 * 1024
MIN_PIECE = 64 * 1024  # a worker halves its pieces down to this when a proxy answers 413
MAX_ARTIFACT_PATH = 4096
MAX_ARTIFACT_DEPTH = 64
SHA256_HEADER = "X-Content-SHA256"
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/\*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Append:
    """Bytes [start, end) of a job's log, as one PATCH carries them."""

    start: int
    end: int


def content_range(start: int, length: int) -> str:
    """The header of an append of `length` (> 0) bytes at `start`; the total is not known yet."""
    return f"bytes {start}-{start + length - 1}/*"


def parse_append(header: str, body_length: int) -> Append:
    """A `Content-Range: bytes first-last/*` that matches the body; ValueError says the fix."""
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise ValueError("a log append needs 'Content-Range: bytes <first>-<last>/*' naming "
                         "the offsets of its bytes in the log")
    first, last = int(match[1]), int(match[2])
    if last < first:
        raise ValueError(f"Content-Range {header.strip()!r} ends before it starts")
    if last - first + 1 != body_length:
        raise ValueError(f"Content-Range {header.strip()!r} names {last - first + 1} bytes, "
                         f"the body has {body_length}")
    if body_length > MAX_LOG_APPEND:
        raise ValueError(f"a log append may carry at most {MAX_LOG_APPEND} bytes; send "
                         "smaller pieces")
    return Append(first, last + 1)


def whole_body(body_length: int) -> Append:
    """A body without Content-Range: all of a small file at once."""
    if body_length > MAX_LOG_APPEND:
        raise ValueError(f"a body may carry at most {MAX_LOG_APPEND} bytes; send larger files "
                         "in pieces with 'Content-Range: bytes <first>-<last>/*'")
    return Append(0, body_length)


def artifact_path(raw: str) -> str:
    """A kept file's path relative to the job's artifacts; ValueError for anything that could
    name a file elsewhere (absolute, `..`, `.`, empty parts, NUL, backslash) or is too long."""
    if not raw or len(raw) > MAX_ARTIFACT_PATH:
        raise ValueError(f"an artifact path must have 1..{MAX_ARTIFACT_PATH} characters")
    if "\x00" in raw or "\\" in raw:
        raise ValueError("an artifact path may not contain NUL or a backslash")
    parts = raw.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"artifact path {raw[:200]!r} must be relative, with no empty, '.' "
                         "or '..' parts")
    if len(parts) > MAX_ARTIFACT_DEPTH:
        raise ValueError(f"artifact path {raw[:200]!r} is deeper than {MAX_ARTIFACT_DEPTH} dirs")
    return raw


def is_sha256(value: str) -> bool:
    return _SHA256.fullmatch(value) is not None


def parse_api_url(raw: str) -> str:
    """REMOTE_CI_API_URL: the API's base URL as the workers reach it, without a trailing slash."""
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{raw!r} is not an http(s) URL; give the API's base URL, e.g. "
                         "https://ci.example.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{raw!r} may not carry a query, a fragment or credentials; the "
                         "workers send REMOTE_CI_TOKEN as a Bearer token")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise ValueError(f"{raw!r} has a bad port") from None
    return url
