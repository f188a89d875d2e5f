"""A job owns its process tree: timeouts and cancels stop everything it started, and reap it."""

from __future__ import annotations

import random

import pytest

from tests.helpers import MakeServer, Server, pids_with_arg, wait_until


def marker() -> str:
    """A unique `sleep` argument, so the test can find exactly the processes of its job."""
    return f"{random.randint(100, 899)}.{random.randint(10**8, 10**9 - 1)}"


def hostile_script(mark: str) -> str:
    # Ignores SIGTERM, backgrounds sleeps, double-forks a setsid daemon and a nohup'ed one.
    return (
        "trap '' TERM\n"
        f"sleep {mark} &\n"
        f"( setsid sh -c 'trap \"\" TERM; sleep {mark} & sleep {mark}' & )\n"
        f"nohup sleep {mark} >/dev/null 2>&1 &\n"
        "echo ready\n"
        f"sleep {mark}\n"
    )


def zombies_under(parent_pids: list[int]) -> list[int]:
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) in parent_pids:
            found.append(int(entry))
    return found


def executor_pids(server: Server) -> list[int]:
    import redis

    assert server.redis_url
    client = redis.Redis.from_url(server.redis_url)
    import json

    return [json.loads(v)["pid"] for k in client.scan_iter("rci:executor:*")
            if (v := client.get(k)) is not None]


def test_timeout_kills_every_process_the_job_started(server: Server) -> None:
    mark = marker()
    job = server.submit(hostile_script(mark), timeout=4)
    wait_until(lambda: len(pids_with_arg(mark)) >= 5, 15, "the job's processes to start")
    final = server.wait_final(job["id"], timeout=30)
    assert final["status"] == "timeout"
    assert 3.5 <= final["duration"] < 20
    assert "SIGTERM at 2 s, SIGKILL at 4 s" in final["error"]
    assert pids_with_arg(mark) == []
    assert zombies_under(executor_pids(server)) == []
    last_line = server.log(job["id"]).decode().rstrip("\n").rsplit("\n", 1)[-1]
    assert last_line.startswith("[remote-ci] timeout")


def test_a_job_that_exits_cleanly_on_sigterm_still_ends_timeout(server: Server) -> None:
    mark = marker()
    job = server.submit(f"trap 'echo got-term; exit 0' TERM; sleep {mark} & wait", timeout=4)
    final = server.wait_final(job["id"], timeout=30)
    assert final["status"] == "timeout"
    assert final["exit_code"] == 0
    assert final["duration"] < 3.5  # it left at the soft limit, before the hard one
    assert b"got-term\n" in server.log(job["id"])
    assert pids_with_arg(mark) == []


def test_cancel_of_a_running_job_stops_its_whole_tree(server: Server) -> None:
    mark = marker()
    job = server.submit(hostile_script(mark))
    wait_until(lambda: len(pids_with_arg(mark)) >= 5, 15, "the job's processes to start")
    resp = server.request("POST", f"/api/jobs/{job['id']}/cancel")
    assert resp.status == 202
    assert resp.json()["status"] == "running" and resp.json()["cancel_requested"] is True
    final = server.wait_final(job["id"], timeout=30)
    assert final["status"] == "cancelled"
    assert final["duration"] < 15
    assert pids_with_arg(mark) == []
    assert zombies_under(executor_pids(server)) == []


def test_cancel_of_a_queued_job_is_immediate_and_it_never_starts(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_CONCURRENCY": "1", "REMOTE_CI_CANCEL_GRACE": "1"}, wait_workers=1)
    blocker = srv.submit("sleep 60")
    srv.wait_status(blocker["id"], ("running",))
    queued = srv.submit("echo should-never-run")
    resp = srv.request("POST", f"/api/jobs/{queued['id']}/cancel")
    assert resp.status == 202
    assert resp.json()["status"] == "cancelled"
    srv.request("POST", f"/api/jobs/{blocker['id']}/cancel")
    srv.wait_final(blocker["id"])
    after = srv.submit("true")
    srv.wait_final(after["id"])  # the executor went past where the cancelled job was
    job = srv.job(queued["id"])
    assert job["status"] == "cancelled" and job["started_at"] is None
    assert srv.log(queued["id"]) == b""


def test_cancel_of_a_finished_job_is_409(server: Server) -> None:
    job = server.submit("true")
    server.wait_final(job["id"])
    resp = server.request("POST", f"/api/jobs/{job['id']}/cancel")
    assert resp.status == 409
    assert "already ended with status 'success'" in resp.json()["error"]


def test_leftovers_of_a_successful_job_are_stopped(server: Server) -> None:
    mark = marker()
    job = server.submit(f"sleep {mark} & setsid sleep {mark} & "
                        f"( setsid sh -c 'sleep {mark} &' & ) ; echo done")
    final = server.wait_final(job["id"])
    assert final["status"] == "success"
    assert pids_with_arg(mark) == []
    assert zombies_under(executor_pids(server)) == []


@pytest.mark.parametrize("script", ["sleep 1", "sleep 0.98", "sleep 1.02"])
def test_a_job_ending_at_its_soft_deadline_gets_one_consistent_outcome(
        make_server: MakeServer, script: str
) -> None:
    srv = make_server(env={"REMOTE_CI_KILL_GRACE": "1"})
    job = srv.submit(script, timeout=2)  # soft limit at 1 s, hard at 2 s
    final = srv.wait_final(job["id"], timeout=20)
    assert final["status"] in ("success", "timeout")
    log = srv.log(job["id"]).decode()
    assert log.count("[remote-ci]") == 1
    if final["status"] == "success":
        assert final["exit_code"] == 0 and final["error"] is None and "[remote-ci] success" in log
    else:
        assert "time limit reached" in final["error"] and "[remote-ci] timeout" in log


def test_executor_keeps_working_after_many_short_jobs(server: Server) -> None:
    ids = [server.submit(f"echo {i}")["id"] for i in range(20)]
    finals = [server.wait_final(i) for i in ids]
    assert all(f["status"] == "success" for f in finals)
    assert zombies_under(executor_pids(server)) == []
