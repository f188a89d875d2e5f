"""Receiving an uploaded archive in the WSGI app: streamed to disk, bounded, removed on any error.

Two forms are accepted: `multipart/form-data` (what `curl -F code=@src.tar.gz -F script=...` sends)
and a raw archive body with the other fields in the query string (`curl --data-binary @src.tar.gz`).

Multipart is parsed by `multipart` (defnull/multipart, by bottle's author, MIT, one file, no
dependencies) rather than by hand: RFC 7578 bodies are where hand-written parsers get boundaries,
header folding and split delimiters wrong, and the stdlib has nothing streaming left (cgi is gone in
3.13, email.parser holds the whole body). Its PushMultipartParser is sans-IO, so reading, the size
limits and the file on disk stay here.

waitress reads the whole request before calling the app (past `inbuf_overflow` into an unnamed
file in the data dir's spool, see web/server.py), de-chunks `Transfer-Encoding: chunked` and then
sets CONTENT_LENGTH itself, and refuses bodies over its `max_request_body_size`; give it
`max_request_bytes(...)` so it stops oversized uploads first. The app reads `wsgi.input` in 64 KiB
chunks into the uploads dir, so memory stays flat whatever the size; the body is written twice
(waitress' spool, then the archive), the price of keeping to waitress' public API.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs

from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from remoteci.errors import ApiError
from remoteci.sources.archives import ARCHIVE_KINDS, sniff_archive

RAW_TYPES = ("application/gzip", "application/x-gzip", "application/zstd", "application/x-tar",
             "application/octet-stream")
MAX_FIELD_BYTES = 1024 * 1024
MAX_FIELDS = 50
# Room in a multipart body for the text fields and part headers next to the archive itself.
FORM_ALLOWANCE = 2 * 1024 * 1024
_CHUNK = 64 * 1024
_HOW = "send the archive as file field `code` (curl -F code=@src.tar.gz -F script='make test')"


def max_request_bytes(max_upload_bytes: int) -> int:
    """The largest request body an upload may need, for the server's own body limit."""
    return max_upload_bytes + FORM_ALLOWANCE


def receive_upload(environ: dict[str, Any], uploads_dir: Path, max_bytes: int) -> tuple[dict[str, str], Path]:
    """Save the uploaded archive under `uploads_dir`; return the text fields and the file's path.

    Raises ApiError: 400 for a malformed request or an upload that is not an archive, 413 past
    `max_bytes`. On any error nothing is left in `uploads_dir`.
    """
    mime, options = parse_options_header(environ.get("CONTENT_TYPE") or "")
    if mime == "multipart/form-data":
        limit = max_request_bytes(max_bytes)
    elif mime in RAW_TYPES:
        limit = max_bytes
    else:
        raise ApiError(400, f"Content-Type {mime or '(none)'!r} is not an upload; use multipart/form-data "
                            f"and {_HOW}, or send the archive as the body with Content-Type "
                            f"{', '.join(RAW_TYPES)} and the other fields in the query string")
    length = _content_length(environ)
    if length is not None and length > limit:
        raise _too_large(max_bytes)  # before reading a byte of the body
    body = _body_chunks(environ["wsgi.input"], length, limit, max_bytes)
    upload = _Upload(uploads_dir, max_bytes)
    try:
        if mime == "multipart/form-data":
            fields = _receive_form(body, options.get("boundary", ""), length, upload)
        else:
            fields = _query_fields(environ.get("QUERY_STRING", ""))
            upload.open()
            for chunk in body:
                upload.write(chunk)
        path = upload.finish()
        sniff_archive(path)
        return fields, path
    except BaseException:
        upload.discard()
        raise


def _content_length(environ: dict[str, Any]) -> int | None:
    raw = str(environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ApiError(400, f"Content-Length {raw!r} is not a number of bytes")
    return int(raw)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"upload is larger than this server's {max_bytes / 2**20:g} MB limit "
                         "(REMOTE_CI_MAX_UPLOAD_MB); send a smaller archive, e.g. without build outputs")


def _body_chunks(stream: IO[bytes], length: int | None, limit: int, max_bytes: int) -> Iterator[bytes]:
    """The request body in chunks, never reading past Content-Length or (without one) past the limit."""
    remaining = limit + 1 if length is None else length
    while remaining > 0:
        chunk = stream.read(min(_CHUNK, remaining))
        if not chunk:
            if length is not None:
                raise ApiError(400, f"the request body ended {remaining} bytes before its Content-Length; "
                                    "the upload was cut off, send it again")
            return
        remaining -= len(chunk)
        yield chunk
    if length is None:
        raise _too_large(max_bytes)


@dataclass
class _Upload:
    """The archive being received: created on demand, 0600, an unguessable name, removed on failure."""

    directory: Path
    max_bytes: int
    path: Path | None = None
    fd: int | None = None
    size: int = 0

    def open(self) -> None:
        if self.path is not None:
            raise ApiError(400, f"the upload has two `code` parts; {_HOW}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.directory / _archive_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o600)

    def write(self, chunk: bytes) -> None:
        assert self.fd is not None
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise _too_large(self.max_bytes)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]

    def finish(self) -> Path:
        """Close the file and hand it over; refuse a missing or empty archive."""
        self._close()
        if self.path is None:
            raise ApiError(400, f"the upload has no `code` file; {_HOW}")
        if self.size == 0:
            raise ApiError(400, f"the uploaded archive is empty; send a {ARCHIVE_KINDS} archive")
        return self.path

    def discard(self) -> None:
        self._close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _archive_name() -> str:
    return f"{secrets.token_hex(16)}.upload"


@dataclass
class _Form:
    """Routes multipart events: the `code` part to the upload file, the rest into bounded text fields."""

    upload: _Upload
    fields: dict[str, str] = field(default_factory=dict)
    name: str | None = None  # the text field being read, None while in `code`
    parts: int = 0
    value: bytearray = field(default_factory=bytearray)

    def on_event(self, event: MultipartSegment | bytes | None) -> None:
        if isinstance(event, MultipartSegment):
            self._start(event)
        elif event is None:
            self._end()
        elif self.name is None:
            self.upload.write(event)
        else:
            self.value += event
            if len(self.value) > MAX_FIELD_BYTES:
                raise ApiError(400, f"form field {self.name!r} is larger than "
                                    f"{MAX_FIELD_BYTES // 2**20} MB; send the archive as `code`")

    def _start(self, segment: MultipartSegment) -> None:
        self.parts += 1
        name = segment.name or ""
        if not name:
            raise ApiError(400, f"a multipart part has no field name; {_HOW}")
        if name == "code":
            self.upload.open()
            self.name = None
            return
        if name in self.fields:
            raise ApiError(400, f"form field {name!r} is given twice; send it once")
        if len(self.fields) >= MAX_FIELDS:
            raise ApiError(400, f"the upload has more than {MAX_FIELDS} form fields")
        self.name, self.value = name, bytearray()

    def _end(self) -> None:
        if self.name is not None:
            try:
                self.fields[self.name] = self.value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"form field {self.name!r} is not UTF-8 text") from None
        self.name = None


def _receive_form(body: Iterator[bytes], boundary: str, length: int | None,
                  upload: _Upload) -> dict[str, str]:
    """Parse the form as it streams in; the archive part goes straight to disk."""
    if not boundary:
        raise ApiError(400, f"multipart/form-data without a boundary in its Content-Type; {_HOW}")
    form = _Form(upload)
    at_end = False
    try:
        parser = PushMultipartParser(boundary, content_length=-1 if length is None else length,
                                     max_segment_count=MAX_FIELDS + 2)
        for chunk in body:
            for event in parser.parse(chunk):
                form.on_event(event)
        at_end = True
        for event in parser.parse(b""):  # end of input: refuses a body cut before its last boundary
            form.on_event(event)
    except MultipartError as err:
        if at_end and not form.parts:  # the parser skips what precedes the first boundary
            raise ApiError(400, "the multipart body holds no part; check that the boundary in its "
                                f"Content-Type matches the body; {_HOW}") from None
        raise ApiError(400, f"malformed multipart/form-data body ({err}); {_HOW}") from None
    return form.fields


def _query_fields(query: str) -> dict[str, str]:
    """Fields of a raw-body upload, which come in the query string (?script=...&timeout=...)."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False, errors="strict",
                          max_num_fields=MAX_FIELDS)
    except ValueError as err:
        raise ApiError(400, f"the query string is not valid: {err}") from None
    fields: dict[str, str] = {}
    for name, values in parsed.items():
        if len(values) > 1:
            raise ApiError(400, f"query field {name!r} is given twice; send it once")
        if len(values[0].encode()) > MAX_FIELD_BYTES:
            raise ApiError(400, f"query field {name!r} is larger than {MAX_FIELD_BYTES // 2**20} MB")
        fields[name] = values[0]
    return fields
