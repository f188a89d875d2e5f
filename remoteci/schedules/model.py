"""A schedule as the API takes it and shows it: pure parsing and rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from remoteci import jobs
from remoteci.auth.identity import Identity
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.schedules import cron
from remoteci.schedules.jobspec import JobSpec, parse_job

FIELDS = ("name", "cron", "timezone", "job")
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class NewSchedule:
    name: str | None
    cron: str
    timezone: str
    job: JobSpec


def parse_schedule(data: dict[str, Any], settings: Settings, identity: Identity) -> NewSchedule:
    """The body of POST /api/schedules; a 400 names the field that is wrong and how to fix it."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} for a schedule; the fields are: "
                            f"{', '.join(FIELDS)}")
    return NewSchedule(_name(data.get("name")), cron.check_cron(data.get("cron")),
                       cron.check_timezone(data.get("timezone")),
                       parse_job(data.get("job"), settings, identity))


def _name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise ApiError(400, f"field 'name' must be printable text of at most {MAX_NAME_CHARS} "
                            "characters")
    return value


def next_tick(cron_text: str, timezone: str, after: float) -> int | None:
    """The schedule's next tick after `after` (epoch seconds), as whole epoch seconds."""
    moment = cron.next_run(cron_text, timezone, datetime.fromtimestamp(after, UTC))
    return None if moment is None else int(moment.timestamp())


def new_record(schedule_id: str, new: NewSchedule, owner: str, now: float) -> dict[str, str]:
    """The hash a new schedule is stored as; `next_run_at` is its first tick after `now`."""
    shown, run = new.job.dumps()
    following = next_tick(new.cron, new.timezone, now)
    return {"id": schedule_id, "cron": new.cron, "timezone": new.timezone, "job": shown,
            "run": run, "enabled": "1", "owner": owner, "created_at": jobs.iso_time(now),
            "next_run_at": "" if following is None else str(following),
            **({"name": new.name} if new.name else {}),
            **({"credential": new.job.credential} if new.job.credential else {})}


def schedule_object(record: dict[str, str]) -> dict[str, Any]:
    """The stored hash as the API shows it: typed, with no credential and no run details."""
    next_at = record.get("next_run_at")
    return {
        "id": record["id"], "name": record.get("name") or None, "cron": record["cron"],
        "timezone": record["timezone"], "job": json.loads(record["job"]),
        "enabled": record.get("enabled") == "1",
        "next_run_at": jobs.iso_time(int(next_at)) if next_at else None,
        "last_run_at": record.get("last_run_at") or None,
        "last_job_id": record.get("last_job_id") or None,
        "owner": record.get("owner") or None, "created_at": record.get("created_at") or None,
    }
