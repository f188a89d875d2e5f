"""Redis fails over under a running server: a primary, two replicas, three Sentinels, all real.

SIGKILL the primary while jobs are submitted and running: every job answered 202 ends final
exactly once, the API answers 503 (never 500) until the Sentinels promote a replica, and then
accepts jobs again without a restart.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from remoteci import jobs
from remoteci.config import Settings
from remoteci.executor import Executor
from remoteci.queue import JobStore
from tests.helpers import MakeServer, free_port, shared_dir, wait_until

SERVICE = "main"


@dataclass
class Cluster:
    """Redis processes of one test, each stopped by its pid at teardown."""

    directory: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # port -> process

    def start(self, port: int, *args: str) -> None:
        workdir = self.directory / str(port)
        workdir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", *args, "--port", str(port), "--bind", "127.0.0.1", "--dir",
             str(workdir), "--daemonize", "no", "--logfile", str(workdir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_sentinel(self, port: int, primary: int) -> None:
        conf = self.directory / f"sentinel-{port}.conf"  # Sentinel rewrites it: one each
        conf.write_text(f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 5000\n"
                        f"sentinel parallel-syncs {SERVICE} 2\n")
        self.start(port, str(conf), "--sentinel")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)


def _answers(port: int) -> bool:
    try:
        return bool(_client(port).ping())
    except redis.RedisError:
        return False


def _primary_seen_by(sentinel: int) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = _client(sentinel).sentinel_master(SERVICE)
    except redis.RedisError:
        return None
    return state


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster(tmp_path / "redis")
    try:
        yield found
    finally:
        found.stop()


def test_a_failover_loses_no_job_and_runs_none_twice(cluster: Cluster, make_server: MakeServer) -> None:
    primary, replicas, sentinels = free_port(), [free_port(), free_port()], [free_port() for _ in range(3)]
    cluster.start(primary, "--save", "")
    for port in replicas:
        cluster.start(port, "--save", "", "--replicaof", "127.0.0.1", str(primary))
    for port in sentinels:
        cluster.start_sentinel(port, primary)
    wait_until(lambda: all(_answers(p) for p in [primary, *replicas, *sentinels]), 20,
               "every redis-server and Sentinel to answer")
    wait_until(lambda: all(_client(p).info("replication")["master_link_status"] == "up"
                           for p in replicas), 20, "both replicas to finish their first sync")
    # Sentinels find the replicas and each other through the primary: a failover needs a
    # majority of them to agree, so wait until each knows the whole set.
    wait_until(lambda: all((s := _primary_seen_by(p)) and int(s["num-slaves"]) == 2
                           and int(s["num-other-sentinels"]) == 2 for p in sentinels),
               30, "the Sentinels to know both replicas and each other")

    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinels)
    srv = make_server(redis_url=f"redis+sentinel://{hosts}/{SERVICE}/0", wait_workers=2,
                      env={"REMOTE_CI_REDIS_MIN_REPLICAS": "1", "REMOTE_CI_CONCURRENCY": "2"})
    ran = shared_dir() / "ran"
    script = f'echo "$REMOTE_CI_JOB_ID" >> {ran}; sleep 0.2'
    srv.make_workspace("proj")

    in_flight = srv.submit(f'echo "$REMOTE_CI_JOB_ID" >> {ran}; sleep 4; exit 3')
    srv.wait_status(in_flight["id"], ("running",))

    answers: list[tuple[float, int, str | None]] = []  # (when, status, job id)
    reads: set[int] = set()  # statuses of the reads made meanwhile
    stop = threading.Event()

    def submit_stream() -> None:
        while not stop.is_set():
            resp = srv.request("POST", "/api/jobs/rsync", {"workspace": "proj", "script": script},
                               timeout=20)
            answers.append((time.monotonic(), resp.status,
                            resp.json().get("id") if resp.status == 202 else None))
            reads.add(srv.request("GET", f"/api/jobs/{in_flight['id']}", timeout=20).status)
            reads.add(srv.request("GET", "/api/jobs?limit=20", timeout=20).status)
            time.sleep(0.05)

    stream = threading.Thread(target=submit_stream, name="submissions")
    stream.start()
    try:
        wait_until(lambda: sum(1 for _, status, _ in answers if status == 202) >= 5, 20,
                   "a few submissions before the failover")
        cluster.procs[primary].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first_after = wait_until(
            lambda: next((when for when, status, _ in answers
                          if when > killed_at and status == 202), None), 45,
            "a job accepted by the new primary")
        wait_until(lambda: time.monotonic() > first_after + 2, 5, "more submissions after it")
    finally:
        stop.set()
        stream.join(30)

    statuses = {status for _, status, _ in answers}
    assert statuses == {202, 503}, sorted(statuses)  # 503 while Redis switches, never a 500
    assert reads <= {200, 503}, sorted(reads)
    new_primary = _primary_seen_by(sentinels[0])
    assert new_primary is not None and int(new_primary["port"]) in replicas
    print(f"\nfailover: {first_after - killed_at:.1f} s from SIGKILL of the primary to the "
          f"next 202; {sum(1 for _, s, _ in answers if s == 503)} answers were 503")

    accepted = [job_id for _, status, job_id in answers if status == 202 and job_id]
    finals = {job_id: srv.wait_final(job_id, timeout=60) for job_id in accepted}
    assert {job["status"] for job in finals.values()} == {"success"}, finals
    assert srv.wait_final(in_flight["id"], timeout=60)["status"] == "failed"  # its real end
    assert srv.job(in_flight["id"])["exit_code"] == 3
    runs = ran.read_text().split()
    for job_id in [in_flight["id"], *accepted]:
        assert runs.count(job_id) == 1, f"job {job_id} ran {runs.count(job_id)} times"
    assert len(runs) == len(set(runs)), "a job refused with 503 ran twice"
    assert srv.request("GET", "/api/stats").json()["running"] == 0


def test_a_submission_no_replica_confirmed_is_a_503_naming_the_cause(make_server: MakeServer) -> None:
    srv = make_server(env={"REMOTE_CI_REDIS_MIN_REPLICAS": "1"})  # its redis has no replica
    srv.make_workspace("proj")
    resp = srv.request("POST", "/api/jobs/rsync", {"workspace": "proj", "script": "true"},
                       headers={"Idempotency-Key": "once"})
    assert resp.status == 503 and resp.headers["retry-after"] == "5"
    assert "only 0 of the 1 Redis replicas required" in resp.json()["error"]
    assert "Idempotency-Key" in resp.json()["error"]
    assert srv.request("GET", "/api/health", token=None).status == 200  # Redis itself is fine


def test_an_end_lost_with_a_primary_comes_back_and_is_resent_not_run_again(
        store_client: redis.Redis, tmp_path: Path) -> None:
    """The executor wrote the end, the primary that took it was abandoned, and the promoted
    replica still has the job running in the executor's in-flight list."""
    store = JobStore(store_client, 3600)
    record = {"id": "j1", "mode": "rsync", "status": jobs.QUEUED, "script": "exit 3"}
    store.enqueue(record, {"id": "j1", "mode": "rsync", "script": "exit 3"}, max_queue=10)
    assert store.take("ex1", 0.1) is not None  # claimed; then it ran and ended, elsewhere
    settings = Settings(tokens=("t" * 8,), data_dir=tmp_path / "data",
                        work_dir=tmp_path / "work", workspace_dir=tmp_path / "ws")
    executor = Executor(settings, store, "ex1")
    executor._ended["j1"] = ("failed", {"exit_code": "3", "finished_at": jobs.iso_now()}, {})
    found = store.left_in_flight("ex1")
    assert found is not None and found.claimed
    executor._handle(found)
    assert store.get("j1") is not None and store.get("j1")["status"] == "failed"  # type: ignore[index]
    assert store.get("j1")["exit_code"] == 3  # type: ignore[index]
    assert not (settings.logs_dir / "j1.log").exists()  # never started a second time
    assert store.inflight("ex1") == []
