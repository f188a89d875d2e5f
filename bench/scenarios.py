"""Scenarios the shared harness lacks: the spawn floor, stats, upload, the rsync copy, growth."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import peer_bench
from client import Api, p50, pct
from servers import Server

CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/rci-bench-cache"))
TS = re.compile(rb"^\s*(\d{18,20})\s*$", re.M)
UPLOAD_BYTES = 500_000_000
BIG_FILES, BIG_BYTES = 20_000, 300_000_000


def log(*parts: object) -> None:
    import sys

    print("[bench]", *parts, file=sys.stderr, flush=True)


# --- the floor: what starting the script costs without any server ------------------------------

def spawn_floor(n: int = 40) -> dict[str, Any]:
    """POST → first instruction can never beat Python spawning the same `bash -c` directly."""
    lat = []
    for _ in range(n + 2):
        t0 = time.time_ns()
        out = subprocess.run(["bash", "-c", "date +%s%N"], capture_output=True, check=True).stdout
        lat.append((int(out) - t0) / 1e6)
    return {"scenario": "floor", "n": n, "p50_ms": round(p50(lat[2:]), 2)}


# --- GET /api/stats ----------------------------------------------------------------------------

def stats_time(server: Server, n: int) -> dict[str, Any]:
    api = Api(server.url)
    api.timed("GET", "/api/stats", 1)  # warm-up
    ms = api.timed("GET", "/api/stats", n)
    api.close()
    return {"scenario": "stats", "n": n, "p50_ms": round(p50(ms), 2), "max_ms": round(max(ms), 2)}


# --- start latency of one job (own measurement, for the copy and growth scenarios) -------------

def start_latency(api: Api, workspace: str, n: int) -> list[float]:
    """ms from just before the POST to the job's `date +%s%N`."""
    out = []
    for _ in range(n):
        t0 = time.time_ns()
        job_id = api.submit(workspace, "date +%s%N")
        status, _ = api.wait(job_id, poll=0.005)
        m = TS.findall(api.logs(job_id))
        if status != "success" or not m:
            raise RuntimeError(f"latency job {job_id} ended {status}")
        out.append((int(m[-1]) - t0) / 1e6)
    return out


# --- 500 MB upload -----------------------------------------------------------------------------

def _upload_archive() -> Path:
    """A .tar.gz of ~500 MB: random bytes in stored (level 0) deflate blocks, built once."""
    path = CACHE / "upload-500mb.tar.gz"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    blob = CACHE / "blob.bin"
    with open(blob, "wb") as f:
        for _ in range(UPLOAD_BYTES // (1 << 20)):
            f.write(os.urandom(1 << 20))
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=0) as tar:
        tar.add(blob, arcname="blob.bin")
    blob.unlink()
    tmp.rename(path)
    return path


def _rss_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def disk_write_mb_s(directory: Path, size_mb: int = 500) -> float:
    """The disk's write speed on the data dir's filesystem: dd with a final fdatasync."""
    target = directory / "dd-test.bin"
    t = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size_mb}",
                    "conv=fdatasync"], check=True, capture_output=True)
    rate = size_mb * 1.048576 / (time.monotonic() - t)
    target.unlink()
    return round(rate, 1)


def bare_receive_mb_s(archive: Path, directory: Path) -> float:
    """The same POST into a bare receiver (a socket read straight into a file, no HTTP parsing,
    no server): what loopback plus one write of the body cost here, the floor of any upload."""
    size = archive.stat().st_size
    target = directory / "bare-receive.bin"
    listener = socket.create_server(("127.0.0.1", 0))

    def receive() -> None:
        conn, _ = listener.accept()
        with conn, open(target, "wb") as out:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            rest = head.partition(b"\r\n\r\n")[2]
            out.write(rest)
            got, buf = len(rest), bytearray(256 * 1024)
            while got < size:
                n = conn.recv_into(buf)
                if not n:
                    break
                out.write(memoryview(buf)[:n])
                got += n
            out.flush()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=60,
                                      blocksize=1 << 20)
    t = time.monotonic()
    with open(archive, "rb") as body:
        conn.request("POST", "/", body=body, headers={"Content-Length": str(size)})
        conn.getresponse().read()
    elapsed = time.monotonic() - t
    conn.close()
    thread.join(10)
    listener.close()
    target.unlink(missing_ok=True)
    return round(size / 1e6 / elapsed, 1)


def upload(server: Server, runs: int = 3) -> dict[str, Any]:
    """POST a raw 500 MB .tar.gz: the API's peak RSS growth and POST → running vs the disk.

    The VM's disk is erratic (a synced 500 MB write takes 0.35–1.5 s, faster when it rewrites
    blocks just freed), so dd, a bare receiver and the upload alternate `runs` times and the
    medians compare.
    """
    archive = _upload_archive()
    size = archive.stat().st_size
    pid = server.api_pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM, so the peak below is the uploads'
    rss_before = _rss_kb(pid, "VmRSS")
    disk, bare, rates, runs_s = [], [], [], []
    api = Api(server.url)
    try:
        for _ in range(runs):
            disk.append(disk_write_mb_s(server.base))
            bare.append(bare_receive_mb_s(archive, server.base))
            t0 = time.monotonic()
            with open(archive, "rb") as body:
                status, data = api.request("POST", "/api/jobs/upload?script=true", body=body,
                                           headers={"Content-Type": "application/gzip",
                                                    "Content-Length": str(size)})
            if status != 202:
                return {"scenario": "upload", "error": f"HTTP {status}: {data[:300]!r}"}
            job_id = json.loads(data)["id"]
            _, t_running = api.wait(job_id, until={"running", "success", "failed", "error"},
                                    poll=0.005)
            runs_s.append(round(t_running - t0, 3))
            rates.append(round(size / 1e6 / (t_running - t0), 1))
            st, _ = api.wait(job_id, poll=0.02)
    finally:
        api.close()
    peak = _rss_kb(pid, "VmHWM")
    return {"scenario": "upload", "bytes": size, "final_status": st,
            "post_to_running_s": p50(runs_s), "runs_post_to_running_s": runs_s,
            "upload_mb_s": p50(rates), "runs_upload_mb_s": rates,
            "disk_write_mb_s": p50(disk), "runs_disk_write_mb_s": disk,
            "bare_receive_mb_s": p50(bare), "runs_bare_receive_mb_s": bare,
            "api_rss_before_mb": round(rss_before / 1024, 1),
            "api_peak_rss_growth_mb": round((peak - rss_before) / 1024, 1)}


# --- rsync mode: the private copy of a big workspace -------------------------------------------

def big_workspace(root: Path) -> Path:
    """20,000 files, 300 MB, in 200 directories; built once per workspace root."""
    ws = root / "big"
    marker = ws / ".complete"
    if marker.exists():
        return ws
    shutil.rmtree(ws, ignore_errors=True)
    per_file = BIG_BYTES // BIG_FILES
    for d in range(200):
        sub = ws / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(BIG_FILES // 200):
            (sub / f"f{i:03d}.dat").write_bytes(os.urandom(per_file))
    marker.write_text("ok\n")
    return ws


def _cp_seconds(src: Path, scratch_parent: Path, flags: list[str]) -> float:
    dest = Path(tempfile.mkdtemp(dir=scratch_parent))
    t = time.monotonic()
    subprocess.run(["cp", *flags, f"{src}/.", f"{dest}/"], check=True)
    took = time.monotonic() - t
    shutil.rmtree(dest)
    return took


def rsync_copy(server: Server, runs: int = 3) -> dict[str, Any]:
    """Start latency on the big workspace minus on the tiny one = the cost of the private copy.

    Server and `cp -a` runs alternate, each after a `sync`: a copy writes 300 MB, and the
    writeback of one run must not be charged to the next.
    """
    ws = big_workspace(server.workspace_root)
    api = Api(server.url)
    tiny = p50(start_latency(api, "tiny", 10))
    big, local = [], []
    for _ in range(runs):
        subprocess.run(["sync"], check=True)
        big += start_latency(api, "big", 1)
        subprocess.run(["sync"], check=True)
        local.append(_cp_seconds(ws, server.base, ["-a"]))
    api.close()
    copy_s = (p50(big) - tiny) / 1000
    return {"scenario": "rsync_copy", "files": BIG_FILES, "bytes": BIG_BYTES,
            "start_latency_tiny_ms": round(tiny, 1),
            "start_latency_big_ms": [round(x, 1) for x in big],
            "cp_a_runs_s": [round(x, 3) for x in local],
            "server_copy_s": round(copy_s, 3), "cp_a_s": round(p50(local), 3),
            "ratio": round(copy_s / p50(local), 2)}


# --- growth: 1,000 queued, then 10,000 finished ------------------------------------------------

def _reads(api: Api, job_id: str, n: int = 50) -> dict[str, float]:
    return {
        "get_job_ms": round(p50(api.timed("GET", f"/api/jobs/{job_id}", n)), 2),
        "list50_ms": round(p50(api.timed("GET", "/api/jobs?limit=50", n)), 2),
        "list_status_success_ms": round(p50(api.timed("GET", "/api/jobs?status=success&limit=50",
                                                      n // 5)), 2),
        "list_status_failed_ms": round(p50(api.timed("GET", "/api/jobs?status=failed&limit=50",
                                                     n // 5)), 2),
        "list_mode_rsync_status_queued_ms": round(p50(api.timed(
            "GET", "/api/jobs?mode=rsync&status=queued&limit=50", n // 5)), 2),
        "stats_ms": round(p50(api.timed("GET", "/api/stats", n)), 2),
    }


def _submit_many(server: Server, n: int, script: str, threads: int = 4) -> list[float]:
    """Submit n jobs from `threads` connections; return each POST's milliseconds."""
    local = threading.local()
    ms: list[float] = []

    def one(_: int) -> None:
        if not hasattr(local, "api"):
            local.api = Api(server.url)
        t = time.perf_counter()
        local.api.submit("tiny", script)
        ms.append((time.perf_counter() - t) * 1000)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return ms


def _wait_idle(api: Api, max_wait: float = 600) -> None:
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        s = api.json("GET", "/api/stats")
        if s["queued"] == 0 and s["running"] == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("the queue did not drain")


def growth(server: Server, finished: int = 10_000) -> dict[str, Any]:
    """How each figure moves with 1,000 jobs queued and with `finished` jobs stored."""
    api = Api(server.url)
    res: dict[str, Any] = {"scenario": "growth"}
    first = api.submit("tiny", "true")
    api.wait(first)
    res["empty"] = {"start_latency_ms": round(p50(start_latency(api, "tiny", 20)), 2),
                    **_reads(api, first)}
    res["empty"]["memory_rss_mb"] = peer_bench.run(server, "memory", "--pid",
                                                   str(server.root_pids[0]))["rss_mb"]

    # 1,000 queued behind two long jobs that hold both executors
    blockers = [api.submit("tiny", "sleep 300") for _ in range(2)]
    for b in blockers:
        api.wait(b, until={"running"})
    post_ms = _submit_many(server, 1000, "true")
    last = api.submit("tiny", "true")
    res["queued_1000"] = {"post_p50_ms": round(p50(post_ms[-200:]), 2),
                          "post_p99_ms": round(pct(post_ms[-200:], 99), 2), **_reads(api, last)}
    t = time.monotonic()
    for b in blockers:
        api.json("POST", f"/api/jobs/{b}/cancel")
    _wait_idle(api)
    res["queued_1000"]["drain_jobs_per_s"] = round(1001 / (time.monotonic() - t), 1)

    log(f"growth: running {finished} jobs")
    tp = peer_bench.run(server, "throughput", "-n", str(finished), "--threads", "8",
                        timeout=1200)
    res["throughput_10000_jobs_per_s"] = tp.get("completed_jobs_per_s")
    _wait_idle(api)
    res["finished_10000"] = {"start_latency_ms": round(p50(start_latency(api, "tiny", 20)), 2),
                             **_reads(api, last)}
    mem = peer_bench.run(server, "memory", "--pid", str(server.root_pids[0]), "--label",
                         "after-10000", "--settle", "1")
    res["finished_10000"]["memory_rss_mb"] = mem.get("rss_mb")
    res["finished_10000"]["memory_detail"] = [
        {"comm": p["comm"], "rss_mb": round(p["rss_kb"] / 1024, 1)} for p in mem.get("detail", [])]
    api.close()
    return res


# --- pages: server time of each HTML page with 10,000 jobs stored ------------------------------

# A test runner's output: two colours and a bold 256-colour progress mark per line, ~350 KB,
# so the job page renders a full 256 KiB tail of dense escapes (its worst case).
COLOURED_LOG = ("for i in $(seq 5000); do printf '\\033[32mPASSED\\033[0m tests/test_%d.py::"
                "test_case \\033[1;38;5;208m[ 50%%]\\033[0m\\n' $i; done")


def pages(server: Server, stored: int = 10_000, n: int = 40) -> dict[str, Any]:
    """p50/p90 ms of sequential GETs of each page on one keep-alive connection."""
    api = Api(server.url)
    coloured = api.submit("tiny", COLOURED_LOG)
    plain = api.submit("tiny", "echo plain")
    api.wait(coloured)
    api.wait(plain)
    log(f"pages: storing {stored} jobs")
    t = time.monotonic()
    _submit_many(server, stored, "true")
    _wait_idle(api)
    res: dict[str, Any] = {"scenario": "pages", "stored": stored + 2,
                           "store_s": round(time.monotonic() - t, 1), "n": n}
    paths = {"overview": "/", "overview_failed": "/?status=failed",
             "job_coloured_log": f"/jobs/{coloured}", "job_plain": f"/jobs/{plain}",
             "log_chunk": f"/jobs/{coloured}/log?offset=0", "raw_log": f"/jobs/{coloured}/log",
             "charts": "/charts"}
    for name, path in paths.items():
        api.timed("GET", path, 2)  # warm-up
        ms = api.timed("GET", path, n)
        res[name] = {"path": path, "p50_ms": round(p50(ms), 2), "p90_ms": round(pct(ms, 90), 2)}
    api.close()
    return res
