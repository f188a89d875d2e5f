"""Processes and guarantees: the embedded default, api + worker, FIFO, crashes, drains, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.helpers import (
    ROOT,
    MakeRedis,
    MakeServer,
    Server,
    pid_alive,
    pids_with_arg,
    process_tree,
    shared_dir,
    wait_until,
)
from tests.system.test_process_tree import marker


def executor_infos(client: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(v) for k in client.scan_iter("rci:executor:*") if (v := client.get(k))]


def test_embedded_default_runs_a_private_redis_with_aof_and_stops_everything(make_server: MakeServer) -> None:
    srv: Server = make_server(redis_url=None, wait_workers=2)
    socket_path = srv.data_dir / "redis" / "redis.sock"
    assert socket_path.is_socket()
    client = redis.Redis(unix_socket_path=str(socket_path))
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("port") == {"port": "0"}  # no TCP port at all
    job = srv.submit("echo embedded")
    assert srv.wait_final(job["id"])["status"] == "success"
    assert srv.proc is not None
    everything = process_tree(srv.proc.pid)
    redis_pid = int((srv.data_dir / "redis" / "redis.pid").read_text())
    assert redis_pid in everything and len(everything) >= 5  # serve, redis, supervisor, 2 executors
    assert srv.stop(signal.SIGTERM) == 0
    wait_until(lambda: not any(pid_alive(p) for p in everything), 10, "every process to exit")
    assert "stopped" in srv.output()
    assert "test-token" not in srv.output()


def test_api_and_worker_run_separately_against_one_redis(
        make_server: MakeServer, make_redis: MakeRedis, tmp_path: Path) -> None:
    rs = make_redis()
    api = make_server("api", redis_url=rs.url, base=tmp_path / "host")
    worker = make_server("worker", redis_url=rs.url, base=tmp_path / "host")
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 2, 20, "worker executors")
    job = api.submit("echo split")
    assert api.wait_final(job["id"])["status"] == "success"
    assert api.log(job["id"]).startswith(b"split\n")
    assert worker.stop() == 0
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 0, 20, "executors to leave")
    assert api.stop() == 0


def test_api_and_worker_need_a_redis_url(tmp_path: Path) -> None:
    for command in ("api", "worker"):
        srv = Server(tmp_path / command, command=command)
        env = srv.environment()
        out = subprocess.run([os.sys.executable, "remoteci.py", command], env=env, capture_output=True,
                             text=True, timeout=30, cwd=ROOT)
        assert out.returncode == 2
        assert "REMOTE_CI_REDIS_URL is required" in out.stderr


def test_serve_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    srv = Server(tmp_path, command="serve")
    env = {k: v for k, v in srv.environment().items() if k != "REMOTE_CI_TOKEN"}
    out = subprocess.run([os.sys.executable, "remoteci.py", "serve"], env=env, capture_output=True,
                         text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2
    assert "REMOTE_CI_TOKEN is not set" in out.stderr


def test_fifo_and_the_concurrency_bound_under_load(make_server: MakeServer) -> None:
    srv: Server = make_server(wait_workers=2)
    events = shared_dir() / "events"
    script = ('echo "start $REMOTE_CI_JOB_ID $(date +%s%N)" >> "$EVENTS"; sleep 0.05; '
              'echo "end $REMOTE_CI_JOB_ID $(date +%s%N)" >> "$EVENTS"')
    ids = [srv.submit(script, env={"EVENTS": str(events)})["id"] for _ in range(50)]
    for job_id in ids:
        assert srv.wait_final(job_id, timeout=60)["status"] == "success"
    starts: dict[str, int] = {}
    timeline = []
    for line in events.read_text().splitlines():
        kind, job_id, ns = line.split()
        timeline.append((int(ns), 1 if kind == "start" else -1))
        if kind == "start":
            starts[job_id] = int(ns)
    running = peak = 0
    for _, delta in sorted(timeline):
        running += delta
        peak = max(peak, running)
    assert peak == 2  # both executors were used, never more
    # FIFO: job k+2 can only be taken after job k started, whatever the two executors did.
    for k in range(len(ids) - 2):
        assert starts[ids[k]] < starts[ids[k + 2]], k


def test_two_worker_hosts_share_the_queue_each_with_its_own_bound(
        make_server: MakeServer, make_redis: MakeRedis, tmp_path: Path) -> None:
    rs = make_redis()
    api = make_server("api", redis_url=rs.url, base=tmp_path / "shared")
    for host in ("host-a", "host-b"):
        make_server("worker", redis_url=rs.url, base=tmp_path / "shared",
                    env={"REMOTE_CI_NODE_NAME": host, "REMOTE_CI_CONCURRENCY": "1"})
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 2, 20, "two hosts")
    ids = [api.submit("sleep 0.3")["id"] for _ in range(6)]
    wait_until(lambda: api.request("GET", "/api/stats").json()["running"] == 2, 20, "two running")
    finals = [api.wait_final(i, timeout=60) for i in ids]
    hosts = {str(f["worker"]).split(":")[0] for f in finals}
    assert hosts == {"host-a", "host-b"}


def test_a_killed_executor_is_replaced_and_its_job_ends_error(make_server: MakeServer) -> None:
    srv: Server = make_server(wait_workers=2)
    client = redis.Redis.from_url(srv.redis_url)
    mark = marker()
    job = srv.submit(f"setsid sleep {mark} & sleep {mark}")
    running = srv.wait_status(job["id"], ("running",))
    wait_until(lambda: len(pids_with_arg(mark)) >= 2, 10, "the job's processes")
    victim = next(int(e["pid"]) for e in executor_infos(client) if e["id"] == running["worker"])  # type: ignore[call-overload]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    final = srv.wait_final(job["id"], timeout=90)
    took = time.monotonic() - started
    assert final["status"] == "error" and "executor lost" in final["error"]
    assert took < 90
    wait_until(lambda: pids_with_arg(mark) == [], 10, "the lost job's processes to be killed")
    wait_until(lambda: srv.request("GET", "/api/stats").json()["workers"] == 2, 20, "a new executor")
    after = srv.submit("echo still working")
    assert srv.wait_final(after["id"])["status"] == "success"


def test_sigterm_lets_a_running_job_finish(make_server: MakeServer) -> None:
    srv: Server = make_server(env={"REMOTE_CI_DRAIN_TIMEOUT": "30"}, wait_workers=2)
    job = srv.submit("sleep 1; echo finished")
    srv.wait_status(job["id"], ("running",))
    client = redis.Redis.from_url(srv.redis_url)
    assert srv.stop(signal.SIGTERM, timeout=40) == 0
    record = {k.decode(): v.decode() for k, v in client.hgetall(f"rci:job:{job['id']}").items()}
    assert record["status"] == "success"


def test_sigterm_kills_jobs_that_outlast_the_drain(make_server: MakeServer) -> None:
    srv: Server = make_server(env={"REMOTE_CI_DRAIN_TIMEOUT": "1"}, wait_workers=2)
    mark = marker()
    job = srv.submit(f"trap '' TERM; setsid sleep {mark} & sleep {mark}")
    srv.wait_status(job["id"], ("running",))
    client = redis.Redis.from_url(srv.redis_url)
    assert srv.stop(signal.SIGTERM, timeout=30) == 0
    record = {k.decode(): v.decode() for k, v in client.hgetall(f"rci:job:{job['id']}").items()}
    assert record["status"] == "error"
    assert "shutting down" in record["error"] and "REMOTE_CI_DRAIN_TIMEOUT=1" in record["error"]
    assert pids_with_arg(mark) == []


def test_queued_jobs_survive_a_restart_of_everything_redis_included(
        make_server: MakeServer, tmp_path: Path
) -> None:
    env = {"REMOTE_CI_CONCURRENCY": "1", "REMOTE_CI_DRAIN_TIMEOUT": "0"}
    base = tmp_path / "persistent"
    first: Server = make_server(redis_url=None, env=env, base=base, wait_workers=1)
    blocker = first.submit("sleep 60")
    first.wait_status(blocker["id"], ("running",))
    order = shared_dir() / "order"
    queued = [first.submit(f'echo {i} >> "$ORDER"', env={"ORDER": str(order)})["id"] for i in range(3)]
    assert first.stop(signal.SIGTERM) == 0  # stops the embedded redis too; AOF keeps the queue

    second: Server = make_server(redis_url=None, env=env, base=base, port=first.port, wait_workers=1)
    assert second.job(blocker["id"])["status"] == "error"
    for job_id in queued:
        assert second.wait_final(job_id)["status"] == "success"
    assert order.read_text().split() == ["0", "1", "2"]


def test_jobs_of_a_host_that_died_end_error_when_another_supervisor_looks(
        make_server: MakeServer, make_redis: MakeRedis, tmp_path: Path) -> None:
    rs = make_redis()
    mark = marker()
    try:
        api = make_server("api", redis_url=rs.url, base=tmp_path / "h")
        doomed = make_server("worker", redis_url=rs.url, base=tmp_path / "h",
                             env={"REMOTE_CI_NODE_NAME": "doomed", "REMOTE_CI_CONCURRENCY": "1"})
        wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 1, 20, "the doomed host")
        job = api.submit(f"sleep {mark}")
        api.wait_status(job["id"], ("running",))
        everything = process_tree(doomed.proc.pid)  # type: ignore[union-attr]
        for pid in everything:  # the whole host dies at once
            os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        make_server("worker", redis_url=rs.url, base=tmp_path / "h2",
                    env={"REMOTE_CI_NODE_NAME": "survivor", "REMOTE_CI_CONCURRENCY": "1"})
        final = api.wait_final(job["id"], timeout=90)
        assert final["status"] == "error" and "executor lost" in final["error"]
        assert time.monotonic() - started < 90
        assert api.request("GET", "/api/stats").json()["workers"] == 1
    finally:
        for pid in pids_with_arg(mark):
            os.kill(pid, signal.SIGKILL)  # the "dead host" left its orphan behind; not ours to keep


def test_housekeeping_at_start_sweeps_old_files_and_expired_index_entries(
        make_server: MakeServer, tmp_path: Path) -> None:
    base = tmp_path / "kept"
    first = make_server(base=base)
    gone = first.submit("echo old > a.txt", artifacts=["a.txt"])
    first.wait_final(gone["id"])
    kept = first.submit("echo recent > a.txt", artifacts=["a.txt"])
    first.wait_final(kept["id"])
    assert first.stop() == 0
    client = redis.Redis.from_url(first.redis_url)
    client.delete(f"rci:job:{gone['id']}")  # as the retention TTL would
    eight_days_ago = time.time() - 8 * 86400
    logs = first.data_dir / "logs"
    os.utime(logs / f"{gone['id']}.log", (eight_days_ago, eight_days_ago))
    artifacts = first.data_dir / "artifacts"
    os.utime(artifacts / gone["id"], (eight_days_ago, eight_days_ago))
    stale_upload = first.data_dir / "uploads" / "stale.upload"
    stale_upload.write_bytes(b"x")
    os.utime(stale_upload, (eight_days_ago, eight_days_ago))
    stale_scratch = first.work_dir / "crashed-job"
    stale_scratch.mkdir()
    os.utime(stale_scratch, (eight_days_ago, eight_days_ago))
    fresh_scratch = first.work_dir / "maybe-running"
    fresh_scratch.mkdir()

    second = make_server(base=base, redis_url=first.redis_url, port=first.port, wait_workers=2)
    wait_until(lambda: not (logs / f"{gone['id']}.log").exists(), 20, "the old log to be swept")
    assert (logs / f"{kept['id']}.log").exists()
    assert not (artifacts / gone["id"]).exists() and (artifacts / kept["id"]).exists()
    assert not stale_upload.exists() and not stale_scratch.exists() and fresh_scratch.exists()
    wait_until(lambda: client.zscore("rci:index:all", gone["id"]) is None, 20, "the index to be pruned")
    assert [j["id"] for j in second.request("GET", "/api/jobs").json()["jobs"]] == [kept["id"]]


def test_the_sweep_spares_a_running_jobs_scratch_dir_whatever_its_age(
        make_server: MakeServer, tmp_path: Path) -> None:
    base = tmp_path / "shared"
    first = make_server(base=base)
    workspace = first.workspace_dir / "old-tree"
    workspace.mkdir(parents=True)
    (workspace / "input.txt").write_text("still here\n")
    long_ago = time.time() - 30 * 86400
    os.utime(workspace, (long_ago, long_ago))  # the copy keeps this mtime
    resp = first.request("POST", "/api/jobs/rsync", {
        "workspace": "old-tree", "script": "touch started; while [ ! -e go ]; do sleep 0.05; done; "
                                           "cat input.txt"})
    job_id = resp.json()["id"]
    scratch = first.work_dir / job_id
    wait_until(lambda: (scratch / "started").exists(), 20, "the job to start")
    os.utime(scratch, (long_ago, long_ago))
    # A second host sharing the work dir sweeps at its start, before its executors register.
    make_server("worker", base=base, redis_url=first.redis_url, wait_workers=0)
    wait_until(lambda: first.request("GET", "/api/stats").json()["workers"] == 4, 20,
               "the second host's executors")
    (scratch / "go").touch()
    final = first.wait_final(job_id)
    assert final["status"] == "success" and "still here" in first.log(job_id).decode()


def test_cancel_reaches_an_executor_on_another_host(
        make_server: MakeServer, make_redis: MakeRedis, tmp_path: Path) -> None:
    rs = make_redis()
    api = make_server("api", redis_url=rs.url, base=tmp_path / "api-host")
    make_server("worker", redis_url=rs.url, base=tmp_path / "worker-host",
                env={"REMOTE_CI_NODE_NAME": "far-away", "REMOTE_CI_CANCEL_GRACE": "1"})
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 2, 20, "the worker")
    (tmp_path / "worker-host" / "ws" / "proj").mkdir(parents=True)
    (tmp_path / "api-host" / "ws" / "proj").mkdir(parents=True, exist_ok=True)
    mark = marker()
    resp = api.request("POST", "/api/jobs/rsync", {"workspace": "proj", "script": f"sleep {mark}"})
    job_id = resp.json()["id"]
    api.wait_status(job_id, ("running",))
    assert api.request("POST", f"/api/jobs/{job_id}/cancel").status == 202
    final = api.wait_final(job_id, timeout=20)
    assert final["status"] == "cancelled" and final["worker"].startswith("far-away:")
    assert pids_with_arg(mark) == []


def test_a_malformed_queue_entry_is_dropped_and_jobs_go_on(make_server: MakeServer) -> None:
    srv = make_server(wait_workers=2)
    redis.Redis.from_url(srv.redis_url).rpush("rci:queue", "this is not json")
    job = srv.submit("echo still fine")
    assert srv.wait_final(job["id"])["status"] == "success"
    wait_until(lambda: "dropping a malformed queue entry" in srv.output(), 10, "the drop to be logged")
    assert srv.request("GET", "/api/stats").json()["workers"] == 2


def test_a_server_failure_during_a_job_ends_it_error_and_the_executor_goes_on(
        make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_CONCURRENCY": "1"}, wait_workers=1)
    logs = srv.data_dir / "logs"
    logs.rename(srv.data_dir / "logs-moved")
    logs.write_text("a file where the log directory should be")
    job = srv.submit("true")
    final = srv.wait_final(job["id"])
    assert final["status"] == "error" and "the server failed while running the job" in final["error"]
    logs.unlink()
    (srv.data_dir / "logs-moved").rename(logs)
    after = srv.submit("echo recovered")
    assert srv.wait_final(after["id"])["status"] == "success"


def test_a_port_in_use_fails_at_once_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        srv = Server(tmp_path, port=taken.getsockname()[1])
        out = subprocess.run([os.sys.executable, "remoteci.py", "serve"], env=srv.environment(),
                             capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 1
    assert "cannot listen on 127.0.0.1" in out.stderr and "REMOTE_CI_PORT" in out.stderr
    assert not (srv.data_dir / "redis" / "redis.pid").exists()
