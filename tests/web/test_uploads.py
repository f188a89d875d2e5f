"""Uploads: archives stream to a private file; every bad request is a clean 400/413 that leaves nothing."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from remoteci.errors import ApiError
from remoteci.web.uploads import MAX_FIELDS, receive_upload

MB = 1024 * 1024
BOUNDARY = "----remoteci-test-boundary"


def archive(gz: bool = True, size: int = 1000) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        info = tarfile.TarInfo("src/main.c")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buffer.getvalue()


def form(*parts: tuple[str, str | None, bytes], boundary: str = BOUNDARY, end: bool = True) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if end else b"")


def environ(body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}", *,
            length: int | str | None = "auto", query: str = "") -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type,
                           "QUERY_STRING": query, "wsgi.input": io.BytesIO(body)}
    if length == "auto":
        env["CONTENT_LENGTH"] = str(len(body))
    elif length is not None:
        env["CONTENT_LENGTH"] = str(length)
    return env


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    path = tmp_path / "uploads"
    path.mkdir()
    return path


def refused(env: dict[str, Any], uploads: Path, status: int, text: str, max_bytes: int = 10 * MB) -> ApiError:
    with pytest.raises(ApiError) as caught:
        receive_upload(env, uploads, max_bytes)
    assert caught.value.status == status
    assert text in caught.value.message, caught.value.message
    assert list(uploads.iterdir()) == []
    return caught.value


# ---- accepted ----

def test_multipart_upload_saves_the_archive_and_returns_every_text_field(uploads: Path) -> None:
    data = archive()
    env = environ(form(("script", None, b"make test"), ("code", "src.tar.gz", data),
                       ("timeout", None, b"600"), ("env", None, b'{"A": "1"}'),
                       ("artifacts", None, b'["*.xml"]'), ("webhook", None, b"https://ci.example/hook"),
                       ("custom", None, "ünï".encode())))
    fields, path = receive_upload(env, uploads, 10 * MB)
    assert fields == {"script": "make test", "timeout": "600", "env": '{"A": "1"}', "artifacts": '["*.xml"]',
                      "webhook": "https://ci.example/hook", "custom": "ünï"}
    assert path.parent == uploads and path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_upload_gets_a_new_unguessable_name(uploads: Path) -> None:
    names = {receive_upload(environ(form(("code", "a.tgz", archive()))), uploads, MB)[1].name
             for _ in range(3)}
    assert len(names) == 3
    assert all(len(name.split(".")[0]) == 32 for name in names)


@pytest.mark.parametrize("content_type",
                         ["application/gzip", "application/x-gzip", "application/octet-stream"])
def test_raw_gzip_body_takes_fields_from_the_query_string(uploads: Path, content_type: str) -> None:
    data = archive()
    env = environ(data, content_type, query="script=make%20test&timeout=60&name=nightly&env=%7B%7D")
    fields, path = receive_upload(env, uploads, 10 * MB)
    assert fields == {"script": "make test", "timeout": "60", "name": "nightly", "env": "{}"}
    assert path.read_bytes() == data


def test_raw_plain_tar_body(uploads: Path) -> None:
    data = archive(gz=False)
    fields, path = receive_upload(environ(data, "application/x-tar", query="script=ls"), uploads, MB)
    assert fields == {"script": "ls"} and path.read_bytes() == data


def test_body_without_content_length_is_read_to_its_end(uploads: Path) -> None:
    data = archive()
    _, path = receive_upload(environ(form(("code", "a.tgz", data)), length=None), uploads, MB)
    assert path.read_bytes() == data


def test_uploads_dir_is_created_when_missing(tmp_path: Path) -> None:
    _, path = receive_upload(environ(archive(), "application/gzip"), tmp_path / "new" / "uploads", MB)
    assert path.exists()


# ---- size limits ----

def test_content_length_over_the_limit_is_refused_before_reading(uploads: Path) -> None:
    env = environ(form(("code", "a.tgz", archive(size=100_000))), length=50 * MB)
    error = refused(env, uploads, 413, "REMOTE_CI_MAX_UPLOAD_MB", max_bytes=MB)
    assert "1 MB" in error.message
    assert env["wsgi.input"].tell() == 0


def test_raw_body_over_the_limit_without_content_length_stops_reading(uploads: Path) -> None:
    body = archive() + bytes(3 * MB)
    env = environ(body, "application/gzip", length=None)
    refused(env, uploads, 413, "1 MB limit", max_bytes=MB)
    assert env["wsgi.input"].tell() <= MB + 1


def test_archive_part_over_the_limit_is_refused_while_streaming(uploads: Path) -> None:
    env = environ(form(("code", "a.tgz", b"\x1f\x8b" + bytes(MB + 10))))
    refused(env, uploads, 413, "REMOTE_CI_MAX_UPLOAD_MB", max_bytes=MB)


# ---- malformed requests ----

def test_missing_boundary(uploads: Path) -> None:
    refused(environ(form(("code", "a.tgz", archive())), "multipart/form-data"), uploads, 400, "boundary")


def test_wrong_boundary(uploads: Path) -> None:
    body = form(("code", "a.tgz", archive()), boundary="something-else")
    refused(environ(body), uploads, 400, "check that the boundary")


def test_body_shorter_than_its_content_length(uploads: Path) -> None:
    body = form(("code", "a.tgz", archive()))
    refused(environ(body, length=len(body) + 500), uploads, 400, "ended 500 bytes before its Content-Length")


def test_body_cut_before_the_final_boundary(uploads: Path) -> None:
    body = form(("code", "a.tgz", archive()), end=False)[:-200]
    refused(environ(body), uploads, 400, "malformed multipart/form-data")


def test_huge_part_headers(uploads: Path) -> None:
    header = f'Content-Disposition: form-data; name="code"; filename="{"a" * 20_000}"'
    body = f"--{BOUNDARY}\r\n{header}\r\n\r\n".encode() + archive() + f"\r\n--{BOUNDARY}--\r\n".encode()
    refused(environ(body), uploads, 400, "header length exceeded")


def test_missing_code_part(uploads: Path) -> None:
    refused(environ(form(("script", None, b"make"))), uploads, 400, "no `code` file")


def test_two_code_parts(uploads: Path) -> None:
    refused(environ(form(("code", "a.tgz", archive()), ("code", "b.tgz", archive()))), uploads, 400,
            "two `code` parts")


def test_empty_archive(uploads: Path) -> None:
    refused(environ(form(("code", "a.tgz", b""), ("script", None, b"make"))), uploads, 400, "empty")


def test_empty_raw_body(uploads: Path) -> None:
    refused(environ(b"", "application/gzip"), uploads, 400, "empty")


def test_file_that_is_not_an_archive(uploads: Path) -> None:
    refused(environ(form(("code", "notes.txt", b"hello, not a tarball\n" * 50))), uploads, 400,
            ".tar.gz, .tgz, .tar.zst or .tar")


def test_part_without_a_name(uploads: Path) -> None:
    refused(environ(form(("", None, b"x"), ("code", "a.tgz", archive()))), uploads, 400, "no field name")


def test_text_field_given_twice(uploads: Path) -> None:
    body = form(("script", None, b"a"), ("script", None, b"b"), ("code", "a.tgz", archive()))
    refused(environ(body), uploads, 400, "'script' is given twice")


def test_too_many_fields(uploads: Path) -> None:
    parts = [(f"f{i}", None, b"x") for i in range(MAX_FIELDS + 1)]
    refused(environ(form(("code", "a.tgz", archive()), *parts)), uploads, 400, f"more than {MAX_FIELDS}")


def test_text_field_over_one_mb(uploads: Path) -> None:
    body = form(("code", "a.tgz", archive()), ("script", None, b"x" * (MB + 1)))
    refused(environ(body), uploads, 400, "'script' is larger than 1 MB")


def test_text_field_that_is_not_utf8(uploads: Path) -> None:
    refused(environ(form(("script", None, b"\xff\xfe"), ("code", "a.tgz", archive()))), uploads, 400,
            "not UTF-8")


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
def test_unsupported_content_type_names_the_accepted_ones(uploads: Path, content_type: str) -> None:
    error = refused(environ(archive(), content_type), uploads, 400, "multipart/form-data")
    assert "application/gzip" in error.message


def test_content_length_that_is_not_a_number(uploads: Path) -> None:
    refused(environ(archive(), "application/gzip", length="12abc"), uploads, 400, "Content-Length")


def test_query_field_given_twice(uploads: Path) -> None:
    refused(environ(archive(), "application/gzip", query="script=a&script=b"), uploads, 400, "given twice")
