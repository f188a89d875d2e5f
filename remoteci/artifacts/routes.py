"""Serving a job's artifacts: the list, one file (with Range), or all of them as a tar.gz.

A requested path is only ever looked up in the job's manifest, never joined onto a directory as
given, so `..`, absolute paths, encoded slashes and NUL all end as a plain 404. Bodies are
streamed from open file descriptors in bounded chunks: memory stays flat whatever the size.
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from remoteci.artifacts.manifest import FILES, Artifact, job_dir, read_manifest
from remoteci.auth.identity import Identity
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.web.messages import Headers, Request, Response, json_response
from remoteci.web.routing import AppParts, Route, path
from remoteci.web.streams import StreamSlots

CHUNK = 256 * 1024
LARGE_DOWNLOAD = 4 * 1024 * 1024  # bytes; smaller files are sent in moments, without a slot
# Level 1: artifacts are mostly wheels, jars and archives that compress no further, and the
# stream must keep up with the network rather than squeeze the last percent.
GZIP_LEVEL = 1
_RANGE_RE = re.compile(r"(\d{0,19})-(\d{0,19})")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class Unsatisfiable(Exception):
    """The Range asks for bytes the file does not have: answer 416."""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes, inclusive, that a `Range` header asks for; None: send it all.

    Only the first range of a multi-range request is served (a 206 with one Content-Range, no
    multipart/byteranges). A malformed header, or another unit, is ignored as RFC 9110 allows.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    match = _RANGE_RE.fullmatch(spec.split(",")[0].strip())
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:  # bytes=-n: the last n bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - suffix), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if match[2] and last < first:
        return None
    if first >= size:
        raise Unsatisfiable()
    return first, min(last, size - 1)


def content_disposition(path: str) -> str:
    """An attachment named after the file: a plain-ASCII name for old clients, the real one in
    RFC 6266's filename*; neither can carry quotes, slashes or control characters."""
    name = path.rsplit("/", 1)[-1]
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "artifact"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def routes(parts: AppParts) -> list[Route]:
    """The artifact routes, registered with the app through remoteci/routes.py."""
    artifacts = ArtifactRoutes(parts.settings, parts.find_job, parts.streams)
    return [
        Route("GET", path(r"/api/jobs/(?P<id>[^/]+)/artifacts"), artifacts.listing, "api"),
        Route("GET", path(r"/api/jobs/(?P<id>[^/]+)/artifacts\.tar\.gz"), artifacts.tarball, "api"),
        Route("GET", path(r"/api/jobs/(?P<id>[^/]+)/artifacts/(?P<path>.+)"), artifacts.one, "api"),
    ]


class ArtifactRoutes:
    """The three artifact routes; `find_job` raises the API's 404 for a job this request may
    not see or that does not exist."""

    def __init__(self, settings: Settings, find_job: Callable[[str, Identity], dict[str, Any]],
                 streams: StreamSlots):
        self.root = settings.artifacts_dir
        self.find_job = find_job
        self.streams = streams

    def listing(self, request: Request) -> Response:
        job_id = request.params["id"]
        self.find_job(job_id, request.identity)
        manifest = read_manifest(self.root, job_id)
        return json_response(200, {"artifacts": [asdict(f) for f in manifest.files],
                                   "truncated": manifest.truncated})

    def one(self, request: Request) -> Response:
        job_id = request.params["id"]
        self.find_job(job_id, request.identity)
        wanted = _requested_path(request)
        found = {f.path: f for f in read_manifest(self.root, job_id).files}.get(wanted or "")
        if wanted is None or found is None:
            raise ApiError(404, f"job {job_id} has no artifact {request.params['path'][:200]!r}; "
                                f"GET /api/jobs/{job_id}/artifacts lists them")
        try:
            fd = os.open(job_dir(self.root, job_id) / FILES / found.path, _OPEN_FLAGS)
        except OSError:
            raise ApiError(404, f"artifact {found.path!r} of job {job_id} is gone "
                                "(swept with the job)") from None
        try:
            response = _file_response(request, fd, found)
            if found.size > LARGE_DOWNLOAD:  # a big file holds its thread a while: take a slot
                response.body = self.streams.hold(response.body, "retry in a few seconds")
            return response
        except BaseException:
            os.close(fd)
            raise

    def tarball(self, request: Request) -> Response:
        job_id = request.params["id"]
        self.find_job(job_id, request.identity)
        files = read_manifest(self.root, job_id).files
        headers: Headers = [("Content-Type", "application/gzip"),
                            ("Content-Disposition", content_disposition(f"{job_id}-artifacts.tar.gz"))]
        body = self.streams.hold(tar_gz(job_dir(self.root, job_id) / FILES, files),
                                 "retry in a few seconds, or fetch files one by one")
        return Response(200, headers, body)


def _requested_path(request: Request) -> str | None:
    """The artifact path from the URL as UTF-8; None for what no manifest entry can be."""
    raw_uri = str(request.environ.get("REQUEST_URI", "")).lower()
    if "%2f" in raw_uri or "%00" in raw_uri or "%5c" in raw_uri:
        return None  # an encoded slash would make a name the manifest never checked
    try:
        path = request.params["path"].encode("latin-1").decode("utf-8")  # PEP 3333 strings
    except UnicodeError:
        return None
    return None if "\x00" in path else path


def _file_response(request: Request, fd: int, artifact: Artifact) -> Response:
    size = os.fstat(fd).st_size
    etag = f'"{artifact.sha256}"'
    headers: Headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes"),
                        ("ETag", etag), ("Content-Disposition", content_disposition(artifact.path))]
    range_header = request.header("Range")
    if_range = request.header("If-Range")
    if not range_header or (if_range and if_range != etag):  # changed since: send it all
        span = None
    else:
        try:
            span = byte_range(range_header, size)
        except Unsatisfiable:
            raise ApiError(416, f"Range {range_header[:100]!r} is outside the artifact's "
                                f"{size} bytes; ask for bytes=0-{max(0, size - 1)} or less",
                           [("Content-Range", f"bytes */{size}")]) from None
    if span is None:
        return Response(200, [*headers, ("Content-Length", str(size))], _FileBody(fd, 0, size))
    first, last = span
    return Response(206, [*headers, ("Content-Length", str(last - first + 1)),
                          ("Content-Range", f"bytes {first}-{last}/{size}")],
                    _FileBody(fd, first, last + 1))


class _FileBody:
    """Bytes [start, end) of an open file; the server's close() closes it, even unread."""

    def __init__(self, fd: int, start: int, end: int):
        self.fd, self.start, self.end = fd, start, end

    def __iter__(self) -> Iterator[bytes]:
        position = self.start
        while position < self.end:
            chunk = os.pread(self.fd, min(CHUNK, self.end - position), position)
            if not chunk:
                return  # shortened on disk: the client sees a short body, never other bytes
            position += len(chunk)
            yield chunk

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def tar_gz(files_dir: Path, files: list[Artifact]) -> Iterator[bytes]:
    """A tar.gz of the files, made while it is sent: tarfile writes each header, the data is
    copied in chunks through one gzip stream, so nothing is built in memory or on disk."""
    gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: gzip framing
    written = 0
    for artifact in files:
        try:
            fd = os.open(files_dir / artifact.path, _OPEN_FLAGS)
        except OSError:
            continue  # swept meanwhile: leave it out rather than break the archive
        try:
            for block in _tar_member(fd, artifact.path):
                written += len(block)
                if out := gz.compress(block):
                    yield out
        finally:
            os.close(fd)
    # Two zero blocks end a tar; like tarfile, pad the whole to a multiple of its record size.
    end = 2 * tarfile.BLOCKSIZE
    yield gz.compress(bytes(end + (-(written + end) % tarfile.RECORDSIZE))) + gz.flush()


def _tar_member(fd: int, path: str) -> Iterator[bytes]:
    """One regular file as tar blocks: its header, its bytes, the padding to a block."""
    info = os.fstat(fd)
    member = tarfile.TarInfo(path)
    member.size, member.mtime, member.mode = info.st_size, int(info.st_mtime), 0o644
    yield member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    sent = 0
    while sent < member.size:
        want = min(CHUNK, member.size - sent)
        chunk = os.read(fd, want) or bytes(want)  # a file that shrank is padded: still a tar
        sent += len(chunk)
        yield chunk
    yield bytes(-member.size % tarfile.BLOCKSIZE)
