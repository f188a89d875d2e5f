"""Finding a job the caller may see, and cancelling one: the same rules for the API, the pages and
the artifacts, so no route answers differently about another owner's job.
"""

from __future__ import annotations

from typing import Any

from remoteci import jobs
from remoteci.auth.identity import Identity, may_see
from remoteci.config import Settings
from remoteci.errors import ApiError
from remoteci.history import api as history_api
from remoteci.history.db import HistoryDB
from remoteci.queue import JobStore
from remoteci.sources.prepare import discard_source


def visible_job(store: JobStore, settings: Settings, job_id: str, identity: Identity,
                history: HistoryDB | None = None) -> dict[str, Any]:
    """The job, or the API's 404: another owner's job gets the very answer an unknown id gets.

    Once its Redis record expired, a job comes from the history database, with `log_expired`
    saying whether its log is gone too.
    """
    job = store.get(job_id)
    if job is None and history is not None:
        job = history_api.expired_job(history, job_id, settings.logs_dir)
    if job is None or not may_see(identity, job):
        kept = settings.history_days if history is not None else settings.retention_days
        raise ApiError(404, f"no job with id {job_id!r} (unknown, or older than {kept} days)")
    return job


def cancel(store: JobStore, job_id: str) -> str:
    """Cancel a job (see JobStore.cancel); a queued upload's archive goes at once, since no
    executor will ever take the job and discard it."""
    outcome = store.cancel(job_id, jobs.iso_now())
    if outcome == "dequeued":
        payload = store.payload(job_id)
        if payload is not None:
            discard_source(payload)
            if payload.get("git_credential"):
                store.drop_git_credential(job_id)
            if payload["mode"] == "upload" and payload.get("owner"):
                store.settle_stored(payload["owner"], job_id, 0)  # its upload is gone
    return outcome
