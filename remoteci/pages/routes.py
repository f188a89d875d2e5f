"""The browser's routes: the overview, a job with its live log, and the cancel form.

Every read is bounded by the page size, never by the number of stored jobs.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, quote

from remoteci import jobs
from remoteci.auth.identity import Identity, listing_owner
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.history import api as history_api
from remoteci.history.db import HistoryDB
from remoteci.pages import csrf
from remoteci.pages import render as pages
from remoteci.queue import JobStore
from remoteci.web import logs
from remoteci.web.job_access import cancel, visible_job
from remoteci.web.messages import Request, Response
from remoteci.web.routing import AppParts, Route, path

PAGE_SIZE = 50
QUEUE_SHOWN = 10
RUNNING_SHOWN = 200  # more than any fleet's executors; maps executors to their current job
LOG_CHUNK_MAX = 256 * 1024  # one live-tail answer; the page asks again at once if there is more
FORM_BODY_MAX = 4096
CHART_HOURS = 7 * 24


def routes(parts: AppParts) -> list[Route]:
    """The browser's routes, registered with the app through remoteci/routes.py."""
    web = PageRoutes(parts.settings, parts.store, parts.history)
    return [
        Route("GET", path(r"/"), web.index, "page"),
        Route("GET", path(r"/history"), web.history_page, "page"),
        Route("GET", path(r"/charts"), web.charts, "page"),
        Route("GET", path(r"/jobs/(?P<id>[^/]+)"), web.job, "page"),
        Route("GET", path(r"/jobs/(?P<id>[^/]+)/log"), web.job_log, "page"),
        Route("POST", path(r"/jobs/(?P<id>[^/]+)/cancel"), web.cancel, "page"),
    ]


class PageRoutes:
    def __init__(self, settings: Settings, store: JobStore, history: HistoryDB):
        self.settings = settings
        self.store = store
        self.history = history
        self.csrf_key = csrf.derive_key(settings.tokens)

    def index(self, request: Request) -> Response:
        status = _choice(request, "status", jobs.STATUSES)
        mode = _choice(request, "mode", jobs.MODES)
        before = _cursor(request)
        identity = request.identity
        owner = listing_owner(identity, request.query("owner") or None)
        found, next_before = self.store.list_page(status, mode, PAGE_SIZE, before, owner)
        # Only an admin gets the owner column and filter; a project sees its own jobs only.
        owners = self.store.owners() if identity.is_admin else None
        listing = pages.Listing(found, status, mode, before, next_before, owner, owners)
        stats = self.store.stats()
        if identity.is_admin:
            running = self.store.list_jobs(jobs.RUNNING, None, RUNNING_SHOWN)
            queued, queued_total = self.store.next_queued(QUEUE_SHOWN), stats.queued
        else:
            running = self.store.list_jobs(jobs.RUNNING, None, RUNNING_SHOWN, identity.owner)
            own = self.store.list_jobs(jobs.QUEUED, None, RUNNING_SHOWN, identity.owner)[::-1]
            queued, queued_total = own[:QUEUE_SHOWN], len(own)
        html = pages.index_page(stats, self.store.live_executors(), running, queued, listing,
                                queued_total, time.time())
        return html_response(html)

    def charts(self, request: Request) -> Response:
        """Fleet-wide activity (no job ids, names or owners), as the overview's tiles."""
        now = time.time()
        return html_response(pages.charts_page(self.store.activity.hours(now, CHART_HOURS), now))

    def job(self, request: Request) -> Response:
        job = self._job(request.params["id"], request.identity)
        path = self.settings.logs_dir / f"{job['id']}.log"
        size = logs.log_size(path)
        start = max(0, size - pages.LOG_TAIL_BYTES)
        tail = b"".join(logs.read_range(path, start, size))
        token = (csrf.make_token(self.csrf_key, _cancel_action(job["id"]))
                 if job["status"] in pages.ACTIVE else None)
        return html_response(pages.job_page(job, tail, start, token, time.time()))

    def job_log(self, request: Request) -> Response:
        """The raw log (Basic auth works here, unlike /api): all of it, as a download with
        ?download=1, or from ?offset= in bounded chunks for the page's live tail."""
        job_id = request.params["id"]
        status = self._job(job_id, request.identity)["status"]
        raw = request.query("offset")
        if raw is not None and (not raw.isdigit() or len(raw) > 18):
            raise ApiError(400, "query parameter 'offset' must be a whole number >= 0")
        download = request.query("download") or "0"
        if download not in ("0", "1"):
            raise ApiError(400, "query parameter 'download' must be 1 (save as a file) or 0")
        path = self.settings.logs_dir / f"{job_id}.log"
        size = logs.log_size(path)
        start = int(raw or 0)
        end = max(start, min(size, start + LOG_CHUNK_MAX) if raw is not None else size)
        headers = [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(end - start)), ("Cache-Control", "no-store"),
                   ("X-Job-Status", str(status)), ("X-Log-Offset", str(end))]
        if download == "1":  # job ids are [A-Za-z0-9_-]: nothing to quote in the file name
            headers.append(("Content-Disposition", f'attachment; filename="{job_id}.log"'))
        return Response(200, headers, logs.read_range(path, start, end))

    def cancel(self, request: Request) -> Response:
        job_id = request.params["id"]
        if not csrf.same_origin(request.header("Origin"), request.header("Referer"),
                                request.header("Host")):
            raise ApiError(403, "cross-site form post refused: Origin/Referer is not this server")
        form = parse_qs(request.body(FORM_BODY_MAX).decode("utf-8", errors="replace"))
        token = (form.get("csrf") or [""])[-1]
        if not csrf.token_ok(self.csrf_key, _cancel_action(job_id), token):
            raise ApiError(403, "the form's CSRF token is missing, wrong or expired; "
                                "reload the job page and press the button again")
        self._job(job_id, request.identity)  # 404 unless the caller may see it
        cancel(self.store, job_id)
        # A job that ended meanwhile is no error for a person: the page shows how it ended.
        return Response(303, [("Location", f"/jobs/{quote(job_id, safe='')}"),
                              ("Content-Length", "0")], [b""])

    def history_page(self, request: Request) -> Response:
        search = history_api.search_from(request.query, request.identity, PAGE_SIZE)
        found, next_cursor = history_api.page(self.history, search)
        filters = {name: request.query(name) for name in ("status", "mode", "name", "since")}
        return html_response(pages.history_page(found, filters, next_cursor, time.time()))

    def _job(self, job_id: str, identity: Identity) -> dict[str, object]:
        return visible_job(self.store, self.settings, job_id, identity, self.history)


def html_response(text: str) -> Response:
    data = text.encode()
    return Response(200, [("Content-Type", "text/html; charset=utf-8"),
                          ("Content-Length", str(len(data))), ("Cache-Control", "no-store"),
                          ("Content-Security-Policy", pages.CSP),  # nosniff: App adds it to all
                          ("Referrer-Policy", "same-origin")], [data])


def _cancel_action(job_id: object) -> str:
    return f"cancel:{job_id}"


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query(name) or None
    if value is not None and value not in allowed:
        raise ApiError(400, f"{name} {value[:40]!r} is not one of: {', '.join(allowed)}")
    return value


def _cursor(request: Request) -> int | None:
    raw = request.query("before") or None
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "query parameter 'before' must be a job sequence number")
    return int(raw)
