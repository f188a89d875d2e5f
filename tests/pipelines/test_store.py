"""The pipeline's Lua steps against a real redis-server, driven through the job store's own
transitions (take, finish, cancel) as executors and the API drive them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from remoteci.pipelines import cleanup, snapshot
from remoteci.pipelines.plan import Snapshot, stage_templates
from remoteci.pipelines.spec import Limits, parse_pipeline
from remoteci.pipelines.store import PipelineStore
from remoteci.queue import QUEUE, JobStore
from remoteci.store.redis_conn import Client as Redis

TTL = 3600
EXECUTOR = "test-host:1"


def make(client: Redis, *stages: list[str], pipeline_id: str = "p1") -> list[list[str]]:
    """A pipeline of `stages` (job names per stage); returns the job ids per stage."""
    spec = parse_pipeline({"stages": [{"name": f"s{i}", "jobs": [
        {"name": name, "script": "true"} for name in names]} for i, names in enumerate(stages)]},
        Limits(600), uploaded=True)
    plan = stage_templates(spec, pipeline_id, "admin",
                           Snapshot("upload", "upload", "/nowhere", archive="/nowhere/a.tar"))
    PipelineStore(client, TTL).create(pipeline_id, {"id": pipeline_id, "owner": "admin",
                                                    "mode": "upload", "source": "upload",
                                                    "stage": "0"}, plan, 1000)
    return [[job["id"] for job in stage["jobs"]] for stage in plan]


def run_next(jobs: JobStore, status: str = "success") -> str:
    """Take the oldest queued job and end it with `status`, as an executor does."""
    taken = jobs.take(EXECUTOR, 1)
    assert taken is not None and taken.claimed
    job_id = json.loads(taken.payload)["id"]
    assert jobs.finish(EXECUTOR, job_id, taken.payload, status, {"finished_at": "t"})
    return str(job_id)


def queued_ids(client: Redis) -> list[str]:
    return [json.loads(p)["id"] for p in client.lrange(QUEUE, 0, -1)]  # type: ignore[union-attr]


def state(client: Redis, pipeline_id: str = "p1") -> dict[str, Any]:
    found = PipelineStore(client, TTL).get(pipeline_id)
    assert found is not None
    return found


def test_only_the_first_stage_is_written_and_queued(store_client: Redis) -> None:
    ids = make(store_client, ["a", "b"], ["c"])
    assert sorted(queued_ids(store_client)) == sorted(ids[0])
    jobs = JobStore(store_client, TTL)
    first = jobs.get(ids[0][0])
    assert first is not None and first["pipeline"] == "p1" and first["stage"] == "s0"
    assert jobs.get(ids[1][0]) is None  # written when its stage starts
    assert [s["status"] for s in state(store_client)["stages"]] == ["running", "waiting"]


def test_the_last_job_of_a_stage_enqueues_the_next_once(store_client: Redis) -> None:
    ids = make(store_client, ["a", "b"], ["c", "d"], ["e"])
    jobs = JobStore(store_client, TTL)
    ended = run_next(jobs)
    assert queued_ids(store_client) == [i for i in ids[0] if i != ended]  # the stage goes on
    run_next(jobs)
    assert sorted(queued_ids(store_client)) == sorted(ids[1])
    # Ending a job a second time (a lost executor's reap racing its own end) changes nothing.
    assert not jobs.finish(EXECUTOR, ids[0][0], "{}", "success", {"finished_at": "t"})
    assert sorted(queued_ids(store_client)) == sorted(ids[1])
    run_next(jobs)
    run_next(jobs)
    assert queued_ids(store_client) == ids[2]
    run_next(jobs)
    done = state(store_client)
    assert done["status"] == "success" and done["finished_at"]
    assert queued_ids(store_client) == []


def test_a_failure_cancels_what_waits_and_leaves_what_runs(store_client: Redis) -> None:
    ids = make(store_client, ["a", "b", "c"], ["d"])
    jobs = JobStore(store_client, TTL)
    running = jobs.take("other-host:2", 1)  # one sibling is running elsewhere
    assert running is not None
    failed = run_next(jobs, "failed")
    queued_sibling = next(i for i in ids[0] if i not in (failed, json.loads(running.payload)["id"]))
    found = state(store_client)
    assert found["status"] == "failed" and found["error"].endswith("ended failed")
    assert [s["status"] for s in found["stages"]] == ["failed", "cancelled"]
    assert queued_ids(store_client) == []
    sibling = jobs.get(queued_sibling)
    assert sibling is not None and sibling["status"] == "cancelled"
    later = jobs.get(ids[1][0])
    assert later is not None and later["status"] == "cancelled" and later["started_at"] is None
    assert not jobs.cancel_requested(json.loads(running.payload)["id"])  # left to finish
    assert jobs.finish("other-host:2", json.loads(running.payload)["id"], running.payload,
                       "success", {"finished_at": "t"})
    assert state(store_client)["status"] == "failed"  # an ended pipeline stays as it ended


def test_cancel_stops_the_running_and_the_waiting(store_client: Redis) -> None:
    ids = make(store_client, ["a", "b"], ["c"])
    jobs = JobStore(store_client, TTL)
    taken = jobs.take(EXECUTOR, 1)
    assert taken is not None
    store = PipelineStore(store_client, TTL)
    assert store.cancel("p1") == "ok"
    assert store.cancel("p1") == "cancelled"
    assert store.cancel("nope") == "missing"
    running_id = json.loads(taken.payload)["id"]
    assert jobs.cancel_requested(running_id)
    other = jobs.get(next(i for i in ids[0] if i != running_id))
    assert other is not None and other["status"] == "cancelled"
    assert queued_ids(store_client) == []
    assert jobs.finish(EXECUTOR, running_id, taken.payload, "cancelled", {"finished_at": "t"})
    assert state(store_client)["status"] == "cancelled"


def test_cancelling_a_queued_job_of_a_pipeline_fails_it(store_client: Redis) -> None:
    ids = make(store_client, ["a"], ["b"])
    jobs = JobStore(store_client, TTL)
    assert jobs.cancel(ids[0][0], "t") == "dequeued"
    assert state(store_client)["status"] == "failed"
    later = jobs.get(ids[1][0])
    assert later is not None and later["status"] == "cancelled"


def test_the_sweep_removes_snapshots_of_ended_and_unknown_pipelines(store_client: Redis,
                                                                    tmp_path: Path) -> None:
    make(store_client, ["a"], pipeline_id="running1")
    make(store_client, ["a"], pipeline_id="ended1")
    PipelineStore(store_client, TTL).cancel("ended1")
    for name in ("running1", "ended1", "orphan1", "fresh1"):
        snapshot.make_dir(tmp_path, name)
    old = time.time() - snapshot.ORPHAN_AGE - 60
    os.utime(snapshot.pipeline_dir(tmp_path, "orphan1"), (old, old))
    assert cleanup.sweep(store_client, tmp_path) == 2
    assert snapshot.existing(tmp_path) == ["fresh1", "running1"]
