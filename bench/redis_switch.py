"""`python bench/redis_switch.py`: the server before and after it moved to redis-py, in one run.

The "before" tree is the commit before the one that deleted remoteci/redis_client.py (the
home-made client on hiredis), exported with `git archive` into a temp dir; "after" is this
checkout. Each is started on its embedded default and measured the same way: memory (RSS and
PSS of the whole server tree, redis excluded), CPU of the API process per GET /api/jobs/<id>,
start latency and throughput (the shared harness). Prints a table; the README keeps it.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_bench
import servers

GETS = 3000


def before_deleting(path: str) -> str:
    """The commit just before the one that deleted `path`: the "before" tree of a switch."""
    deleted = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--diff-filter=D", "--", path],
        cwd=servers.REPO, capture_output=True, text=True, check=True).stdout.strip()
    if not deleted:
        raise SystemExit(f"no commit deletes {path}; give --before REV")
    return f"{deleted}^"


def export(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "archive", "--format=tar", rev], cwd=servers.REPO,
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def get_cpu(server: servers.Server, n: int = GETS) -> dict[str, Any]:
    """CPU of the API process per GET /api/jobs/<id> of a finished job, one keep-alive client."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {servers.TOKEN}", "Content-Type": "application/json"}
    conn.request("POST", "/api/jobs/rsync", json.dumps({"workspace": "tiny", "script": "true"}),
                 headers)
    job_id = json.loads(conn.getresponse().read())["id"]
    while True:
        conn.request("GET", f"/api/jobs/{job_id}", headers=headers)
        if json.loads(conn.getresponse().read())["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    ticks, started = cpu_ticks(server.api_pid), time.perf_counter()
    for _ in range(n):
        conn.request("GET", f"/api/jobs/{job_id}", headers=headers)
        conn.getresponse().read()
    wall = time.perf_counter() - started
    cpu = (cpu_ticks(server.api_pid) - ticks) / os.sysconf("SC_CLK_TCK")
    conn.close()
    return {"n": n, "cpu_us_per_request": round(cpu / n * 1e6), "req_per_s": round(n / wall)}


def measure(label: str, repo: Path, ws: Path) -> dict[str, Any]:
    server = servers.start_ours(ws, label=label, repo=repo)
    try:
        pids = [a for pid in server.root_pids for a in ("--pid", str(pid))]
        out: dict[str, Any] = {"memory": peer_bench.run(server, "memory", *pids, "--settle", "1")}
        out["get"] = get_cpu(server)
        out["latency"] = peer_bench.run(server, "latency", "-n", "40")
        out["throughput"] = peer_bench.run(server, "throughput", "-n", "300")
        out["memory_after"] = peer_bench.run(server, "memory", *pids, "--settle", "1")
        return out
    finally:
        servers.cleanup(server)


def row(label: str, r: dict[str, Any]) -> str:
    mem, after = r["memory"], r["memory_after"]
    return (f"| {label} | {mem['pss_mb']} MB / {mem['rss_mb']} MB | "
            f"{after['pss_mb']} MB / {after['rss_mb']} MB | {r['get']['cpu_us_per_request']} µs "
            f"({r['get']['req_per_s']:,} req/s) | {r['latency']['start_latency_ms']['p50']} ms | "
            f"{r['throughput']['completed_jobs_per_s']} jobs/s |")


def before_and_after(rev: str, measure: Callable[[str, Path, Path], dict[str, Any]]
                     ) -> dict[str, dict[str, Any]]:
    """`measure` run on the tree of `rev` and on this checkout, with one tiny workspace."""
    ws = Path(tempfile.gettempdir()) / "rci-bench-ws"
    (ws / "tiny").mkdir(parents=True, exist_ok=True)
    (ws / "tiny" / "README.txt").write_text("tiny benchmark workspace\n")
    old = Path(tempfile.mkdtemp(prefix="rci-bench-before-"))
    try:
        return {"before": measure("before", export(rev, old), ws),
                "after": measure("after", servers.REPO, ws)}
    finally:
        shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="git revision of the 'before' tree (default: the commit "
                                     "before redis_client.py was deleted)")
    args = ap.parse_args()
    rev = args.before or before_deleting("remoteci/redis_client.py")
    results = before_and_after(rev, measure)
    print("| tree | idle PSS / RSS | after the runs PSS / RSS | GET /api/jobs/<id> CPU of the API "
          "| start latency p50 | throughput, 300 × `true` |")
    print("|---|---|---|---|---|---|")
    print(row(f"before (`{rev}`, own client on hiredis)", results["before"]))
    print(row("after (redis-py + hiredis)", results["after"]))
    (Path(__file__).resolve().parent / "last-redis-switch.json").write_text(
        json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
