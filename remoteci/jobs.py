"""The job record: ids, statuses, timestamps and the JSON object the API shows."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
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

# The order of keys in the job object, as API.md shows it; optional extras follow.
# `owner` is the submitting token's name ("admin" for REMOTE_CI_TOKEN; null on older records).
_OBJECT_FIELDS = (
    "id", "mode", "status", "name", "script", "source", "timeout", "created_at", "started_at",
    "finished_at", "duration", "exit_code", "error", "worker", "owner",
)
# `artifacts`: how many files were kept, once a job that asked for artifacts has ended.
_EXTRA_FIELDS = ("ref", "commit", "cancel_requested", "artifacts", "webhook", "webhook_status",
                 "webhook_attempts")
# Every stored field the job object shows: what a read of a record asks Redis for.
SHOWN_FIELDS = _OBJECT_FIELDS + _EXTRA_FIELDS
_INT_FIELDS = ("timeout", "exit_code", "artifacts", "webhook_attempts")
_FLOAT_FIELDS = ("duration",)


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
    for key in _OBJECT_FIELDS:
        obj[key] = _typed(key, record.get(key))
    for key in _EXTRA_FIELDS:
        if record.get(key):
            obj[key] = _typed(key, record.get(key))
    if obj["status"] == QUEUED:
        obj["queue_position"] = queue_position
    else:
        obj["queue_position"] = None
    return obj


def _typed(key: str, raw: str | None) -> Any:
    if raw is None or raw == "":
        return None
    if key in _INT_FIELDS:
        return int(raw)
    if key in _FLOAT_FIELDS:
        return float(raw)
    if key == "cancel_requested":
        return raw == "1"
    return raw
