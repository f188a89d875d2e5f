"""Worker hosts that share nothing with the API but Redis and the token.

Real processes on one machine: a redis-server, `api` with data dir A, and two `worker`s with
data and work dirs B and C (node names `b`, `c`) and REMOTE_CI_API_URL set. No directory is
shared: uploads, logs and artifacts reach the workers and the API only over HTTP.

Most tests keep the workers on 127.0.0.1; one puts a worker in a network namespace of its own
(as root, with `ip`), joined to the host by a veth pair: it reaches Redis and the API only at the
host side's address, so nothing it does can lean on the API host's loopback or files.
"""

from __future__ import annotations

import http.client
import io
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    TOKEN,
    MakeRedis,
    MakeServer,
    RedisServer,
    Server,
    pid_alive,
    process_tree,
    wait_until,
)
from tests.test_gitsource import git

COMMON = {"REMOTE_CI_GIT_ALLOW_FILE": "1", "REMOTE_CI_JOB_TIMEOUT": "120",
          "REMOTE_CI_KILL_GRACE": "2"}


@dataclass
class Hosts:
    api: Server
    workers: dict[str, Server]  # node name -> worker

    def worker_of(self, job: dict[str, object]) -> Server:
        return self.workers[str(job["worker"]).split(":")[0]]


@pytest.fixture
def hosts(make_redis: MakeRedis, make_server: MakeServer, tmp_path: Path) -> Iterator[Hosts]:
    rs = make_redis()
    api = make_server("api", env=COMMON, redis_url=rs.url, base=tmp_path / "A")
    workers = {}
    for node in ("b", "c"):
        workers[node] = make_server("worker", redis_url=rs.url, base=tmp_path / node.upper(),
                                    env={**COMMON, "REMOTE_CI_API_URL": api.url,
                                         "REMOTE_CI_NODE_NAME": node})
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 4, 30,
               "the executors of both worker hosts")
    dirs = [api.data_dir, api.work_dir, *(w.data_dir for w in workers.values()),
            *(w.work_dir for w in workers.values())]
    assert len(set(dirs)) == len(dirs)  # nothing shared
    for server in (api, *workers.values()):  # rsync jobs use the workspace of the worker
        server.make_workspace("proj")       # that runs them; the API checks the name only
    yield Hosts(api, workers)


def make_tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def upload(api: Server, archive: bytes, script: str, **query: str) -> dict[str, object]:
    from urllib.parse import urlencode

    resp = api.request("POST", "/api/jobs/upload?" + urlencode({"script": script, **query}),
                       archive, {"Content-Type": "application/gzip"})
    assert resp.status == 202, resp.body
    return dict(resp.json())


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


# --- the three modes ---------------------------------------------------------------------------

def test_an_upload_job_fetches_its_archive_from_the_api(hosts: Hosts) -> None:
    archive = make_tarball({"run.sh": b"echo from-upload\n", "data.txt": b"payload\n"})
    job = upload(hosts.api, archive, "sh run.sh; cat data.txt")
    final = hosts.api.wait_final(str(job["id"]), 60)
    assert final["status"] == "success", hosts.api.log(str(job["id"]))
    assert hosts.api.log(str(job["id"])).startswith(b"from-upload\npayload\n")
    worker = hosts.worker_of(final)
    # The copy on the worker and the API's archive are both gone once the job ended.
    assert files_in(worker.data_dir / "uploads") == []
    wait_until(lambda: files_in(hosts.api.data_dir / "uploads") == [], 10, "the API's upload")
    # The log was written on the worker and now lives on the API only.
    assert (hosts.api.data_dir / "logs" / f"{job['id']}.log").is_file()
    assert not (worker.data_dir / "logs" / f"{job['id']}.log").exists()


def test_a_git_job_runs_on_a_worker_and_its_log_reaches_the_api(hosts: Hosts,
                                                                  tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "hello.txt").write_text("from-git\n")
    git(origin, "add", "hello.txt")
    git(origin, "commit", "-q", "-m", "one")
    os.chmod(tmp_path, 0o755)  # the clone runs as the server; the repo is its "remote"
    resp = hosts.api.request("POST", "/api/jobs/git", {"repo": f"file://{origin}",
                                                       "script": "cat hello.txt"})
    assert resp.status == 202, resp.body
    job_id = str(resp.json()["id"])
    final = hosts.api.wait_final(job_id, 60)
    log = hosts.api.log(job_id)
    assert final["status"] == "success", log
    assert b"from-git\n" in log and b"[remote-ci] commit " in log


def test_an_rsync_job_uses_the_workspace_on_the_worker_that_runs_it(hosts: Hosts) -> None:
    hosts.api.make_workspace("proj", {"who": "the-api\n"})  # the API checks the name only
    for node, worker in hosts.workers.items():
        worker.make_workspace("proj", {"who": f"host-{node}\n"})
    ids = [hosts.api.submit("cat who")["id"] for _ in range(4)]
    for job_id in ids:
        final = hosts.api.wait_final(str(job_id), 60)
        node = str(final["worker"]).split(":")[0]
        assert final["status"] == "success"
        assert hosts.api.log(str(job_id)).startswith(f"host-{node}\n".encode())


# --- the log -----------------------------------------------------------------------------------

def expected_seq(first: int, last: int) -> bytes:
    return "".join(f"{n}\n" for n in range(first, last + 1)).encode()


def test_a_50_mb_log_is_followed_live_through_the_api_byte_for_byte(hosts: Hosts) -> None:
    half = 3_300_000  # seq 1..6.6M is about 52 MB
    job = hosts.api.submit(f"seq 1 {half}; sleep 2; seq {half + 1} {2 * half}")
    job_id = str(job["id"])
    conn = http.client.HTTPConnection("127.0.0.1", hosts.api.port, timeout=60)
    conn.request("GET", f"/api/jobs/{job_id}/logs?follow=1",
                  headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200
    received = bytearray()
    status_at_first_half = None
    while chunk := resp.read1(1 << 20):
        received += chunk
        if status_at_first_half is None and len(received) >= len(expected_seq(1, 1000)):
            status_at_first_half = hosts.api.job(job_id)["status"]
    conn.close()
    assert status_at_first_half == "running", (len(received), resp.headers.items(), hosts.api.job(job_id))
    final = hosts.api.job(job_id)
    assert final["status"] == "success"
    expected = expected_seq(1, 2 * half)
    assert len(expected) > 50 * 10**6
    assert bytes(received[:len(expected)]) == expected
    assert bytes(received[len(expected):]).startswith(b"[remote-ci] success")
    assert bytes(received) == hosts.api.log(job_id)  # the follow ended on the whole log


def test_the_log_survives_an_api_restart_mid_job(hosts: Hosts, make_server: MakeServer) -> None:
    job = hosts.api.submit("for i in $(seq 1 40); do echo line-$i; sleep 0.1; done")
    job_id = str(job["id"])
    wait_until(lambda: b"line-3\n" in hosts.api.log(job_id), 30, "the first lines on the API")
    port, base, redis_url = hosts.api.port, hosts.api.base, hosts.api.redis_url
    assert hosts.api.stop() == 0
    time.sleep(1.5)  # the API stays away while the job writes: its lines wait on the worker
    api = make_server("api", env=COMMON, redis_url=redis_url, base=base, port=port)
    final = api.wait_final(job_id, 60)
    assert final["status"] == "success"
    body = api.log(job_id)
    expected = "".join(f"line-{i}\n" for i in range(1, 41)).encode()
    assert body[:len(expected)] == expected, body[:2000]
    assert body[len(expected):].startswith(b"[remote-ci] success")
    worker = hosts.worker_of(final)
    assert "cannot reach the API" in worker.output()


def test_a_worker_killed_mid_job_leaves_the_log_it_sent(hosts: Hosts) -> None:
    job = hosts.api.submit("echo before-the-kill; seq 1 1000; sleep 60")
    job_id = str(job["id"])
    wait_until(lambda: b"\n1000\n" in hosts.api.log(job_id), 30, "the first lines on the API")
    worker = hosts.worker_of(hosts.api.job(job_id))
    assert worker.proc is not None
    family = process_tree(worker.proc.pid)
    for pid in family:  # the whole host dies at once: worker, executors, the job
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(p) for p in family), 10, "the worker's processes to die")
    body = hosts.api.log(job_id)
    assert body == b"before-the-kill\n" + expected_seq(1, 1000)


# --- artifacts ---------------------------------------------------------------------------------

def test_artifacts_are_sent_to_the_api_and_served_from_it(hosts: Hosts) -> None:
    job = hosts.api.submit("mkdir -p out/deep && echo one > out/a.txt && "
                           "head -c 5000000 /dev/urandom > out/deep/b.bin",
                           artifacts=["out/**"])
    job_id = str(job["id"])
    final = hosts.api.wait_final(job_id, 60)
    assert final["status"] == "success", hosts.api.log(job_id)
    listing = hosts.api.request("GET", f"/api/jobs/{job_id}/artifacts").json()
    sizes = {a["path"]: a["size"] for a in listing["artifacts"]}
    assert sizes == {"out/a.txt": 4, "out/deep/b.bin": 5000000}  # b.bin: sent in pieces
    assert hosts.api.request("GET", f"/api/jobs/{job_id}/artifacts/out/a.txt").body == b"one\n"
    tarball = hosts.api.request("GET", f"/api/jobs/{job_id}/artifacts.tar.gz").body
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        assert sorted(tar.getnames()) == ["out/a.txt", "out/deep/b.bin"]
    worker = hosts.worker_of(final)
    assert files_in(worker.data_dir / "artifacts") == []  # the API's copy is the one kept


# --- a worker in a network namespace of its own -----------------------------------------------

@dataclass
class NetNs:
    name: str
    host_ip: str  # the host's end of the veth pair: where Redis and the API listen for the worker


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[NetNs]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and `ip` (iproute2)")
    tag = secrets.token_hex(3)
    name, host_end, ns_end = f"rci-{tag}", f"rch{tag}", f"rcn{tag}"
    octet = 16 + int(tag, 16) % 200  # 10.231.<octet>.0/30, one pair per test
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    ip("netns", "add", name)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", name)
        ip("addr", "add", f"{host_ip}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_end)
        ip("netns", "exec", name, "ip", "link", "set", ns_end, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield NetNs(name, host_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30,
                       check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                       check=False)


def test_a_worker_in_its_own_network_namespace_needs_only_redis_and_the_api(
        netns: NetNs, make_server: MakeServer, tmp_path: Path) -> None:
    rs = RedisServer(tmp_path / "redis")
    rs.proc = subprocess.Popen(
        ["redis-server", "--bind", f"127.0.0.1 {netns.host_ip}", "--port", str(rs.port),
         "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = rs.client()
        wait_until(lambda: client.ping(), 10, "redis-server to answer")
        # Every address, so the test reaches it on 127.0.0.1 and the worker on the veth's.
        api = make_server("api", env={**COMMON, "REMOTE_CI_HOST": "0.0.0.0"}, redis_url=rs.url,
                          base=tmp_path / "A")
        worker = make_server(
            "worker", redis_url=f"redis://{netns.host_ip}:{rs.port}/0", base=tmp_path / "B",
            env={**COMMON, "REMOTE_CI_API_URL": f"http://{netns.host_ip}:{api.port}",
                 "REMOTE_CI_NODE_NAME": "b"},
            wrapper=["ip", "netns", "exec", netns.name])
        wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 2, 30,
                   "the namespaced worker's executors")
        job = upload(api, make_tarball({"run.sh": b"echo in-a-namespace\n"}),
                     "sh run.sh; mkdir out; echo kept > out/k.txt", artifacts='["out/*"]')
        final = api.wait_final(str(job["id"]), 60)
        log = api.log(str(job["id"]))
        assert final["status"] == "success" and str(final["worker"]).startswith("b:"), log
        assert log.startswith(b"in-a-namespace\n")
        kept = api.request("GET", f"/api/jobs/{job['id']}/artifacts/out/k.txt")
        assert kept.body == b"kept\n"
        assert worker.proc is not None and worker.proc.poll() is None
        assert os.readlink(f"/proc/{worker.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        rs.stop()
