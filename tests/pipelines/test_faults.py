"""Pipelines through process deaths: a stage advances exactly once, in the same Lua step as the
end of its last job, whichever process dies (the README, "Pipelines")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers import MakeRedis, MakeServer, Server, shared_dir, wait_until
from tests.pipelines.test_pipelines import job, jobs_of, stage, submit, wait_pipeline


def test_parallel_jobs_ending_together_start_the_next_stage_once(make_server: MakeServer) -> None:
    srv: Server = make_server(wait_workers=2)
    srv.make_workspace("proj")
    go, ran = shared_dir(), shared_dir()
    together = f"while [ ! -e {go}/go ]; do sleep 0.01; done"
    count = f"echo $REMOTE_CI_JOB_ID >> {ran}/next"
    created = [submit(srv, stage("one", job("a", together), job("b", together)),
                      stage("two", job("next", count)), stage("three", job("last", count)))
               for _ in range(3)]
    (go / "go").touch()  # the first pipeline's two jobs end at the same moment on two executors
    for one in created:
        assert wait_pipeline(srv, one["id"])["status"] == "success"
    later = [st["jobs"][0] for one in created for st in one["stages"][1:]]
    assert sorted((ran / "next").read_text().split()) == sorted(later)  # each ran exactly once


def test_an_executor_killed_mid_stage_fails_the_pipeline_once(make_server: MakeServer) -> None:
    srv: Server = make_server(wait_workers=2)
    srv.make_workspace("proj")
    ran = shared_dir()
    created = submit(srv, stage("one", job("doomed", "sleep 60")),
                     stage("two", job("after", f"touch {ran}/after")))
    first = created["stages"][0]["jobs"][0]
    worker = srv.wait_status(first, ("running",))["worker"]
    os.kill(int(worker.rpartition(":")[2]), signal.SIGKILL)
    done = wait_pipeline(srv, created["id"], timeout=90)
    assert done["status"] == "failed" and "doomed" in done["error"]
    ended = jobs_of(srv, done)
    assert ended["doomed"]["status"] == "error" and "executor lost" in ended["doomed"]["error"]
    assert ended["after"]["status"] == "cancelled" and ended["after"]["started_at"] is None
    assert not (ran / "after").exists()


def test_a_supervisor_killed_while_its_stage_ends_leaves_the_advance_to_a_new_worker(
        make_server: MakeServer, make_redis: MakeRedis, tmp_path: Path) -> None:
    rs = make_redis()
    host = tmp_path / "host"
    env = {"REMOTE_CI_DRAIN_TIMEOUT": "60"}
    api = make_server("api", redis_url=rs.url, base=host)
    worker = make_server("worker", redis_url=rs.url, base=host, env=env)
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 2, 20, "executors")
    api.make_workspace("proj")
    go, ran = shared_dir(), shared_dir()
    created = submit(api, stage("one", job("ending", f"while [ ! -e {go}/go ]; do sleep 0.05; done")),
                     stage("two", job("next", f"echo $REMOTE_CI_JOB_ID >> {ran}/next")))
    api.wait_status(created["stages"][0]["jobs"][0], ("running",))
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGKILL)  # the supervisor; its executors drain and leave
    worker.proc.wait(10)
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 1, 30,
               "the idle executor to leave (the busy one drains)")
    (go / "go").touch()  # the draining executor ends the stage: the advance is its last write
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 0, 30,
               "the orphaned executors to finish and leave")
    assert pipeline_stage_two_waits(api, created["id"])
    make_server("worker", redis_url=rs.url, base=host, env=env)
    done = wait_pipeline(api, created["id"])
    assert done["status"] == "success", done
    assert (ran / "next").read_text().split() == [created["stages"][1]["jobs"][0]]


def pipeline_stage_two_waits(api: Server, pipeline_id: str) -> bool:
    """Stage one ended with the dead supervisor's executors; stage two is queued, not lost."""
    found = api.request("GET", f"/api/pipelines/{pipeline_id}").json()
    assert [s["status"] for s in found["stages"]] == ["success", "running"], found
    queued = api.job(found["stages"][1]["jobs"][0])
    assert queued["status"] == "queued", queued
    return True
