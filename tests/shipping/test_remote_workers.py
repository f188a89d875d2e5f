"""Worker hosts that share nothing with the API but Redis and the token.

Real processes on one machine: a redis-server, `api` with data dir A, and two `worker`s with
data and work dirs B and C (node names `b`, `c`) and REMOTE_CI_API_URL set. No directory is
shared: uploads, logs and artifacts reach the workers and the API only over HTTP.

Run as root with `ip` (iproute2), as CI runs, each worker is in a network namespace of its own,
joined to the host by a veth pair: it reaches Redis and the API only at the host end's address,
so nothing it does can lean on the API host's loopback. Without root the workers share the
host's 127.0.0.1 (the dirs are still separate).
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
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import (
    TOKEN,
    MakeRedis,
    MakeServer,
    Server,
    pid_alive,
    process_tree,
    wait_until,
)
from tests.sources.test_git import git

COMMON = {"REMOTE_CI_GIT_ALLOW_FILE": "1", "REMOTE_CI_JOB_TIMEOUT": "120",
          "REMOTE_CI_KILL_GRACE": "2"}


@dataclass
class Hosts:
    api: Server
    workers: dict[str, Server]  # node name -> worker
    api_env: dict[str, str]  # to start the API again

    def worker_of(self, job: dict[str, object]) -> Server:
        return self.workers[str(job["worker"]).split(":")[0]]


@dataclass
class NetNs:
    name: str
    host_ip: str  # the host's end of the veth pair: where Redis and the API listen for a worker


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def network_namespace() -> Iterator[NetNs | None]:
    """A namespace joined to the host by a veth pair; None where that needs rights we lack."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield None
        return
    tag = secrets.token_hex(3)
    name, host_end, ns_end = f"rci-{tag}", f"rch{tag}", f"rcn{tag}"
    subnet = int(tag, 16) % 16000  # a /30 of 10.231.0.0/16 per namespace
    host_ip = f"10.231.{subnet // 64}.{subnet % 64 * 4 + 1}"
    ns_ip = f"10.231.{subnet // 64}.{subnet % 64 * 4 + 2}"
    ip("netns", "add", name)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", name)
        ip("addr", "add", f"{host_ip}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_end)
        ip("netns", "exec", name, "ip", "link", "set", ns_end, "up")
        yield NetNs(name, host_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30,
                       check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                       check=False)


@pytest.fixture
def namespaces() -> Iterator[dict[str, NetNs | None]]:
    """One per worker host; asked for before the servers, so it is torn down after them."""
    with ExitStack() as stack:
        yield {node: stack.enter_context(network_namespace()) for node in ("b", "c")}


@pytest.fixture
def hosts(namespaces: dict[str, NetNs | None], make_redis: MakeRedis, make_server: MakeServer,
          tmp_path: Path) -> Iterator[Hosts]:
    binds = tuple(ns.host_ip for ns in namespaces.values() if ns is not None)
    rs = make_redis(binds=binds)
    # With namespaces, every address: the test reaches it on 127.0.0.1, the workers on a veth's.
    api_env = {**COMMON, **({"REMOTE_CI_HOST": "0.0.0.0"} if binds else {})}
    api = make_server("api", env=api_env, redis_url=rs.url, base=tmp_path / "A")
    workers = {}
    for node, ns in namespaces.items():
        address = "127.0.0.1" if ns is None else ns.host_ip
        workers[node] = make_server(
            "worker", redis_url=f"redis://{address}:{rs.port}/0", base=tmp_path / node.upper(),
            env={**COMMON, "REMOTE_CI_API_URL": f"http://{address}:{api.port}",
                 "REMOTE_CI_NODE_NAME": node},
            wrapper=[] if ns is None else ["ip", "netns", "exec", ns.name])
    wait_until(lambda: api.request("GET", "/api/stats").json()["workers"] == 4, 30,
               "the executors of both worker hosts")
    dirs = [api.data_dir, api.work_dir, *(w.data_dir for w in workers.values()),
            *(w.work_dir for w in workers.values())]
    assert len(set(dirs)) == len(dirs)  # nothing shared
    if binds:
        own = os.readlink("/proc/self/ns/net")
        assert all(os.readlink(f"/proc/{w.proc.pid}/ns/net") != own
                   for w in workers.values() if w.proc is not None)
    for server in (api, *workers.values()):  # rsync jobs use the workspace of the worker
        server.make_workspace("proj")       # that runs them; the API checks the name only
    yield Hosts(api, workers, api_env)


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


def test_a_job_pinned_to_c_uses_the_workspace_only_c_has(hosts: Hosts) -> None:
    hosts.workers["c"].make_workspace("only-c", {"who": "host-c\n"})
    resp = hosts.api.request("POST", "/api/jobs/rsync",
                             {"workspace": "only-c", "script": "cat who", "host": "c"})
    assert resp.status == 202, resp.body
    job_id = str(resp.json()["id"])
    final = hosts.api.wait_final(job_id, 60)
    assert final["status"] == "success" and str(final["worker"]).startswith("c:")
    assert hosts.api.log(job_id).startswith(b"host-c\n")


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
    api = make_server("api", env=hosts.api_env, redis_url=redis_url, base=base, port=port)
    final = api.wait_final(job_id, 60)
    assert final["status"] == "success"
    body = api.log(job_id)
    expected = "".join(f"line-{i}\n" for i in range(1, 41)).encode()
    assert body[:len(expected)] == expected, body[:2000]
    assert body[len(expected):].startswith(b"[remote-ci] success")
    worker = hosts.worker_of(final)
    assert "cannot reach the API" in worker.output()


def test_the_log_survives_a_cut_link_mid_job(hosts: Hosts,
                                             namespaces: dict[str, NetNs | None]) -> None:
    """The worker's link (to the API and Redis alike) goes down for 2 s while the job writes."""
    if any(ns is None for ns in namespaces.values()):
        pytest.skip("cutting a worker's link needs its own network namespace (root, iproute2)")
    job = hosts.api.submit("for i in $(seq 1 40); do echo line-$i; sleep 0.1; done")
    job_id = str(job["id"])
    wait_until(lambda: b"line-3\n" in hosts.api.log(job_id), 30, "the first lines on the API")
    node = str(hosts.api.job(job_id)["worker"]).split(":")[0]
    ns = namespaces[node]
    assert ns is not None
    link = f"rcn{ns.name.removeprefix('rci-')}"
    ip("netns", "exec", ns.name, "ip", "link", "set", link, "down")
    try:
        time.sleep(2)  # the outage's length: the job goes on writing, nothing reaches the API
        assert hosts.api.job(job_id)["status"] == "running"
    finally:
        ip("netns", "exec", ns.name, "ip", "link", "set", link, "up")
    final = hosts.api.wait_final(job_id, 60)
    assert final["status"] == "success"
    body = hosts.api.log(job_id)
    expected = "".join(f"line-{i}\n" for i in range(1, 41)).encode()
    assert body[:len(expected)] == expected, body[:2000]
    assert body[len(expected):].startswith(b"[remote-ci] success")


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


# --- a proxy with a small body limit -----------------------------------------------------------

class _SmallBodyProxy(BaseHTTPRequestHandler):
    """Forwards to the API, but answers 413 to bodies over LIMIT, as a proxy's
    `client_max_body_size` would."""

    LIMIT = 300 * 1024
    upstream_port = 0

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.LIMIT:
            self.send_response(413)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_a_proxy_refusing_large_bodies_makes_the_pieces_smaller_not_the_log(
        make_redis: MakeRedis, make_server: MakeServer, tmp_path: Path) -> None:
    rs = make_redis()
    api = make_server("api", env=COMMON, redis_url=rs.url, base=tmp_path / "A")
    handler = type("Proxy", (_SmallBodyProxy,), {"upstream_port": api.port})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        worker = make_server("worker", redis_url=rs.url, base=tmp_path / "B",
                             env={**COMMON, "REMOTE_CI_NODE_NAME": "b",
                                  "REMOTE_CI_API_URL": f"http://127.0.0.1:{proxy.server_port}"})
        worker.make_workspace("proj")
        api.make_workspace("proj")
        job = api.submit("seq 1 600000; mkdir out; head -c 1000000 /dev/zero > out/z.bin",
                         artifacts=["out/*"])  # a ~4 MB log, a 1 MB artifact
        final = api.wait_final(str(job["id"]), 60)
        assert final["status"] == "success"
        assert api.log(str(job["id"])).startswith(expected_seq(1, 600000))
        kept = api.request("GET", f"/api/jobs/{job['id']}/artifacts/out/z.bin")
        assert kept.body == bytes(1000000)
        assert "refused a log piece as too large" in worker.output()
    finally:
        proxy.shutdown()
        proxy.server_close()
