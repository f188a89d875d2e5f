"""A minimal keep-alive HTTP client for our own scenarios (the shared harness has its own)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from typing import Any

from servers import TOKEN

FINAL = {"success", "failed", "timeout", "error", "cancelled"}


class Api:
    def __init__(self, url: str, timeout: float = 120.0):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.timeout = timeout
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        # Large blocks: http.client sends file bodies in `blocksize` reads (8 KB by default).
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout,
                                          blocksize=1 << 20)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        hdrs = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.conn.close()
                    self.conn = self._connect()
                return resp.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = self._connect()
                if attempt or (body is not None and hasattr(body, "read")):
                    raise
        raise RuntimeError("unreachable")

    def json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, data = self.request(method, path, body, headers)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status} {data[:300]!r}")
        return json.loads(data)

    def submit(self, workspace: str, script: str, **extra: Any) -> str:
        doc = self.json("POST", "/api/jobs/rsync", {"workspace": workspace, "script": script,
                                                    **extra})
        return str(doc.get("id") or doc.get("job_id"))

    def status(self, job_id: str) -> str:
        return str(self.json("GET", f"/api/jobs/{job_id}")["status"])

    def wait(self, job_id: str, until: set[str] = FINAL, poll: float = 0.005,
             max_wait: float = 300.0) -> tuple[str, float]:
        """Poll until the status is in `until`; return it and the monotonic time seen."""
        deadline = time.monotonic() + max_wait
        while True:
            status = self.status(job_id)
            now = time.monotonic()
            if status in until or now > deadline:
                return status, now
            time.sleep(poll)

    def logs(self, job_id: str) -> bytes:
        status, data = self.request("GET", f"/api/jobs/{job_id}/logs")
        return data if status == 200 else b""

    def timed(self, method: str, path: str, n: int) -> list[float]:
        """Milliseconds of `n` sequential requests on one keep-alive connection."""
        out = []
        for _ in range(n):
            t = time.perf_counter()
            status, _ = self.request(method, path)
            out.append((time.perf_counter() - t) * 1000)
            if status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {status}")
        return out

    def close(self) -> None:
        self.conn.close()


def p50(values: list[float]) -> float:
    return pct(values, 50)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)
