"""Upload bodies that waitress spools straight into the uploads dir, so an archive is written once.

waitress reads a whole request body before it calls the app, into an unnamed temp file once the
body passes `inbuf_overflow`, and the app then copied that file into the uploads dir: every byte
written twice, and writing pages is what an upload costs. For `POST /api/jobs/upload` the parser
gets a buffer whose file is already in the uploads dir under a name of its own (`*.spool`); the
app renames a raw archive body into place instead of copying it (a multipart body is still read
through, since its archive is one part among others). What the app does not take is removed
when waitress closes the request, or when the buffer is collected (a client that hung up), and
the supervisor's sweep removes what a crash left.
"""

from __future__ import annotations

import io
import os
import weakref
from pathlib import Path
from typing import Any

from waitress.buffers import FileBasedBuffer
from waitress.parser import HTTPRequestParser
from waitress.utilities import Error

from remoteci import events

UPLOAD_PATH = "/api/jobs/upload"
SPOOL_SUFFIX = ".spool"


class SpoolFile(io.FileIO):
    """The spooled body as the app sees it (`wsgi.input`): a file with a path it may rename."""


class SpoolBuffer(FileBasedBuffer):  # type: ignore[misc]
    """A request body buffer on a named private file; bytes are appended, reads start at 0."""

    def __init__(self, directory: Path):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"{os.urandom(16).hex()}{SPOOL_SUFFIX}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        file = SpoolFile(os.open(path, flags, 0o600), "r+b", closefd=True)
        file.name = str(path)  # FileIO keeps the fd as its name when opened from one
        super().__init__(file)
        self._end = 0
        self._remove = weakref.finalize(self, _remove, path)

    def append(self, s: bytes) -> None:
        # Written at the end without moving the file's position: the app reads from 0.
        view = memoryview(s)
        while view:
            written = os.pwrite(self.file.fileno(), view, self._end)
            self._end += written
            view = view[written:]
        self.remain += len(s)

    def close(self) -> None:
        super().close()
        self._remove()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)  # gone already when the app took it


def spooled_path(stream: Any) -> Path | None:
    """The file a request body was spooled to, when waitress' `wsgi.input` is one."""
    return Path(stream.name) if isinstance(stream, SpoolFile) else None


class Unauthorized(Error):  # type: ignore[misc]
    code = 401
    reason = "Unauthorized"


def looks_authorized(header: str) -> bool:
    """A Bearer or Basic credential is there; whether it is right, the app decides."""
    scheme, _, credential = header.strip().partition(" ")
    return scheme.lower() in ("bearer", "basic") and bool(credential.strip())


class SpoolingParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress' parser; an upload's body goes to a SpoolBuffer in `spool_dir`."""

    spool_dir: Path  # set on a subclass per server (see wsgi_server.create)
    body_rcv: Any  # waitress' body receiver; None: no body (any more)

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        receiver = self.body_rcv
        if receiver is not None and not looks_authorized(self.headers.get("AUTHORIZATION", "")):
            # Refused before a byte of the body is read or spooled: without credentials a
            # stranger could otherwise fill the disk, or hold a connection with a slow body.
            self.error = Unauthorized("a request with a body needs 'Authorization: Bearer "
                                      "<token>' (or Basic for the pages); send it with the body")
            self.body_rcv = None
            self.completed = True
            return
        if receiver is None or self.command != "POST" or self.path != UPLOAD_PATH:
            return
        if self.content_length >= self.adj.max_request_body_size:
            return  # refused from its Content-Length alone: there is nothing to spool
        try:
            receiver.buf = SpoolBuffer(self.spool_dir)
        except OSError as exc:  # the app's own write reports it; the body still arrives
            events.warning("api", f"cannot spool an upload in {self.spool_dir}: {exc}")
