"""The schedules' HTML page: each with its next run, last job and that job's status, and the
pause, resume and run-now buttons (forms with the cancel form's CSRF rules)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

from remoteci import timefmt
from remoteci.auth.identity import listing_owner
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.pages import csrf
from remoteci.pages import render as shared
from remoteci.pages.routes import FORM_BODY_MAX, html_response
from remoteci.queue import JobStore
from remoteci.schedules.model import schedule_object
from remoteci.schedules.routes import run_now, set_enabled, visible_schedule
from remoteci.schedules.store import ScheduleStore
from remoteci.web.messages import Request, Response
from remoteci.web.routing import AppParts, Route, path

ACTIONS = ("pause", "resume", "run")


def routes(parts: AppParts) -> list[Route]:
    """The schedules' page and its forms, registered through remoteci/routes.py."""
    return SchedulePages(parts.settings, parts.store).routes()


def action_name(action: str, schedule_id: str) -> str:
    """What a form's CSRF token is bound to: one action on one schedule."""
    return f"schedule-{action}:{schedule_id}"


class SchedulePages:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self.schedules = ScheduleStore(store.r)
        self.csrf_key = csrf.derive_key(settings.tokens)

    def routes(self) -> list[Route]:
        return [
            Route("GET", path(r"/schedules"), self.listing, "page"),
            Route("POST", path(r"/schedules/(?P<schedule>[^/]+)/(?P<action>pause|resume|run)"),
                  self.act, "page"),
        ]

    def listing(self, request: Request) -> Response:
        identity = request.identity
        owner = listing_owner(identity, None)
        now = time.time()
        rows = []
        for record in self.schedules.listing(owner):
            schedule = schedule_object(record)
            last = self.store.get(schedule["last_job_id"]) if schedule["last_job_id"] else None
            tokens = {action: csrf.make_token(self.csrf_key, action_name(action, schedule["id"]), now)
                      for action in ACTIONS}
            rows.append(_row(schedule, last, tokens, identity.is_admin, now))
        return html_response(schedules_page(rows, identity.is_admin))

    def act(self, request: Request) -> Response:
        schedule_id, action = request.params["schedule"], request.params["action"]
        if not csrf.same_origin(request.header("Origin"), request.header("Referer"),
                                request.header("Host")):
            raise ApiError(403, "cross-site form post refused: Origin/Referer is not this server")
        form = parse_qs(request.body(FORM_BODY_MAX).decode("utf-8", errors="replace"))
        token = (form.get("csrf") or [""])[-1]
        if not csrf.token_ok(self.csrf_key, action_name(action, schedule_id), token):
            raise ApiError(403, "the form's CSRF token is missing, wrong or expired; "
                                "reload the schedules page and press the button again")
        record = visible_schedule(self.schedules, schedule_id, request.identity)
        if action == "run":
            job = run_now(self.settings, self.store, self.schedules, record, None)
            return _see_other(f"/jobs/{quote(str(job['id']), safe='')}")
        set_enabled(self.schedules, record, action == "resume")
        return _see_other("/schedules")


def _see_other(location: str) -> Response:
    return Response(303, [("Location", location), ("Content-Length", "0")], [b""])


def _row(schedule: dict[str, Any], last: dict[str, Any] | None, tokens: dict[str, str],
         show_owner: bool, now: float) -> str:
    sid = escape(quote(schedule["id"], safe=""))
    job = schedule["job"]
    source = job.get("workspace") or job.get("repo") or ""
    state = "active" if schedule["enabled"] else "paused"
    toggle = "pause" if schedule["enabled"] else "resume"
    buttons = "".join(
        f"<form method=post action=\"/schedules/{sid}/{action}\">"
        f"<input type=hidden name=csrf value=\"{escape(tokens[action])}\">"
        f"<button>{label}</button></form>"
        for action, label in ((toggle, toggle.capitalize()), ("run", "Run now")))
    last_id = schedule["last_job_id"]  # its record may have expired: the job page asks history
    last_cell = (shared._job_link(last_id) + (f" {shared._status(last['status'])}" if last else "")
                 if last_id else "")
    owner_cell = f"<td>{shared._text(schedule['owner'])}</td>" if show_owner else ""
    return (f"<tr id=\"schedule-{sid}\"><td>{shared._text(schedule['name'])}"
            f"<div class=\"id muted\">{shared._text(schedule['id'])}</div></td>"
            f"<td><code>{shared._text(schedule['cron'])}</code> {shared._text(schedule['timezone'])}</td>"
            f"<td>{shared._text(job['mode'])} {shared._text(source)}</td>"
            f"<td>{state}</td><td>{_next(schedule, now)}</td>"
            f"<td>{last_cell}</td>{owner_cell}<td>{buttons}</td></tr>")


def _next(schedule: dict[str, Any], now: float) -> str:
    """The next run: how soon, with the time in the schedule's zone; UTC in the tooltip."""
    moment = timefmt.epoch(schedule["next_run_at"])
    if moment is None:
        return ""
    local = datetime.fromtimestamp(moment, UTC).astimezone(ZoneInfo(schedule["timezone"]))
    return (f"<time datetime=\"{escape(schedule['next_run_at'])}\" "
            f"title=\"{timefmt.exact(moment)}\">in {escape(timefmt.span(moment - now))}</time> "
            f"<span class=muted>({escape(local.strftime('%Y-%m-%d %H:%M %Z'))})</span>")


def schedules_page(rows: list[str], show_owner: bool) -> str:
    head = ("<tr><th>name</th><th>cron</th><th>job</th><th>state</th><th>next run</th>"
            "<th>last job</th>" + ("<th>owner</th>" if show_owner else "") + "<th></th></tr>")
    empty = (f"<tr><td colspan={8 if show_owner else 7} class=muted>No schedules yet: "
             "POST /api/schedules makes one.</td></tr>")
    body = f"<h2>Schedules</h2><table>{head}{''.join(rows) or empty}</table>"
    return shared._page("Schedules - Remote CI", body, refresh=30)
