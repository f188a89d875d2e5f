"""Log shipping: a 200 MB log from a worker on another host against one written in place.

Two setups, each on a redis-server of its own, on 127.0.0.1:
  local   `serve`: the executors write the log into the API's own data dir
  remote  `api` with data dir A and a `worker` with data and work dirs B and REMOTE_CI_API_URL:
          the worker writes its log to B and ships it to the API while the job runs
Figures: wall time from the POST until the job is seen final (median of the runs, setups
alternating), remote/local, for `yes ... | head -c 200MB` (burst: as fast as the job can write)
and for the same bytes in 100 pieces 0.1 s apart (paced, as builds print); and follow latency, from a line's
timestamp (written by the job) to the moment a `?follow=1` reader of the API receives it, p50
and p99 over 300 lines written 20 ms apart.

    .venv/bin/python bench/remote_logs.py [--runs 3] [--bytes 200000000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import TOKEN, free_port

REPO = Path(__file__).resolve().parent.parent
LINE = "remote-ci log shipping benchmark: a line of plain text, 64 bytes"
FOLLOW_LINES = 300


class Proc:
    """One `remoteci.py` command or redis-server, stopped by its own pid."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its tree
                self.proc.wait(10)
        self.log.close()


def request(port: int, method: str, path: str, body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, data, {"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw.startswith(b"{") else raw
    finally:
        conn.close()


def wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


@contextmanager
def setup(kind: str, root: Path) -> Iterator[int]:
    """A running setup; yields the API's port."""
    base = root / kind
    base.mkdir()
    work_parent = Path(tempfile.mkdtemp(prefix=f"rci-bench-{kind}-"))
    work_parent.chmod(0o711)  # jobs run as their own uids when we are root
    redis_port = free_port()
    procs = [Proc(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                   "--appendonly", "no", "--dir", str(base)], dict(os.environ), base / "redis.log")]
    common = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "REMOTE_CI_TOKEN": TOKEN,
              "REMOTE_CI_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
              "REMOTE_CI_MAX_LOG_MB": "4096", "REMOTE_CI_CONCURRENCY": "1"}
    port = free_port()
    api_env = {**common, "REMOTE_CI_PORT": str(port), "REMOTE_CI_DATA_DIR": str(base / "A"),
               "REMOTE_CI_WORK_DIR": str(work_parent / "A"),
               "REMOTE_CI_WORKSPACE_DIR": str(base / "ws")}
    python = [sys.executable, str(REPO / "remoteci.py")]
    try:
        time.sleep(0.3)
        if kind == "local":
            procs.append(Proc([*python, "serve"], api_env, base / "serve.log"))
        else:
            procs.append(Proc([*python, "api"], api_env, base / "api.log"))
            procs.append(Proc([*python, "worker"], {
                **common, "REMOTE_CI_DATA_DIR": str(base / "B"),
                "REMOTE_CI_WORK_DIR": str(work_parent / "B"),
                "REMOTE_CI_WORKSPACE_DIR": str(base / "ws-b"),
                "REMOTE_CI_API_URL": f"http://127.0.0.1:{port}", "REMOTE_CI_NODE_NAME": "b"},
                base / "worker.log"))
        wait_for("the API", lambda: request(port, "GET", "/api/stats")[1]["workers"] >= 1)  # type: ignore[index]
        yield port
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work_parent, ignore_errors=True)


def upload_job(port: int, script: str) -> str:
    """A job needing nothing on either host: a one-file upload."""
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("README")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"\n"))
    from urllib.parse import quote

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", f"/api/jobs/upload?script={quote(script)}&timeout=600", raw.getvalue(),
                 {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/gzip"})
    resp = conn.getresponse()
    job = json.loads(resp.read())
    conn.close()
    assert resp.status == 202, job
    return str(job["id"])


def burst(size: int) -> str:
    """The whole log as fast as the job can write it: the copy cannot keep pace."""
    return f"yes '{LINE}' | head -c {size}"


def paced(size: int) -> str:
    """The same bytes in 100 pieces 0.1 s apart, as a build or test run prints them."""
    return f"for i in $(seq 1 100); do yes '{LINE}' | head -c {size // 100}; sleep 0.1; done"


def big_log(port: int, script: str, size: int) -> float:
    started = time.monotonic()
    job_id = upload_job(port, script)
    while True:
        _, job = request(port, "GET", f"/api/jobs/{job_id}")
        if job["status"] not in ("queued", "running"):  # type: ignore[index]
            took = time.monotonic() - started
            break
        time.sleep(0.01)
    assert job["status"] == "success", job  # type: ignore[index]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("HEAD", f"/api/jobs/{job_id}/logs", headers={"Authorization": f"Bearer {TOKEN}"})
    length = int(conn.getresponse().getheader("X-Log-Offset") or 0)
    conn.close()
    assert length >= size, (length, size)  # the whole log is on the API when the job is final
    return took


def follow_latency(port: int) -> list[float]:
    script = ("python3 -c 'import time\nfor i in range(" + str(FOLLOW_LINES) + "):\n "
              "print(\"%.6f\" % time.time(), flush=True); time.sleep(0.02)'")
    job_id = upload_job(port, script)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/api/jobs/{job_id}/logs?follow=1",
                 headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    latencies, pending = [], b""
    while chunk := resp.read1(65536):
        now = time.time()
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                latencies.append(now - float(line))
            except ValueError:
                pass  # the server's own lines
    conn.close()
    return latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bytes", type=int, default=200_000_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rci-bench-remote-"))
    shapes = {"burst": burst(args.bytes), "paced": paced(args.bytes)}
    times: dict[tuple[str, str], list[float]] = {}
    latency: dict[str, list[float]] = {}
    try:
        with setup("local", root) as local, setup("remote", root) as remote:
            ports = {"local": local, "remote": remote}
            for shape, script in shapes.items():
                for _ in range(args.runs):
                    for kind in ("local", "remote"):
                        took = big_log(ports[kind], script, args.bytes)
                        times.setdefault((shape, kind), []).append(took)
            for kind in ("local", "remote"):
                latency[kind] = follow_latency(ports[kind])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for shape in shapes:
        local_t = statistics.median(times[(shape, "local")])
        remote_t = statistics.median(times[(shape, "remote")])
        print(f"{shape}: {args.bytes / 1e6:.0f} MB log, median of {args.runs}: local "
              f"{local_t:.2f} s, remote {remote_t:.2f} s, remote/local {remote_t / local_t:.2f}x "
              f"(runs: local {[round(t, 2) for t in times[(shape, 'local')]]}, "
              f"remote {[round(t, 2) for t in times[(shape, 'remote')]]})")
    for kind, values in latency.items():
        print(f"follow latency {kind}: p50 {pct(values, 50) * 1000:.1f} ms, "
              f"p99 {pct(values, 99) * 1000:.1f} ms over {len(values)} lines")


if __name__ == "__main__":
    main()
