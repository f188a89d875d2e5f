"""The pipeline object the API shows (and a webhook sends), from the stored hash: pure, and
importing nothing of ours, so the webhook deliverer can build it too."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

RUNNING = "running"
FINAL = ("success", "failed", "cancelled")
STAGE_WAITING = "waiting"


def stage_status(index: int, current: int, status: str) -> str:
    """A stage's status follows from the pipeline's and the stage it is at (or ended in)."""
    if index < current or status == "success":
        return "success"
    if index > current:
        return STAGE_WAITING if status == RUNNING else "cancelled"
    return status  # the current stage: running, or what ended the pipeline there


def pipeline_object(record: Mapping[str, str | None]) -> dict[str, Any]:
    """The API's pipeline object from its stored hash."""
    spec = json.loads(record.get("spec") or "[]")
    status = str(record.get("status"))
    current = int(record.get("stage") or 0)
    obj: dict[str, Any] = {
        "id": record.get("id"), "name": record.get("name") or None, "status": status,
        "stages": [{"name": stage["name"], "status": stage_status(i, current, status),
                    "jobs": [job["id"] for job in stage["jobs"]]}
                   for i, stage in enumerate(spec)],
        "created_at": record.get("created_at"), "finished_at": record.get("finished_at") or None,
        "owner": record.get("owner"), "mode": record.get("mode"), "source": record.get("source"),
        "error": record.get("error") or None,
    }
    for extra in ("ref", "commit", "webhook", "webhook_status"):
        if record.get(extra):
            obj[extra] = record[extra]
    if record.get("webhook_attempts"):
        obj["webhook_attempts"] = int(str(record["webhook_attempts"]))
    return obj
