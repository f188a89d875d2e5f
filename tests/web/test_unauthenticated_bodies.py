"""A body without credentials is refused before it is read, and one client address may hold only
so many connections: a stranger can neither fill the data disk nor every connection slot."""

from __future__ import annotations

import json
import socket
import time

from tests.helpers import MakeServer, Server, read_head, wait_until


def test_a_body_without_a_token_is_refused_before_it_is_read(server: Server) -> None:
    uploads = server.data_dir / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    for path, auth in (("/api/jobs/upload", ""), ("/api/jobs/rsync", ""),
                       ("/api/jobs/upload", "Authorization: Bearer\r\n"),
                       ("/api/jobs/upload", "Authorization: Token abc\r\n")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/gzip\r\n"
                         f"Content-Length: 400000000\r\n\r\n".encode() + b"\0" * 65536)
            started = time.monotonic()
            reply = read_head(sock)  # no more of the 400 MB is ever sent
            assert reply.startswith(b"HTTP/1.1 401"), (path, auth, reply)
            assert time.monotonic() - started < 5
            head = reply.partition(b"\r\n\r\n")[0]
            assert b"www-authenticate: bearer" in head.lower()
        assert (set(uploads.iterdir()) if uploads.exists() else set()) == before  # nothing spooled


def test_a_body_with_a_wrong_token_is_still_a_plain_401(server: Server) -> None:
    resp = server.request("POST", "/api/jobs/rsync", {"workspace": "x", "script": "true"},
                          token="wrong-token-123")
    assert resp.status == 401 and "token" in resp.json()["error"]


def connect_from(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def health_over(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    return read_head(sock)


def test_one_client_address_holds_only_so_many_connections(make_server: MakeServer) -> None:
    server = make_server(env={"REMOTE_CI_MAX_CONNECTIONS_PER_CLIENT": "3"})
    held = [connect_from("127.0.0.2", server.port) for _ in range(3)]
    try:
        for sock in held:
            assert health_over(sock).startswith(b"HTTP/1.1 200")
        with connect_from("127.0.0.2", server.port) as extra:
            reply = read_head(extra)
            assert reply.startswith(b"HTTP/1.1 429"), reply
            head, _, body = reply.partition(b"\r\n\r\n")
            assert b"retry-after:" in head.lower()
            assert "REMOTE_CI_MAX_CONNECTIONS_PER_CLIENT" in json.loads(
                body + extra.recv(4096))["error"]
        # Another address, and the host itself (a proxy in front), are not held up.
        with connect_from("127.0.0.3", server.port) as other:
            assert health_over(other).startswith(b"HTTP/1.1 200")
        assert server.request("GET", "/api/health", token=None).status == 200
        held.pop().close()

        def accepted_again() -> bool:
            with connect_from("127.0.0.2", server.port) as again:
                return health_over(again).startswith(b"HTTP/1.1 200")

        wait_until(accepted_again, 10, "a slot to come free once a connection closed")
    finally:
        for sock in held:
            sock.close()
