"""End to end: one `api` and two `worker` hosts on one redis, a `* * * * *` schedule, real
time. Both hosts' tickers race for every tick, yet each tick makes one job; with every worker
down across a tick, the restart makes that tick's job, once."""

from __future__ import annotations

import time
from typing import Any

from remoteci import timefmt
from tests.helpers import MakeRedis, MakeServer, Server, wait_until

TICK_WAIT = 75  # a minute to the next tick, and some for the hosts to start and look


def scheduled(api: Server, schedule_id: str) -> list[dict[str, Any]]:
    listed = api.request("GET", "/api/jobs?limit=500").json()["jobs"]
    return [job for job in listed if job.get("schedule") == schedule_id]


def next_tick(api: Server, schedule_id: str) -> float:
    shown = api.request("GET", f"/api/schedules/{schedule_id}").json()
    moment = timefmt.epoch(shown["next_run_at"])
    assert moment is not None, shown
    return moment


def test_two_worker_hosts_and_a_restart_make_one_job_per_tick(make_server: MakeServer,
                                                              make_redis: MakeRedis) -> None:
    rs = make_redis()
    api = make_server("api", redis_url=rs.url)
    api.make_workspace("proj")
    hosts = {"REMOTE_CI_WORKSPACE_DIR": str(api.workspace_dir), "REMOTE_CI_CONCURRENCY": "1"}
    workers = [make_server("worker", redis_url=rs.url, env={**hosts, "REMOTE_CI_NODE_NAME": name})
               for name in ("host-a", "host-b")]
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] >= 2, 30,
               "both hosts' executors")
    resp = api.request("POST", "/api/schedules", {
        "name": "every minute", "cron": "* * * * *",
        "job": {"mode": "rsync", "workspace": "proj", "script": "true"}})
    assert resp.status == 201, resp.body
    schedule_id = resp.json()["id"]
    first = next_tick(api, schedule_id)

    # Both tickers live: the tick makes one job, and the schedule moves on to the next.
    made = wait_until(lambda: scheduled(api, schedule_id), TICK_WAIT, "the first tick's job")
    wait_until(lambda: next_tick(api, schedule_id) == first + 60, 10, "the schedule to move on")
    assert len(made) == 1 and len(scheduled(api, schedule_id)) == 1
    api.wait_final(made[0]["id"])

    # Every worker down across the next tick: nothing makes its job...
    for worker in workers:
        assert worker.stop() == 0
    wait_until(lambda: time.time() > first + 62, TICK_WAIT, "the second tick to pass")
    assert len(scheduled(api, schedule_id)) == 1
    # ...until they are back: then it is made once, by whichever host looks first.
    for worker in workers:
        worker.start()
    made = wait_until(lambda: len(jobs := scheduled(api, schedule_id)) >= 2 and jobs, 30,
                      "the missed tick's job after the restart")
    done = api.wait_final(made[0]["id"])
    assert done["status"] == "success" and done["worker"].split(":")[0] in ("host-a", "host-b")
    wait_until(lambda: next_tick(api, schedule_id) > time.time(), 10, "the schedule to move on")
    assert len(scheduled(api, schedule_id)) == 2
    shown = api.request("GET", f"/api/schedules/{schedule_id}").json()
    assert shown["last_job_id"] == made[0]["id"]
