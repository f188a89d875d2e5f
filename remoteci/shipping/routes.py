"""The API's side of remote workers: admin-only routes that write only one job's own files.

Every path written is built from the job id (checked by the dispatcher) and, for artifacts, a
relative path checked by protocol.artifact_path; directories under a job's incoming artifacts
are made here and nowhere else, so no link can be in the way. Log appends land only at the
offset the log has: a retried append is refused with the current length (416), so every byte
arrives once and in order, whatever the worker's connection did.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from remoteci import events, jobs
from remoteci.artifacts.manifest import Artifact, Manifest, job_dir, write_manifest
from remoteci.auth.identity import require_admin
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.queue import JobStore, job_key
from remoteci.shipping import protocol
from remoteci.web import logs
from remoteci.web.messages import Request, Response, json_response
from remoteci.web.routing import AppParts, Route, path
from remoteci.web.streams import StreamSlots

COMPONENT = "api"
CHUNK = 1024 * 1024
INCOMING = ".incoming"  # job ids have no dot: `<id>.incoming` is never another job's dir
LOG_SLACK = 1024 * 1024  # bytes past REMOTE_CI_MAX_LOG_MB for the server's own closing lines
MAX_MANIFEST_BODY = 4 * 1024 * 1024


def routes(parts: AppParts) -> list[Route]:
    """The worker routes (admin only), registered with the app through remoteci/routes.py."""
    shipping = ShippingRoutes(parts.settings, parts.store, parts.streams)
    job = protocol.PREFIX + r"/(?P<id>[^/]+)"
    return [
        Route("PATCH", path(job + r"/log"), shipping.append_log, "api"),
        Route("GET", path(job + r"/upload"), shipping.fetch_upload, "api"),
        Route("DELETE", path(job + r"/upload"), shipping.drop_upload, "api"),
        Route("PUT", path(job + r"/artifacts/(?P<path>.+)"), shipping.put_artifact, "api"),
        Route("POST", path(job + r"/artifacts"), shipping.commit_artifacts, "api"),
    ]


class ShippingRoutes:
    """What a worker with REMOTE_CI_API_URL asks of the API for the jobs it runs."""

    def __init__(self, settings: Settings, store: JobStore, streams: StreamSlots):
        self.settings = settings
        self.store = store
        self.streams = streams
        self.max_log = settings.max_log_mb * 1024 * 1024 + LOG_SLACK
        self.max_artifacts = settings.max_artifact_mb * 1024 * 1024

    def _job(self, request: Request, what: str) -> str:
        require_admin(request.identity, what)
        job_id = request.params["id"]
        if self.store.status(job_id) is None:
            raise ApiError(404, f"no job with id {job_id!r}")
        return job_id

    # --- the log ---------------------------------------------------------------------------

    def append_log(self, request: Request) -> Response:
        require_admin(request.identity, "appending to a job's log")
        job_id = request.params["id"]
        length = request.content_length()
        try:
            append = protocol.parse_append(request.header("Content-Range"), length)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        status, final_length = self.store.r.hmget(job_key(job_id), "status", "log_bytes")
        if status is None:
            raise ApiError(404, f"no job with id {job_id!r}")
        if status not in (jobs.QUEUED, jobs.RUNNING) and (
                not final_length or append.end > int(final_length)):
            # An ended job's log is complete, except the rest its worker still owes it.
            raise ApiError(409, f"job {job_id} ended with status {status!r} and its log is "
                                "complete; nothing more may be added")
        path = self.settings.logs_dir / f"{job_id}.log"
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        # Created only by an append at 0: a refused one leaves no file behind.
        try:
            fd = os.open(path, flags | (os.O_CREAT if append.start == 0 else 0), 0o640)
        except FileNotFoundError:
            raise ApiError(416, f"the log of job {job_id} has 0 bytes; send the bytes from "
                                "offset 0 on", [("X-Log-Offset", "0")]) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # two appends at once (a retry racing its original)
            size = os.fstat(fd).st_size
            if append.start != size:
                raise ApiError(416, f"the log of job {job_id} has {size} bytes; send the bytes "
                                    f"from offset {size} on", [("X-Log-Offset", str(size))])
            if append.end > self.max_log:
                raise ApiError(413, f"the log of job {job_id} would pass REMOTE_CI_MAX_LOG_MB="
                                    f"{self.settings.max_log_mb}")
            try:
                _copy_body(request.environ["wsgi.input"], fd, length)
            except OSError as exc:
                os.ftruncate(fd, size)  # all of an append or nothing: the worker sends it again
                raise ApiError(503, f"cannot write the log of job {job_id}: {exc.strerror}; "
                                    "retry", [("Retry-After", "5")]) from None
            size = append.end
        finally:
            os.close(fd)
        return json_response(200, {"length": size}, [("X-Log-Offset", str(size))])

    # --- the upload ------------------------------------------------------------------------

    def _upload_path(self, job_id: str) -> tuple[Path, dict[str, Any]]:
        payload = self.store.payload(job_id)
        if payload is None or payload.get("mode") != "upload":
            raise ApiError(404, f"job {job_id} has no upload")
        path = Path(str(payload.get("path", "")))
        if path.parent != self.settings.uploads_dir:  # only ever a file of our uploads dir
            raise ApiError(404, f"job {job_id} has no upload on this API")
        return path, payload

    def fetch_upload(self, request: Request) -> Response:
        job_id = self._job(request, "fetching a job's upload")
        path, payload = self._upload_path(job_id)
        size = logs.log_size(path) if path.is_file() else -1
        if size < 0:
            raise ApiError(404, f"the upload of job {job_id} is gone (its job ended, or was "
                                "cancelled)")
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        if payload.get("sha256"):
            headers.append((protocol.SHA256_HEADER, str(payload["sha256"])))
        body = self.streams.hold(logs.read_range(path, 0, size), "retry in a few seconds")
        return Response(200, headers, body)

    def drop_upload(self, request: Request) -> Response:
        job_id = self._job(request, "deleting a job's upload")
        path, payload = self._upload_path(job_id)
        if payload.get("pipeline"):  # shared by the pipeline's jobs: it goes with the pipeline
            return json_response(200, {"deleted": False})
        path.unlink(missing_ok=True)
        return json_response(200, {"deleted": True})

    # --- artifacts -------------------------------------------------------------------------

    def _incoming(self, job_id: str) -> Path:
        return self.settings.artifacts_dir / f"{job_id}{INCOMING}"

    def put_artifact(self, request: Request) -> Response:
        """A file in one body, or in pieces with Content-Range (bounded like log appends): a
        piece at 0 starts the file over, a later one lands only at the file's length."""
        job_id = self._job(request, "storing a job's artifacts")
        try:
            rel = protocol.artifact_path(_utf8(request.params["path"]))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        length = request.content_length()
        header = request.header("Content-Range")
        try:
            piece = (protocol.parse_append(header, length) if header
                     else protocol.whole_body(length))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if piece.end > self.max_artifacts:
            raise ApiError(413, f"artifact {rel!r} is larger than REMOTE_CI_MAX_ARTIFACT_MB="
                                f"{self.settings.max_artifact_mb}")
        target = self._incoming(job_id) / "files" / rel
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if piece.start == 0:
                fd = os.open(target, flags | os.O_CREAT | os.O_TRUNC, 0o600)
            else:
                fd = os.open(target, flags | os.O_APPEND)
        except FileNotFoundError:
            raise ApiError(416, f"artifact {rel!r} has no bytes yet; send it from offset "
                                "0") from None
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            raise ApiError(400, f"artifact {rel!r} clashes with another artifact's path "
                                "(a file where a directory is, or the reverse)") from None
        try:
            size = os.fstat(fd).st_size
            if size != piece.start:
                raise ApiError(416, f"artifact {rel!r} has {size} bytes; send it again from "
                                    "offset 0")
            _copy_body(request.environ["wsgi.input"], fd, length)
        except OSError as exc:
            raise ApiError(503, f"cannot store artifact {rel!r}: {exc.strerror}; retry",
                           [("Retry-After", "5")]) from None
        finally:
            os.close(fd)
        return json_response(200, {"path": rel, "size": piece.end})

    def commit_artifacts(self, request: Request) -> Response:
        """The manifest last: each file is checked against it, then all appear at once."""
        job_id = self._job(request, "storing a job's artifacts")
        manifest = _parse_manifest(request.body(MAX_MANIFEST_BODY))
        total = sum(f.size for f in manifest.files)
        if total > self.max_artifacts:
            raise ApiError(413, f"the artifacts add up to {total} bytes, more than "
                                f"REMOTE_CI_MAX_ARTIFACT_MB={self.settings.max_artifact_mb}")
        incoming = self._incoming(job_id)
        (incoming / "files").mkdir(mode=0o700, parents=True, exist_ok=True)
        for artifact in manifest.files:
            _check_received(incoming / "files", artifact)
        write_manifest(incoming, manifest)
        final = job_dir(self.settings.artifacts_dir, job_id)
        shutil.rmtree(final, ignore_errors=True)  # an earlier attempt's
        os.rename(incoming, final)
        events.info(COMPONENT, f"job {job_id}: stored {len(manifest.files)} artifacts "
                               f"({total} bytes) sent by its worker")
        return json_response(200, {"artifacts": len(manifest.files), "bytes": total})


def _utf8(param: str) -> str:
    """A path parameter as the UTF-8 it was sent as (PEP 3333 hands bytes over as latin-1)."""
    try:
        return param.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ApiError(400, "an artifact path must be UTF-8") from None


def _copy_body(stream: IO[bytes], fd: int, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            raise ApiError(400, f"the body ended {remaining} bytes before its Content-Length; "
                                "send it again")
        remaining -= len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


_MANIFEST_HINT = ('send {"files": [{"path", "size", "sha256"}], "truncated": null | "<why>"}, '
                  "the files first, each with PUT")


def _parse_manifest(body: bytes) -> Manifest:
    try:
        data = json.loads(body)
        files = data["files"]
        truncated = data.get("truncated")
        if not isinstance(files, list) or not (truncated is None or isinstance(truncated, str)):
            raise TypeError
        found = []
        for item in files:
            path, size, digest = item["path"], item["size"], item["sha256"]
            if not (isinstance(path, str) and isinstance(size, int) and isinstance(digest, str)):
                raise TypeError
            if size < 0 or not protocol.is_sha256(digest):
                raise ValueError(f"bad size or sha256 for {path[:200]!r}")
            found.append(Artifact(protocol.artifact_path(path), size, digest))
    except (ValueError, KeyError, TypeError) as exc:
        detail = f" ({exc})" if isinstance(exc, ValueError) else ""
        raise ApiError(400, f"the artifact manifest is malformed{detail}; {_MANIFEST_HINT}") from None
    return Manifest(found, truncated)


def _check_received(files_dir: Path, artifact: Artifact) -> None:
    try:
        fd = os.open(files_dir / artifact.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise ApiError(400, f"artifact {artifact.path!r} is in the manifest but was not sent; "
                            "PUT it first") from None
    try:
        digest = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, CHUNK):
            size += len(chunk)
            digest.update(chunk)
    finally:
        os.close(fd)
    if size != artifact.size or digest.hexdigest() != artifact.sha256:
        raise ApiError(400, f"artifact {artifact.path!r} arrived with {size} bytes and another "
                            "sha256 than the manifest says; send it again")
