"""An upload's body spooled into the uploads dir: written once, renamed into place, never left over."""

from __future__ import annotations

import gc
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from remoteci.errors import ApiError
from remoteci.web.spool import SPOOL_SUFFIX, SpoolBuffer, spooled_path
from remoteci.web.uploads import receive_upload
from tests.web.test_uploads import BOUNDARY, archive, form

MB = 1024 * 1024


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    return tmp_path / "uploads"  # made by the first spool, as waitress' parser would


def spooled(uploads: Path, body: bytes, chunk: int = 7000) -> SpoolBuffer:
    buf = SpoolBuffer(uploads)
    for start in range(0, len(body), chunk):
        buf.append(body[start:start + chunk])
    return buf


def spool_environ(buf: SpoolBuffer, content_type: str, query: str = "") -> dict[str, Any]:
    return {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(buf)), "wsgi.input": buf.getfile()}


def spool_files(uploads: Path) -> list[Path]:
    return [p for p in uploads.iterdir() if p.name.endswith(SPOOL_SUFFIX)]


def test_a_spooled_body_reads_back_whole_from_the_start(uploads: Path) -> None:
    body = os.urandom(100_000)
    buf = spooled(uploads, body)
    path = spooled_path(buf.getfile())
    assert path is not None and path.parent == uploads and len(buf) == len(body)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert buf.getfile().read() == body


def test_closing_or_dropping_the_buffer_removes_its_file(uploads: Path) -> None:
    closed = spooled(uploads, b"x" * 10)
    closed.close()
    dropped = spooled(uploads, b"y" * 10)
    assert len(spool_files(uploads)) == 1
    del dropped  # a request waitress never closed, e.g. its client hung up
    gc.collect()
    assert spool_files(uploads) == []


def test_a_raw_archive_is_renamed_into_place_not_copied(uploads: Path) -> None:
    data = archive(size=50_000)
    buf = spooled(uploads, data)
    spool = spooled_path(buf.getfile())
    assert spool is not None
    inode = spool.stat().st_ino
    fields, path = receive_upload(spool_environ(buf, "application/gzip", "script=make"), uploads, 10 * MB)
    assert fields == {"script": "make"} and path.read_bytes() == data
    assert path.stat().st_ino == inode and not spool.exists()
    buf.close()  # what waitress does after the answer: the archive stays
    assert list(uploads.iterdir()) == [path]


def test_a_multipart_body_is_read_through_and_its_spool_removed(uploads: Path) -> None:
    data = archive()
    buf = spooled(uploads, form(("script", None, b"make"), ("code", "src.tar.gz", data)))
    fields, path = receive_upload(
        spool_environ(buf, f"multipart/form-data; boundary={BOUNDARY}"), uploads, 10 * MB)
    assert fields == {"script": "make"} and path.read_bytes() == data
    assert list(uploads.iterdir()) == [path]


@pytest.mark.parametrize("content_type, body", [
    ("application/gzip", b"not an archive" * 100),
    ("text/plain", b"x"),
    ("application/gzip", b"\x1f\x8b" + b"\0" * (2 * MB)),
])
def test_a_refused_upload_leaves_nothing_before_the_answer(uploads: Path, content_type: str,
                                                           body: bytes) -> None:
    buf = spooled(uploads, body, chunk=256 * 1024)
    with pytest.raises(ApiError):
        receive_upload(spool_environ(buf, content_type), uploads, MB)
    assert list(uploads.iterdir()) == []
