"""A body without credentials is refused and nothing of it kept; a stranger's body is bounded.

waitress reads a whole body before the app can look at the request, so the 401 comes after the
body (docs/reverse-proxy.md: a proxy refuses it at the edge); what bounds a stranger is the
body limit, refused from the Content-Length alone, and the idle timeout.
"""

from __future__ import annotations

import socket

from tests.helpers import MakeServer, Server, read_head, wait_until

MB = 1024 * 1024


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_body_without_a_token_is_refused_and_nothing_of_it_kept(server: Server) -> None:
    uploads = server.data_dir / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    for path, auth, size in (("/api/jobs/upload", "", 2 * MB), ("/api/jobs/rsync", "", 65536),
                             ("/api/jobs/upload", "Authorization: Bearer\r\n", 65536),
                             ("/api/jobs/upload", "Authorization: Token abc\r\n", 2 * MB)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/gzip\r\n"
                         f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
                         + b"\0" * size)
            reply = _answer(sock)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), (path, auth, reply[:300])
        assert b"www-authenticate: bearer" in head.lower() and b'"error"' in body
        assert (set(uploads.iterdir()) if uploads.exists() else set()) == before


def test_a_strangers_body_past_the_limit_is_refused_unread(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/jobs/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/gzip\r\n"
                     b"Content-Length: 600000000\r\n\r\n" + b"\0" * 65536)
        reply = read_head(sock)  # no more of the 600 MB is ever sent
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]


def test_a_body_with_a_wrong_token_is_still_a_plain_401(server: Server) -> None:
    resp = server.request("POST", "/api/jobs/rsync", {"workspace": "x", "script": "true"},
                          token="wrong-token-123")
    assert resp.status == 401 and "token" in resp.json()["error"]


def test_the_retired_per_address_cap_is_named_at_start(make_server: MakeServer) -> None:
    # waitress has no public hook for it; an operator who set it learns where it went.
    server = make_server(env={"REMOTE_CI_MAX_CONNECTIONS_PER_CLIENT": "3"})
    wait_until(lambda: "REMOTE_CI_MAX_CONNECTIONS_PER_CLIENT is no longer enforced" in server.output(),
               10, "the warning about the retired setting")
    assert "docs/reverse-proxy.md" in server.output()
