"""A pipeline's snapshot goes once the pipeline has ended and none of its jobs can still be
copying from it: removed by whoever sees that first (the executor that ends its last job, the
API that cancels it), and by the supervisor's sweep after a crash in between."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from remoteci import jobs
from remoteci.pipelines import snapshot
from remoteci.pipelines.objects import FINAL
from remoteci.queue import job_key, pipeline_key
from remoteci.store.redis_conn import Client as Redis


def release_if_done(r: Redis, data_dir: Path, pipeline_id: str) -> bool:
    """Remove the pipeline's snapshot if it has ended and no job of it waits or runs."""
    status, spec = r.hmget(pipeline_key(pipeline_id), ["status", "spec"])
    if status is not None and status not in FINAL:
        return False
    if status is not None and spec is not None:
        ids = [job["id"] for stage in json.loads(spec) for job in stage["jobs"]]
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), "status")
        if any(s in (jobs.QUEUED, jobs.RUNNING) for s in cast("list[str | None]", pipe.execute())):
            return False
    snapshot.remove(data_dir, pipeline_id)
    return True


def sweep(r: Redis, data_dir: Path) -> int:
    """Remove the snapshots a crash left behind; return how many went."""
    removed = 0
    ids = snapshot.existing(data_dir)
    if not ids:
        return 0
    pipe = r.pipeline(transaction=False)
    for pipeline_id in ids:
        pipe.hget(pipeline_key(pipeline_id), "status")
    statuses = dict(zip(ids, cast("list[str | None]", pipe.execute()), strict=True))
    for pipeline_id in snapshot.leftovers(data_dir, statuses):
        if statuses[pipeline_id] is None:
            snapshot.remove(data_dir, pipeline_id)  # no record came (or it expired)
            removed += 1
        elif release_if_done(r, data_dir, pipeline_id):
            removed += 1
    return removed
