"""The OpenAPI 3.1 document of the API, served at GET /api/openapi.json.

It lives as plain JSON next to this file (openapi.json) rather than being assembled from code:
it is what users' tooling reads, so it is reviewed as what it is, diffs line by line, and
validators read the very file. Only what differs per server is filled in at start (the largest
`timeout`); tests hold the rest to the code: every route, every bound, every job field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).resolve().parent / "openapi.json"


def load() -> dict[str, Any]:
    """The document as shipped."""
    with DOCUMENT.open("rb") as f:
        data: dict[str, Any] = json.load(f)
    return data


def for_server(job_timeout: int) -> dict[str, Any]:
    """The document with this server's limits in place of the defaults."""
    doc = load()
    doc["components"]["schemas"]["Timeout"]["maximum"] = job_timeout
    return doc


def render(job_timeout: int) -> bytes:
    """The bytes to serve; made once per process."""
    return json.dumps(for_server(job_timeout), separators=(",", ":")).encode()
