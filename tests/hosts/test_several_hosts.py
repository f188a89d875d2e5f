"""Several worker hosts on one Redis, each with its own dirs: `host` pins a job to one of them.

Real processes: a redis-server, an `api` with data dir A, and `worker`s `b` and `c` with data,
work and workspace dirs of their own (no directory is shared between them and the API).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.test_client import CLIENTS
from tests.helpers import (
    TOKEN,
    MakeRedis,
    MakeServer,
    RedisServer,
    Server,
    pid_alive,
    pids_with_arg,
    process_tree,
    shared_dir,
    wait_until,
)
from tests.system.test_process_tree import marker
from tests.web.test_metrics import scrape as metrics_of
from tests.web.test_metrics import value as metric
from tests.web.test_uploads import BOUNDARY, archive, form

ENV = {"REMOTE_CI_CONCURRENCY": "1", "REMOTE_CI_DRAIN_TIMEOUT": "2", "REMOTE_CI_JOB_TIMEOUT": "60"}


class Cluster:
    def __init__(self, base: Path):
        self.redis = RedisServer(base / "redis").start()
        self.api = Server(base / "a", redis_url=self.redis.url, command="api", env=ENV)
        self.workers = {h: Server(base / h, redis_url=self.redis.url, command="worker",
                                  env={**ENV, "REMOTE_CI_NODE_NAME": h}) for h in ("b", "c")}

    def start(self) -> Cluster:
        self.api.start()
        for worker in self.workers.values():
            worker.start()
        wait_until(lambda: self.hosts().get("b", {}).get("executors") == 1
                   and self.hosts().get("c", {}).get("executors") == 1, 30, "hosts b and c")
        return self

    def hosts(self) -> dict[str, dict[str, int]]:
        return dict(self.api.request("GET", "/api/stats").json()["hosts"])

    def stop(self) -> None:
        for server in (self.api, *self.workers.values()):
            server.shutdown()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("hosts"))
    try:
        yield c.start()
    finally:
        c.stop()


def submit(api: Server, body: dict[str, object]) -> dict[str, object]:
    resp = api.request("POST", "/api/jobs/rsync", body)
    assert resp.status == 202, resp.body
    return dict(resp.json())


def test_a_job_pinned_to_c_runs_on_c_with_the_workspace_only_c_has(cluster: Cluster) -> None:
    c = cluster.workers["c"]
    c.make_workspace("only-on-c", {"data.txt": "from c\n"})
    assert not (cluster.api.workspace_dir / "only-on-c").exists()
    for _ in range(3):  # not by luck: b is idle and would take an unpinned job as soon as c
        job = submit(cluster.api, {"workspace": "only-on-c", "script": "grep -q 'from c' data.txt",
                                   "host": "c"})
        assert job["host"] == "c" and job["status"] == "queued" and "waiting_for" not in job
        final = cluster.api.wait_final(str(job["id"]))
        assert final["status"] == "success", final
        assert str(final["worker"]).startswith("c:") and final["host"] == "c"


def test_a_workspace_missing_on_its_host_ends_the_job_error_there(cluster: Cluster) -> None:
    cluster.api.make_workspace("only-on-api")  # the API's disk does not count for a pinned job
    job = submit(cluster.api, {"workspace": "only-on-api", "script": "true", "host": "b"})
    final = cluster.api.wait_final(str(job["id"]))
    assert final["status"] == "error" and str(final["worker"]).startswith("b:")
    assert "workspace 'only-on-api' not found on host 'b'" in str(final["error"])


def test_jobs_pinned_to_a_host_start_in_submission_order(cluster: Cluster) -> None:
    out = shared_dir()
    go = out / "go"
    c = cluster.workers["c"]
    c.make_workspace("fifo")
    blocker = submit(cluster.api, {"workspace": "fifo", "host": "c", "timeout": 30,
                                   "script": f"while [ ! -e {go} ]; do sleep 0.05; done"})
    cluster.api.wait_status(str(blocker["id"]), ("running",))
    ids = [str(submit(cluster.api, {"workspace": "fifo", "host": "c",
                                    "script": f"echo {i} >> {out}/order"})["id"]) for i in range(5)]
    wait_until(lambda: cluster.hosts()["c"]["queued"] == 5, 10, "five jobs queued for c")
    positions = [cluster.api.job(i)["queue_position"] for i in ids]
    assert positions == sorted(positions) and len(set(positions)) == 5
    go.touch()
    for job_id in ids:
        assert cluster.api.wait_final(job_id)["status"] == "success"
    assert (out / "order").read_text().split() == ["0", "1", "2", "3", "4"]


def test_a_job_for_a_host_without_executors_waits_and_can_be_cancelled(cluster: Cluster) -> None:
    job = submit(cluster.api, {"workspace": "anything", "script": "true", "host": "later"})
    job_id = str(job["id"])
    assert "host 'later', which has no live executor" in str(job["waiting_for"])
    assert "host 'later'" in cluster.api.job(job_id)["waiting_for"]
    assert cluster.hosts()["later"] == {"executors": 0, "running": 0, "queued": 1}
    assert metric(metrics_of(cluster.api), "remoteci_host_queued", host="later") == 1
    hosts_table = cluster.api.request("GET", "/").body.decode().split("<h2>Hosts</h2>")[1]
    assert "<td>later</td>" in hosts_table.split("</table>")[0]
    assert "no live executor on this host" in hosts_table
    assert cluster.api.job(job_id)["status"] == "queued"
    resp = cluster.api.request("POST", f"/api/jobs/{job_id}/cancel")
    assert resp.status == 202, resp.body
    assert cluster.api.job(job_id)["status"] == "cancelled"
    assert cluster.hosts().get("later", {}).get("queued", 0) == 0


def test_stats_and_metrics_count_each_hosts_executors(cluster: Cluster) -> None:
    hosts = cluster.hosts()
    assert hosts["b"]["executors"] == 1 and hosts["c"]["executors"] == 1
    assert cluster.api.request("GET", "/api/stats").json()["workers"] == 2
    families = metrics_of(cluster.api)
    assert metric(families, "remoteci_host_executors", host="b") == 1
    assert metric(families, "remoteci_host_executors", host="c") == 1


@pytest.mark.parametrize("host", ["a:b", "-x", "has space", "x" * 200, 7, ["c"]])
def test_a_bad_host_is_a_400_naming_the_field(cluster: Cluster, host: object) -> None:
    resp = cluster.api.request("POST", "/api/jobs/rsync",
                               {"workspace": "w", "script": "true", "host": host})
    assert resp.status == 400, resp.body
    assert "'host'" in resp.json()["error"]


def test_a_bad_host_in_a_multipart_upload_is_a_400(cluster: Cluster) -> None:
    body = form(("script", None, b"true"), ("host", None, b"no/slashes"),
                ("code", "code.tar.gz", archive()))
    resp = cluster.api.request("POST", "/api/jobs/upload", body,
                               {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert resp.status == 400, resp.body
    assert "'host'" in resp.json()["error"]


def test_a_worker_host_killed_mid_job_ends_its_job_error_through_another_host(
        make_server: MakeServer, make_redis: MakeRedis, tmp_path: Path) -> None:
    rs = make_redis()
    mark = marker()
    api = make_server("api", redis_url=rs.url, base=tmp_path / "a", env=ENV)
    # Its own session, so its whole process group can die at once, as with the host.
    doomed = make_server("worker", redis_url=rs.url, base=tmp_path / "b", wrapper=["setsid"],
                         env={**ENV, "REMOTE_CI_NODE_NAME": "b"})
    make_server("worker", redis_url=rs.url, base=tmp_path / "c",
                env={**ENV, "REMOTE_CI_NODE_NAME": "c"})
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 2, 30, "b and c")
    doomed.make_workspace("w")
    try:
        job = submit(api, {"workspace": "w", "script": f"sleep {mark}", "host": "b"})
        running = api.wait_status(str(job["id"]), ("running",))
        assert str(running["worker"]).startswith("b:")
        wait_until(lambda: pids_with_arg(mark), 10, "the job's sleep")
        assert doomed.proc is not None
        everything = process_tree(doomed.proc.pid)
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        for pid in everything:  # the job ran in a session of its own: the host takes it too
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        final = api.wait_final(str(job["id"]), timeout=90)
        took = time.monotonic() - killed
        print(f"host b killed: its job ended error {took:.1f} s later")  # pytest -s shows it
        assert took < 90
        assert final["status"] == "error" and "executor lost" in str(final["error"])
        wait_until(lambda: api.request("GET", "/api/stats").json()["hosts"].get("b") is None,
                   30, "host b to leave the stats")
    finally:
        for pid in pids_with_arg(mark):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("which", sorted(CLIENTS))
def test_both_clients_pin_with_host(cluster: Cluster, which: str) -> None:
    cluster.workers["c"].make_workspace("client-ws", {"data.txt": "from c\n"})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REMOTE_CI_TOKEN": TOKEN,
           "REMOTE_CI_SERVER": cluster.api.url}
    args = ["--workspace", "client-ws", "--script", "grep -q 'from c' data.txt", "--host"]
    done = subprocess.run([*CLIENTS[which], *args, "c"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stderr.split("/jobs/")[1].split()[0]
    final = cluster.api.job(job_id)
    assert final["host"] == "c" and str(final["worker"]).startswith("c:")
    refused = subprocess.run([*CLIENTS[which], *args, "not:a:node"], capture_output=True,
                             text=True, timeout=60, env=env)
    assert refused.returncode == 2 and "'host'" in refused.stderr


@pytest.mark.parametrize("which", sorted(CLIENTS))
def test_both_clients_say_what_a_pinned_job_waits_for(cluster: Cluster, which: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REMOTE_CI_TOKEN": TOKEN,
           "REMOTE_CI_SERVER": cluster.api.url}
    done = subprocess.run([*CLIENTS[which], "--workspace", "w", "--script", "true", "--host",
                           "nobody-home", "--max-wait", "1"], capture_output=True, text=True,
                          timeout=60, env=env)
    job_id = done.stderr.split("/jobs/")[1].split()[0]
    cluster.api.request("POST", f"/api/jobs/{job_id}/cancel")
    assert done.returncode == 0, done.stderr
    assert "it waits for host 'nobody-home', which has no live executor" in done.stderr


def test_pinned_and_unpinned_jobs_start_in_submission_order_on_one_host(
        make_server: MakeServer) -> None:
    srv = make_server(env={**ENV, "REMOTE_CI_NODE_NAME": "solo"}, wait_workers=1)
    out = shared_dir()
    go = out / "go"
    blocker = srv.submit(f"while [ ! -e {go} ]; do sleep 0.05; done", timeout=30)
    srv.wait_status(str(blocker["id"]), ("running",))
    pinned = [None, "solo", None, "solo", "solo", None]
    ids = [str(srv.submit(f"echo {i} >> {out}/order", **({"host": h} if h else {}))["id"])
           for i, h in enumerate(pinned)]
    go.touch()
    for job_id in ids:
        assert srv.wait_final(job_id)["status"] == "success"
    assert (out / "order").read_text().split() == [str(i) for i in range(len(pinned))]
