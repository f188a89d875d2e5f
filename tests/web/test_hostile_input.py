"""What a hostile client sends, on the wire to a live server: each is a 4xx naming the problem,
and the server goes on serving everyone else."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from collections.abc import Iterator

import pytest

from remoteci.web import openapi
from tests.helpers import TOKEN, RedisServer, Server, wait_until

IDLE_TIMEOUT = 2  # REMOTE_CI_HTTP_IDLE_TIMEOUT of this module's server
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("hostile")
    rs = RedisServer(base / "redis").start()
    srv = Server(base / "srv", redis_url=rs.url, command="api",
                 env={"REMOTE_CI_HTTP_IDLE_TIMEOUT": str(IDLE_TIMEOUT)})
    srv.make_workspace("proj")
    try:
        yield srv.start()
    finally:
        srv.shutdown()
        rs.stop()


def _submit(api: Server, body: bytes | str) -> tuple[int, str]:
    resp = api.request("POST", "/api/jobs/rsync", body,
                       headers={"Content-Type": "application/json"})
    assert resp.headers["content-type"] == "application/json", resp.body[:200]
    return resp.status, str(resp.json()["error"] if resp.status != 202 else "")


def _raw(api: Server, data: bytes, wait: float = 10) -> bytes:
    """Send bytes as they are (no client library would send these) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("empty"))
    return out.getvalue()


def _status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer[:300]
    return int(head.split()[1]), str(json.loads(body)["error"])


def test_deeply_nested_json_is_a_400_not_a_500(api: Server) -> None:
    status, error = _submit(api, "[" * 100_000)
    assert (status, "nested deeper than 32 levels" in error) == (400, True), error
    assert api.request("GET", "/api/health", token=None).status == 200


@pytest.mark.parametrize("timeout, fragment", [
    ("1e999", "out of range"), ("-1e999", "out of range"), ("NaN", "NaN is not a JSON number"),
    ("9" * 5000, "has 5000 digits"),  # past Python's 4300-digit int conversion limit
    ("1e300", "'timeout' must be a whole number"),
])
def test_huge_numbers_are_400s_naming_them(api: Server, timeout: str, fragment: str) -> None:
    body = '{"workspace": "proj", "script": "true", "timeout": ' + timeout + "}"
    status, error = _submit(api, body)
    assert status == 400 and fragment in error, error


def test_a_huge_number_in_a_multipart_field_is_a_400(api: Server) -> None:
    boundary = "b0undary"
    parts = [("script", "true"), ("timeout", "9" * 5000)]
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                   for name, value in parts).encode()
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"code\"; filename=\"c.tar\"\r\n"
             "\r\n").encode() + _tar() + f"\r\n--{boundary}--\r\n".encode()
    resp = api.request("POST", "/api/jobs/upload", body,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status == 400 and "'timeout'" in resp.json()["error"], resp.body


def test_invalid_utf8_is_a_400_naming_the_byte(api: Server) -> None:
    status, error = _submit(api, b'{"workspace": "proj", "script": "\xff\xfe"}')
    assert status == 400 and "not UTF-8 text (byte 33 is invalid)" in error, error


def test_a_duplicate_key_is_a_400_naming_it(api: Server) -> None:
    status, error = _submit(api, '{"workspace": "proj", "script": "true", "script": "rm -rf ~"}')
    assert status == 400 and "key 'script' appears twice" in error, error


def test_a_lone_surrogate_is_a_400(api: Server) -> None:
    status, error = _submit(api, '{"workspace": "proj", "script": "echo \\ud800"}')
    assert status == 400 and "lone surrogate" in error, error


@pytest.mark.parametrize("fields, fragment", [
    ({"script": "true\u0000rm"}, "field 'script' contains a NUL byte"),
    ({"script": "true", "env": {"A": "x\u0000y"}}, "env 'A' contains a NUL byte"),
    ({"script": "true", "env": {"A\u0000": "x"}}, "is not a valid variable name"),
    ({"script": "true", "name": "n\u0000"}, "field 'name' must be printable"),
    ({"script": "true", "artifacts": ["a\u0000"]}, "contains a NUL byte"),
])
def test_nul_in_a_string_is_a_400_naming_the_field(api: Server, fields: dict[str, object],
                                                   fragment: str) -> None:
    status, error = _submit(api, json.dumps({"workspace": "proj", **fields}))
    assert status == 400 and fragment in error, error


def test_nul_in_the_workspace_is_a_400(api: Server) -> None:
    status, error = _submit(api, json.dumps({"workspace": "proj\u0000/../..", "script": "true"}))
    assert status == 400 and "'workspace' contains a NUL byte" in error, error


@pytest.mark.parametrize("header", [b"Idempotency-Key: a\x00b", b"X-Anything: \x00",
                                    b"Authorization: Bearer " + TOKEN.encode() + b"\x00"])
def test_nul_in_a_header_value_is_a_400_saying_so(api: Server, header: bytes) -> None:
    body = b'{"workspace": "proj", "script": "true"}'
    answer = _raw(api, b"POST /api/jobs/rsync HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"
                  + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    status, error = _status_and_error(answer)
    assert status == 400 and "NUL" in error, error


@pytest.mark.parametrize("length, expected, fragment", [
    (b"1" + b"0" * 30, 413, "exceeds max_body"),
    (b"-5", 400, "must be one whole number of bytes"),
    (b"abc", 400, "must be one whole number of bytes"),
    (b"5\r\nContent-Length: 6", 400, "sent once"),
])
def test_an_absurd_content_length_is_refused_before_any_body(api: Server, length: bytes,
                                                             expected: int, fragment: str) -> None:
    answer = _raw(api, b"POST /api/jobs/rsync HTTP/1.1\r\nHost: x\r\n" + AUTH
                  + b"Content-Length: " + length + b"\r\n\r\n")  # no body follows, none is awaited
    status, error = _status_and_error(answer)
    assert status == expected and fragment in error, error
    assert api.request("GET", "/api/health", token=None).status == 200


def test_a_body_trickled_slower_than_the_idle_timeout_is_cut_off(api: Server) -> None:
    """A byte every IDLE_TIMEOUT + 1 seconds: the connection is closed after the first gap,
    and meanwhile everyone else is answered as usual."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    try:
        sock.sendall(b"POST /api/jobs/rsync HTTP/1.1\r\nHost: x\r\n" + AUTH
                     + b"Content-Length: 1000\r\n\r\n{")
        started = time.monotonic()
        sent = 1

        def closed() -> bool:
            nonlocal sent
            assert api.request("GET", "/api/health", token=None, timeout=5).status == 200
            if time.monotonic() - started < sent * (IDLE_TIMEOUT + 1):
                return False
            try:
                sock.sendall(b" ")
                sent += 1
                sock.settimeout(0.2)
                return sock.recv(1) == b""  # the server hung up: end of stream
            except TimeoutError:
                return False
            except OSError:
                return True  # reset: the server hung up
        # The bound: one gap past the timeout, plus waitress' check interval, plus slack.
        wait_until(closed, 4 * (IDLE_TIMEOUT + 1), "the server to cut the trickled body off",
                   interval=0.2)
        elapsed = time.monotonic() - started
        assert sent <= 3 and elapsed < 4 * (IDLE_TIMEOUT + 1), (sent, elapsed)
        print(f"trickled body cut off after {elapsed:.1f} s and {sent} bytes")
    finally:
        sock.close()
    assert api.request("GET", "/api/stats").status == 200


def test_the_idle_timeout_is_bounded_and_checked_often_enough() -> None:
    from remoteci.config import ConfigError, load_settings
    from remoteci.web.server import idle_check_interval

    env = {"REMOTE_CI_TOKEN": TOKEN}
    assert load_settings(env).http_idle_timeout == 120
    with pytest.raises(ConfigError, match="REMOTE_CI_HTTP_IDLE_TIMEOUT"):
        load_settings({**env, "REMOTE_CI_HTTP_IDLE_TIMEOUT": "0"})
    assert [idle_check_interval(t) for t in (1, 2, 40, 120, 3600)] == [1, 1, 10, 30, 30]


def test_a_request_line_over_the_header_limit_is_the_documented_431(api: Server) -> None:
    """Found by the fuzz: a raw upload's script in the query string may be long enough to pass
    waitress' 256 KiB header limit, which answers 431 itself (now in the document)."""
    resp = api.request("POST", "/api/jobs/upload?script=" + "x" * 300_000, _tar(),
                       headers={"Content-Type": "application/x-tar"})
    assert resp.status == 431 and "exceeds max_header" in resp.json()["error"], resp.body[:200]
    documented = openapi.load()["paths"]["/api/jobs/upload"]["post"]["responses"]
    assert "431" in documented
