"""Every answer tells browsers not to sniff its type; raw text a job wrote is never run as a page."""

from __future__ import annotations

import base64
import socket

from tests.helpers import TOKEN, Server, read_head

RAW_CSP = "default-src 'none'; sandbox"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"x:{TOKEN}".encode()).decode()}


def test_every_answer_says_nosniff(server: Server) -> None:
    job = server.submit("echo '<script>alert(1)</script>'")
    server.wait_final(job["id"])
    answers = {
        "health": server.request("GET", "/api/health", token=None),
        "no token": server.request("GET", "/api/jobs", token=None),
        "no route": server.request("GET", "/nowhere"),
        "job": server.request("GET", f"/api/jobs/{job['id']}"),
        "api log": server.request("GET", f"/api/jobs/{job['id']}/logs"),
        "raw log page": server.request("GET", f"/jobs/{job['id']}/log", headers=BASIC, token=None),
        "page": server.request("GET", f"/jobs/{job['id']}", headers=BASIC, token=None),
        "client": server.request("GET", "/ci/remote-ci.sh", token=None),
        "metrics": server.request("GET", "/metrics"),
        "too large": server.request("POST", "/api/jobs/rsync", b"{" + b" " * 2**20 + b"}"),
    }
    missing = {name: resp.status for name, resp in answers.items()
               if resp.headers.get("x-content-type-options") != "nosniff"}
    assert missing == {}


def test_the_raw_log_is_sandboxed(server: Server) -> None:
    job = server.submit("echo '<script>alert(1)</script>'")
    server.wait_final(job["id"])
    raw = server.request("GET", f"/jobs/{job['id']}/log", headers=BASIC, token=None)
    assert raw.status == 200 and b"<script>" in raw.body
    assert raw.headers.get("content-security-policy") == RAW_CSP
    api = server.request("GET", f"/api/jobs/{job['id']}/logs")
    assert api.headers.get("content-security-policy") == RAW_CSP


def test_a_malformed_request_is_waitress_own_plain_text(server: Server) -> None:
    # waitress answers it before the app runs, so without the app's headers: plain text, which
    # no browser renders as a page; a proxy in front adds nosniff to it (docs/reverse-proxy.md).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        reply = read_head(sock)
    head = reply.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 400") and b"content-type: text/plain" in head
