"""When a follow may end: the job is final and its log is whole on this host.

A remote worker records the log's final length (`log_bytes`) with the job's end. It waits for
its log to arrive first, so the two normally agree; should the link to the API have been down
for longer than that wait, a follower keeps streaming until the rest arrives, bounded by
ARRIVAL_WAIT after the end, so it never ends on a log cut short.
"""

from __future__ import annotations

import time
from pathlib import Path

from remoteci import jobs, timefmt
from remoteci.queue import JobStore, job_key
from remoteci.web import logs

ARRIVAL_WAIT = 900.0  # seconds after a job's end a follower waits for the rest of its log


def log_complete(store: JobStore, job_id: str, path: Path) -> bool:
    status, shipped, finished_at = store.r.hmget(job_key(job_id), "status", "log_bytes",
                                                 "finished_at")
    if status in (jobs.QUEUED, jobs.RUNNING):
        return False
    if not shipped or logs.log_size(path) >= int(shipped):
        return True
    ended = timefmt.epoch(str(finished_at) if finished_at else None)
    return ended is None or time.time() - ended > ARRIVAL_WAIT
