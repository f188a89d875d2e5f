"""The job record: ids, statuses, timestamps and the JSON object the API shows."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

QUEUED = "queued"
RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
TIMEOUT = "timeout"
ERROR = "error"
CANCELLED = "cancelled"

FINAL_STATUSES = (SUCCESS, FAILED, TIMEOUT, ERROR, CANCELLED)
STATUSES = (QUEUED, RUNNING, *FINAL_STATUSES)
MODES = ("rsync", "upload", "git")

# The order of keys in the job object, as docs/api.md shows it; optional extras follow.
# `owner` is the submitting token's name ("admin" for REMOTE_CI_TOKEN; null on older records).
_OBJECT_FIELDS = (
    "id", "mode", "status", "name", "script", "source", "timeout", "created_at", "started_at",
    "finished_at", "duration", "exit_code", "error", "worker", "owner",
)
# `artifacts`: how many files were kept, once a job that asked for artifacts has ended.
# `pipeline` and `stage`: the pipeline a job belongs to and its stage's name.
# `host`: the node name a submission pinned the job to.
# `schedule`: the id of the schedule that made the job.
_EXTRA_FIELDS = ("ref", "commit", "cancel_requested", "artifacts", "webhook", "webhook_status",
                 "webhook_attempts", "pipeline", "stage", "host", "schedule")
# Every stored field the job object shows: what a read of a record asks Redis for.
SHOWN_FIELDS = _OBJECT_FIELDS + _EXTRA_FIELDS


@dataclass(frozen=True)
class NewJob:
    """What any submission (an API request, a schedule's tick) asks of a job it queues."""

    mode: str
    script: str
    source: str  # what the job object shows as its code's origin
    timeout: int
    owner: str
    name: str | None = None
    host: str | None = None
    webhook: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    artifacts: Sequence[str] = ()


def queued_entry(job: NewJob, job_id: str, created_at: str, record_extra: Mapping[str, str],
                 payload_extra: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The record a new job is stored as and the payload the queue carries to an executor."""
    record = {
        "id": job_id, "mode": job.mode, "status": QUEUED, "script": job.script,
        "source": job.source, "timeout": str(job.timeout), "created_at": created_at,
        "owner": job.owner, **({"name": job.name} if job.name else {}), **record_extra,
        **({"host": job.host} if job.host else {}),
        # A `webhook` field is what makes the final transition queue a delivery.
        **({"webhook": job.webhook, "webhook_status": "pending", "webhook_attempts": "0"}
           if job.webhook else {}),
    }
    payload = {"id": job_id, "mode": job.mode, "script": job.script, "created_at": created_at,
               "owner": job.owner, "timeout": job.timeout, "env": dict(job.env), **payload_extra,
               **({"artifacts": list(job.artifacts)} if job.artifacts else {}),
               **({"host": job.host} if job.host else {})}
    return record, payload


def _flag(raw: str) -> bool:
    return raw == "1"


# How a stored string becomes the object's value; fields not named here stay strings.
_TYPES: dict[str, Callable[[str], Any]] = {
    "timeout": int, "exit_code": int, "artifacts": int, "webhook_attempts": int,
    "duration": float, "cancel_requested": _flag,
}
# (field, its type) in order, worked out once: job_object runs on every read of a job.
_OBJECT_TYPES = tuple((key, _TYPES.get(key, str)) for key in _OBJECT_FIELDS)
_EXTRA_TYPES = tuple((key, _TYPES.get(key, str)) for key in _EXTRA_FIELDS)


def new_job_id() -> str:
    """A short, unguessable, time-ordered id: sortable by eye in logs and directory listings."""
    return f"{int(time.time() * 1000):011x}{os.urandom(5).hex()}"


def is_valid_job_id(value: str) -> bool:
    return JOB_ID_RE.fullmatch(value) is not None


def iso_now() -> str:
    return iso_time(time.time())


def iso_time(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z, the one time format of the API."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def job_object(record: Mapping[str, str | None],
               queue_position: int | None = None) -> dict[str, Any]:
    """Turn a stored hash (all strings; None or absent: not set) into the API's job object with
    typed values."""
    obj: dict[str, Any] = {}
    for key, typed in _OBJECT_TYPES:
        raw = record.get(key)
        obj[key] = typed(raw) if raw else None  # an empty string is not set either
    for key, typed in _EXTRA_TYPES:
        raw = record.get(key)
        if raw:
            obj[key] = typed(raw)
    obj["queue_position"] = queue_position if obj["status"] == QUEUED else None
    return obj
