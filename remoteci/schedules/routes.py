"""The schedules' API routes: make, list, read, delete, pause, resume, run now."""

from __future__ import annotations

import time
from typing import Any

from remoteci import events, jobs
from remoteci.auth.identity import Identity, listing_owner, may_see
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.queue import JobStore, OverQuota, QueueFull
from remoteci.schedules import firing
from remoteci.schedules.model import new_record, next_tick, parse_schedule, schedule_object
from remoteci.schedules.store import ScheduleStore
from remoteci.web import submissions
from remoteci.web.messages import Request, Response, json_response
from remoteci.web.routing import AppParts, Route, path

COMPONENT = "api"
MAX_JSON_BODY = 1024 * 1024  # as a submission's
MAX_SCHEDULES = 1000  # all owners together: every ticker reads the due ones each second
ONE = r"/api/schedules/(?P<schedule>[^/]+)"


def routes(parts: AppParts) -> list[Route]:
    """The schedules' API, registered with the app through remoteci/routes.py."""
    return ScheduleRoutes(parts.settings, parts.store).routes()


class ScheduleRoutes:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self.schedules = ScheduleStore(store.r)

    def routes(self) -> list[Route]:
        return [
            Route("POST", path(r"/api/schedules"), self.create, "api"),
            Route("GET", path(r"/api/schedules"), self.listing, "api"),
            Route("GET", path(ONE), self.one, "api"),
            Route("DELETE", path(ONE), self.delete, "api"),
            Route("POST", path(ONE + r"/pause"), self.pause, "api"),
            Route("POST", path(ONE + r"/resume"), self.resume, "api"),
            Route("POST", path(ONE + r"/run"), self.run, "api"),
        ]

    def create(self, request: Request) -> Response:
        data = submissions.parse_json_body(request.body(MAX_JSON_BODY))
        new = parse_schedule(data, self.settings, request.identity)
        now = time.time()
        schedule_id = jobs.new_job_id()
        record = new_record(schedule_id, new, request.identity.owner, now)
        if not self.schedules.create(record, int(now * 1000), MAX_SCHEDULES):
            raise ApiError(409, f"the server holds {MAX_SCHEDULES} schedules, its most; "
                                "delete schedules no longer needed")
        events.info(COMPONENT, f"schedule {schedule_id} created cron={new.cron!r} "
                               f"timezone={new.timezone} owner={request.identity.owner}")
        return json_response(201, schedule_object(record),
                             [("Location", f"/api/schedules/{schedule_id}")])

    def listing(self, request: Request) -> Response:
        owner = listing_owner(request.identity, request.query("owner") or None)
        found = [schedule_object(rec) for rec in self.schedules.listing(owner)]
        return json_response(200, {"schedules": found})

    def one(self, request: Request) -> Response:
        return json_response(200, schedule_object(self._visible(request)))

    def delete(self, request: Request) -> Response:
        record = self._visible(request)
        self.schedules.delete(record["id"])
        events.info(COMPONENT, f"schedule {record['id']} deleted")
        return Response(204, [("Content-Length", "0")], [b""])

    def pause(self, request: Request) -> Response:
        return json_response(200, set_enabled(self.schedules, self._visible(request), False))

    def resume(self, request: Request) -> Response:
        return json_response(200, set_enabled(self.schedules, self._visible(request), True))

    def run(self, request: Request) -> Response:
        record = self._visible(request)
        key = submissions.parse_idempotency_key(request.header("Idempotency-Key"))
        job = run_now(self.settings, self.store, self.schedules, record, key)
        return json_response(202, job, [("Location", f"/api/jobs/{job['id']}")])

    def _visible(self, request: Request) -> dict[str, str]:
        return visible_schedule(self.schedules, request.params["schedule"], request.identity)


def visible_schedule(schedules: ScheduleStore, schedule_id: str,
                     identity: Identity) -> dict[str, str]:
    """The schedule, or a 404: another owner's schedule is answered as an unknown id is."""
    record = schedules.get(schedule_id) if jobs.is_valid_job_id(schedule_id) else None
    if record is None or not may_see(identity, record):
        raise ApiError(404, f"no schedule with id {schedule_id[:80]!r}")
    return record


def set_enabled(schedules: ScheduleStore, record: dict[str, str], enabled: bool) -> dict[str, Any]:
    """Pause, or resume from the first tick after now (ticks missed while paused are not made)."""
    following = next_tick(record["cron"], record["timezone"], time.time()) if enabled else None
    if not schedules.set_enabled(record["id"], enabled, following):
        raise ApiError(404, f"no schedule with id {record['id']!r} (deleted meanwhile)")
    events.info(COMPONENT, f"schedule {record['id']} {'resumed' if enabled else 'paused'}")
    return schedule_object(schedules.get(record["id"]) or record)


def run_now(settings: Settings, store: JobStore, schedules: ScheduleStore, record: dict[str, str],
            idempotency_key: str | None) -> dict[str, Any]:
    """One job of the schedule now, whatever its ticks; its job object."""
    owner = record["owner"]
    try:
        job, existed = firing.make_job(settings, store, record, idempotency_key)
    except QueueFull:
        raise ApiError(503, f"the queue is full ({settings.max_queue} jobs waiting); retry later",
                       [("Retry-After", "30")]) from None
    except OverQuota:
        raise ApiError(429, f"owner {owner!r} is at its most queued jobs or stored bytes "
                            "(REMOTE_CI_MAX_QUEUED_PER_OWNER, REMOTE_CI_MAX_STORED_MB_PER_OWNER); "
                            "retry once some jobs have run", [("Retry-After", "30")]) from None
    if not existed:
        schedules.note_run(record["id"], job["id"], jobs.iso_now())
        events.info(COMPONENT, f"schedule {record['id']} run now: job {job['id']}")
    return job
