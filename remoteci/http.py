"""The WSGI app, no framework: routes, auth, JSON in and out, and errors a CI user can act on."""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from remoteci import events, jobs
from remoteci.auth.identity import (
    Authenticator,
    Identity,
    check_git_host,
    check_workspace,
    listing_owner,
    require_admin,
)
from remoteci.config import ConfigError, Settings
from remoteci.errors import ApiError
from remoteci.history import api as history_api
from remoteci.history.db import HistoryDB
from remoteci.history.store import HistoryQueue
from remoteci.hosts.table import waiting_note
from remoteci.queue import AlreadySubmitted, JobStore, NotReplicated, OverQuota, QueueFull, Quotas
from remoteci.shipping.digest import file_digest
from remoteci.shipping.follow import log_complete
from remoteci.sources import zstd
from remoteci.sources.git import redact_url, split_credentials, validate_git_ref, validate_git_url
from remoteci.sources.prepare import discard_source
from remoteci.sources.workspaces import lexical_workspace, locate_workspace, require_directory
from remoteci.store.redis_watch import RedisWatch
from remoteci.system import isolation
from remoteci.web import logs, metrics, openapi, submissions
from remoteci.web.job_access import cancel, visible_job
from remoteci.web.messages import (
    Headers,
    Request,
    Response,
    error_response,
    json_response,
    with_safety_headers,
)
from remoteci.web.routing import AppParts, Route, RouteSet
from remoteci.web.streams import StreamSlots
from remoteci.web.uploads import receive_upload

MAX_JSON_BODY = 1024 * 1024
LIST_LIMIT_MAX = 500
CLIENT_SCRIPT = Path(__file__).resolve().parent.parent / "ci" / "remote-ci.sh"
COMPONENT = "api"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
            206: "Partial Content", 303: "See Other", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Content Too Large", 416: "Range Not Satisfiable",
            429: "Too Many Requests",
            500: "Internal Server Error",
            503: "Service Unavailable"}


class App:
    """The whole HTTP side; one instance per process, shared by waitress' threads."""

    def __init__(self, settings: Settings, store: JobStore, route_sets: Sequence[RouteSet] = ()):
        """`route_sets`: the features' routes (remoteci/routes.py), added after the API's own."""
        self.settings = settings
        self.store = store
        self.stopping = threading.Event()
        self.requests = metrics.RequestCounts()
        self.history = HistoryDB(settings.history)  # connects on first use
        self.history_queue = HistoryQueue(store.r)
        # What /api/health says before any executor reported: in `serve` they have our rights.
        self.own_isolation = isolation.USER if isolation.can_switch_users() else isolation.NONE
        self.redis_watch = RedisWatch(COMPONENT, store.ping, self.stopping)
        self.streams = StreamSlots(settings.max_followers)
        # What the clients may compress an upload with (they ask GET /api/health first).
        self.upload_formats = ["gzip", "zstd"] if zstd.available() else ["gzip"]
        self.auth = Authenticator(settings.tokens, settings.project_tokens)
        self.quotas = Quotas(settings.max_queued_per_owner,
                             settings.max_stored_mb_per_owner * 1024 * 1024)
        self.openapi_document = openapi.render(settings.job_timeout)
        if settings.tokens_file is not None:
            events.info(COMPONENT, f"{self.auth.project_count} project tokens from "
                                   f"{settings.tokens_file}")
        self.routes = [
            Route("GET", _p(r"/api/health"), self.health, "none"),
            Route("GET", _p(r"/api/openapi\.json"), self.openapi, "none"),
            Route("GET", _p(r"/ci/remote-ci\.sh"), self.client_script, "none"),
            Route("POST", _p(r"/api/jobs/rsync"), self.submit_rsync, "api"),
            Route("POST", _p(r"/api/jobs/upload"), self.submit_upload, "api"),
            Route("POST", _p(r"/api/jobs/git"), self.submit_git, "api"),
            Route("GET", _p(r"/api/jobs"), self.list_jobs, "api"),
            Route("GET", _p(r"/api/jobs/(?P<id>[^/]+)"), self.get_job, "api"),
            Route("GET", _p(r"/api/jobs/(?P<id>[^/]+)/logs"), self.get_logs, "api"),
            Route("POST", _p(r"/api/jobs/(?P<id>[^/]+)/cancel"), self.cancel_job, "api"),
            Route("GET", _p(r"/api/stats"), self.stats, "api"),
            Route("GET", _p(r"/api/history"), self.history_search, "api"),
            Route("GET", _p(r"/metrics"), self.metrics, "page"),
        ]
        parts = AppParts(settings, store, self.history, self.streams, self._job)
        for route_set in route_sets:
            self.routes += route_set(parts)

    # --- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = self._dispatch(environ)
        except ApiError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except NotReplicated as exc:  # stored on the primary, but a failover could lose it
            response = error_response(503, f"the job was stored, but {exc}, so a Redis failover "
                                           "could lose it; retry with the same Idempotency-Key "
                                           "to get this job, not a second one",
                                      [("Retry-After", "5")])
        except RedisError as exc:
            self.redis_watch.lost(exc)  # logs once per outage, not per request
            response = error_response(503, "the job store (Redis) is unreachable; "
                                           "retry in a few seconds", [("Retry-After", "5")])
        except Exception:
            events.error(COMPONENT, "internal error: " + traceback.format_exc().replace("\n", " | "))
            response = error_response(500, "internal server error; the operator's log has details")
        self.requests.add(environ.get("remoteci.route", metrics.UNMATCHED),
                          environ.get("REQUEST_METHOD", ""), response.status)
        write = start_response(f"{response.status} {_REASONS.get(response.status, 'Status')}",
                               with_safety_headers(response.headers))
        if environ.get("REQUEST_METHOD") == "HEAD":
            # waitress sends whatever the app returns, even to HEAD: a body there would be read
            # by a keep-alive client as the start of its next response.
            close = getattr(response.body, "close", None)
            if close is not None:
                close()
            return []
        if response.streamed:
            write(b"")  # waitress sends headers on the first non-empty chunk unless told now
        return response.body

    def _dispatch(self, environ: dict[str, Any]) -> Response:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method != method and not (method == "HEAD" and route.method == "GET"):
                allowed.append(route.method)
                continue
            environ["remoteci.route"] = route.label
            environ["remoteci.identity"] = self._authenticate(environ, route.auth)
            params = match.groupdict()
            if "id" in params and not jobs.is_valid_job_id(params["id"]):
                raise ApiError(404, f"no job with id {params['id'][:80]!r}")
            return route.handler(Request(environ, method, path, params))
        if allowed:
            raise ApiError(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                           [("Allow", ", ".join(allowed))])
        raise ApiError(404, f"no such route: {method} {path[:200]}")

    def _authenticate(self, environ: dict[str, Any], kind: str) -> Identity | None:
        if kind == "none":
            return None
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, credential = header.partition(" ")
        presented: bytes | None = None
        if scheme.lower() == "bearer":
            presented = credential.strip().encode()
        elif scheme.lower() == "basic" and kind == "page":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True)
                presented = decoded.partition(b":")[2]
            except (binascii.Error, ValueError):
                presented = None
        identity = None if presented is None else self.auth.identify(presented)
        if identity is not None:
            return identity
        challenge = 'Basic realm="Remote CI"' if kind == "page" else 'Bearer realm="Remote CI"'
        reason = "missing" if not header else "wrong"
        raise ApiError(401, f"{reason} API token; send 'Authorization: Bearer <token>'",
                       [("WWW-Authenticate", challenge)])

    def reload_tokens(self) -> None:
        """SIGHUP: take up tokens added or removed since start; a broken file changes nothing."""
        if self.settings.tokens_file is None:
            events.info(COMPONENT, "SIGHUP: no REMOTE_CI_TOKENS_FILE to re-read")
            return
        try:
            self.auth.reload(self.settings.tokens_file)
        except ConfigError as exc:
            events.error(COMPONENT, f"SIGHUP: kept the project tokens in use: {exc}")
            return
        events.info(COMPONENT, f"SIGHUP: {self.auth.project_count} project tokens from "
                               f"{self.settings.tokens_file}")

    # --- submitting ------------------------------------------------------------------------

    def submit_rsync(self, request: Request) -> Response:
        data = submissions.parse_json_body(request.body(MAX_JSON_BODY))
        submissions.check_known_fields(data, "rsync")
        common = self._common(data)
        workspace = submissions.required_string(
            data, "workspace", "a directory under the workspace root, e.g. \"project-a\"")
        root = self.settings.workspace_dir
        # Pinned to a host, the workspace lives there: judged by its name only, looked for
        # when the job starts on that host.
        lexical = lexical_workspace(root, workspace)
        relative = lexical if common.host else locate_workspace(root, workspace)
        check_workspace(request.identity, workspace, relative, lexical)
        if relative is None:
            raise ApiError(403, f"workspace {workspace!r} is outside the workspace root; "
                                "use a directory inside it")
        if not common.host:
            require_directory(root, relative, workspace)
        return self._accept(request, "rsync", common, workspace, {"workspace": relative})

    def submit_git(self, request: Request) -> Response:
        data = submissions.parse_json_body(request.body(MAX_JSON_BODY))
        submissions.check_known_fields(data, "git")
        common = self._common(data)
        repo = submissions.required_string(data, "repo", "a clone URL such as "
                                           "\"https://host/org/repo.git\"")
        repo = validate_git_url(repo, allow_file=self.settings.git_allow_file)
        ref = data.get("ref")
        if ref is not None and not isinstance(ref, str):
            raise ApiError(400, "field 'ref' must be a string: a branch, tag or commit sha")
        ref = validate_git_ref(ref)
        check_git_host(request.identity, repo)
        clean, credential = split_credentials(repo)
        extra_record = {"ref": ref} if ref else {}
        # Payload and record hold the URL without its `user:password@`: the credential waits
        # in a key of its own, which the executor deletes when it takes it.
        return self._accept(request, "git", common, redact_url(repo),
                            {"repo": clean, "ref": ref, **({"git_credential": True} if credential else {})},
                            extra_record, credential.to_json() if credential else None)

    def submit_upload(self, request: Request) -> Response:
        fields, archive = receive_upload(request.environ, self.settings.uploads_dir,
                                         self.settings.max_upload_mb * 1024 * 1024)
        try:
            fields = {k: v for k, v in fields.items() if k != "code"}
            submissions.check_known_fields(fields, "upload")
            common = self._common(fields)
            # Size and sha256 go with the job, so a worker on another host checks its copy.
            size, digest = file_digest(archive)
            return self._accept(request, "upload", common, "upload",
                                {"path": str(archive), "size": size, "sha256": digest},
                                stored_bytes=size)
        except BaseException:
            archive.unlink(missing_ok=True)
            raise

    def _common(self, data: dict[str, Any]) -> submissions.Common:
        return submissions.parse_common(data, self.settings.job_timeout, self.settings.webhook_allow,
                                        self.settings.webhook_secret is not None)

    def _accept(self, request: Request, mode: str, common: submissions.Common, source: str,
                payload_extra: dict[str, Any], record_extra: dict[str, str] | None = None,
                git_credential: str | None = None, stored_bytes: int = 0) -> Response:
        job_id = jobs.new_job_id()
        job = jobs.NewJob(mode, common.script, source, common.timeout, request.identity.owner,
                          common.name, common.host, common.webhook, common.env, common.artifacts)
        record, payload = jobs.queued_entry(job, job_id, jobs.iso_now(), record_extra or {},
                                            payload_extra)
        key = submissions.parse_idempotency_key(request.header("Idempotency-Key"))
        if git_credential is not None:
            self.store.put_git_credential(job_id, git_credential)
        try:
            try:
                position = self.store.enqueue(record, payload, self.settings.max_queue, key,
                                              self.quotas, stored_bytes)
            except BaseException:
                if git_credential is not None:
                    self.store.drop_git_credential(job_id)
                raise
        except QueueFull:
            raise ApiError(503, f"the queue is full ({self.settings.max_queue} jobs waiting); "
                                "retry later", [("Retry-After", "30")]) from None
        except OverQuota as over:
            raise self._over_quota(over.what, request.identity.owner) from None
        except AlreadySubmitted as earlier:
            # A retry of a submission whose reply was lost: answer with the job it created.
            discard_source(payload)  # a re-sent upload is not needed twice
            events.info(COMPONENT, f"job {earlier.job_id} submitted again with the same "
                                   "Idempotency-Key; no new job")
            return json_response(202, self._job(earlier.job_id, request.identity),
                                 [("Location", f"/api/jobs/{earlier.job_id}"),
                                  ("Idempotent-Replayed", "true")])
        events.info(COMPONENT, f"job {job_id} accepted mode={mode} owner={request.identity.owner} "
                               f"position={position}")
        obj = self._with_wait(jobs.job_object(record, position))
        return json_response(202, obj, [("Location", f"/api/jobs/{job_id}")])

    def _over_quota(self, what: str, owner: str) -> ApiError:
        if what == "queued":
            return ApiError(429, f"owner {owner!r} already has {self.settings.max_queued_per_owner} "
                                 "jobs queued, its most (REMOTE_CI_MAX_QUEUED_PER_OWNER); retry "
                                 "once some have started", [("Retry-After", "30")])
        return ApiError(429, f"owner {owner!r} would store more than "
                             f"{self.settings.max_stored_mb_per_owner} MB of uploads and artifacts, "
                             "its most (REMOTE_CI_MAX_STORED_MB_PER_OWNER); retry once queued "
                             "uploads have run or old artifacts have expired",
                        [("Retry-After", "300")])

    # --- reading ---------------------------------------------------------------------------

    def get_job(self, request: Request) -> Response:
        return json_response(200, self._with_wait(self._job(request.params["id"],
                                                            request.identity)))

    def _with_wait(self, job: dict[str, Any]) -> dict[str, Any]:
        """A queued job pinned to a host no executor serves says so (`waiting_for`)."""
        if job.get("host") and job.get("status") == jobs.QUEUED:
            note = waiting_note(job, self.store.live_hosts())
            if note:
                job["waiting_for"] = note
        return job

    def _job(self, job_id: str, identity: Identity) -> dict[str, Any]:
        return visible_job(self.store, self.settings, job_id, identity, self.history)

    def history_search(self, request: Request) -> Response:
        query = history_api.search_from(request.query, request.identity,
                                        _int_query(request, "limit", 50, 1, LIST_LIMIT_MAX))
        found, next_cursor = history_api.page(self.history, query)
        return json_response(200, {"jobs": found, "next_cursor": next_cursor})

    def list_jobs(self, request: Request) -> Response:
        status = request.query("status") or None
        mode = request.query("mode") or None
        if status is not None and status not in jobs.STATUSES:
            raise ApiError(400, f"status {status!r} is not one of: {', '.join(jobs.STATUSES)}")
        if mode is not None and mode not in jobs.MODES:
            raise ApiError(400, f"mode {mode!r} is not one of: {', '.join(jobs.MODES)}")
        owner = listing_owner(request.identity, request.query("owner") or None)
        limit = _int_query(request, "limit", 50, 1, LIST_LIMIT_MAX)
        return json_response(200, {"jobs": self.store.list_jobs(status, mode, limit, owner)})

    def get_logs(self, request: Request) -> Response:
        job_id = request.params["id"]
        job = self._job(job_id, request.identity)
        status = str(job["status"])
        offset = _int_query(request, "offset", 0, 0, 2**62)
        path = self.settings.logs_dir / f"{job_id}.log"
        headers: Headers = [("Content-Type", "text/plain; charset=utf-8"),
                            ("X-Job-Status", status), ("Cache-Control", "no-store")]
        if request.query("follow") in ("1", "true", "yes"):
            position = job.get("queue_position")
            if logs.streams_now(status, position, self.settings.concurrency):
                response = self._follow(request.environ, job_id, path, offset, headers)
                if response is not None:
                    return response
            # No stream for this one (see logs.streams_now), or every slot is taken: what
            # exists now, and when to ask again. Never a 503: a busy server is not a broken one.
            wait = logs.poll_after(status, position, self.settings.concurrency)
            headers.append(("X-Log-Poll-After", str(wait)))
        end = max(offset, logs.log_size(path))
        headers += [("X-Log-Offset", str(end)), ("Content-Length", str(end - offset))]
        return Response(200, headers, logs.read_range(path, offset, end))

    def _follow(self, environ: dict[str, Any], job_id: str, path: Path, offset: int,
                headers: Headers) -> Response | None:
        """The log streamed as it grows, or None when every stream slot is taken."""
        def is_final() -> bool:
            try:
                # A remote worker's log may still be arriving (see shipping.follow).
                return log_complete(self.store, job_id, path)
            except RedisError:
                return False  # keep following; the outage shows in /api/health

        # In a stream, X-Log-Offset is where it starts: add the bytes received to resume.
        # waitress tells whether the client hung up, so a quiet job does not pin a slot.
        disconnected = environ.get("waitress.client_disconnected") or _never
        stream = logs.follow(path, offset, is_final, self.stopping, disconnected)
        body = self.streams.try_hold(stream)
        if body is None:
            stream.close()
            return None
        return Response(200, [*headers, ("X-Log-Offset", str(offset))], body, streamed=True)

    def stats(self, request: Request) -> Response:
        s = self.store.stats()
        return json_response(200, {"running": s.running, "queued": s.queued,
                                   "workers": s.workers, "finished": s.finished,
                                   "hosts": s.hosts,
                                   "concurrency_per_host": self.settings.concurrency})

    def health(self, request: Request) -> Response:
        try:
            self.store.ping()
            reported = [e.get("isolation") for e in self.store.live_executors()]
        except RedisError as exc:
            self.redis_watch.lost(exc)
            return json_response(503, {"status": "error", "redis": "unreachable",
                                       "error": f"redis unreachable: {exc}"})
        return json_response(200, {"status": "ok", "redis": "ok",
                                   "isolation": isolation.weakest(reported, self.own_isolation),
                                   "uploads": self.upload_formats})

    def openapi(self, request: Request) -> Response:
        data = self.openapi_document
        return Response(200, [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))], [data])

    def client_script(self, request: Request) -> Response:
        if not CLIENT_SCRIPT.is_file():
            raise ApiError(404, "the bash client is not installed on this server")
        data = CLIENT_SCRIPT.read_bytes()
        return Response(200, [("Content-Type", "text/x-shellscript; charset=utf-8"),
                              ("Content-Length", str(len(data)))], [data])

    # --- acting ----------------------------------------------------------------------------

    def cancel_job(self, request: Request) -> Response:
        job_id = request.params["id"]
        self._job(job_id, request.identity)  # 404 unless the caller may see it
        outcome = cancel(self.store, job_id)
        if outcome == "missing":
            self._job(job_id, request.identity)  # expired meanwhile: raises the 404
        if outcome not in ("dequeued", jobs.RUNNING):
            raise ApiError(409, f"job {job_id} already ended with status {outcome!r}; "
                                "only queued or running jobs can be cancelled")
        events.info(COMPONENT, f"job {job_id} cancel requested (was {outcome})")
        return json_response(202, self._job(job_id, request.identity))

    # --- operators -------------------------------------------------------------------------

    def metrics(self, request: Request) -> Response:
        require_admin(request.identity, "/metrics")
        waiting = self.history_queue
        text = metrics.render(self.store.stats(), self.store.histogram_counts(),
                              self.requests.snapshot(),
                              (waiting.pending(), waiting.lag_seconds(time.time())))
        data = text.encode()
        return Response(200, [("Content-Type", metrics.CONTENT_TYPE),
                              ("Content-Length", str(len(data)))], [data])


def _never() -> bool:
    return False


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be a whole number, "
                            f"{low}..{high}") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name!r} must be in {low}..{high}")
    return value


