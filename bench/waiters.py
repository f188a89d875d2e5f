"""Scenarios for many waiting CI steps and for upload packing: `waiters` and `upload_formats`.

`waiters`: 200 clients (half Python, half bash) submit at once to one server with concurrency 2
and wait on their jobs (`sleep 1; echo $i; exit $((i % 3))`); every client must exit with its
script's code and print its log byte for byte. While they wait, the API process is sampled
(threads, RSS, CPU); the wall time is set against the ideal, 200 x 1 s / 2.

`upload_formats`: the client's wall time to pack a 300 MB / 20,000-file tree as tar.gz and as
tar.zst (the two clients' own pipelines, into /dev/null) against `tar cf - DIR > /dev/null`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from client import Api
from scenarios import big_workspace, log
from servers import REPO, TOKEN, Server

WAITERS = 200
CLIENT_DEADLINE = 900.0  # seconds; a client still running by then is killed and counted failed
_LOG_REQUESTS = re.compile(r'^remoteci_http_requests_total\{route="/api/jobs/\{id\}/logs",'
                           r'method="GET",code="(\d+)"\} (\d+)', re.M)


def _proc_sample(pid: int) -> tuple[int, int, float]:
    """(threads, RSS in KB, CPU seconds so far) of one process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(status["Threads"]), int(status["VmRSS"].split()[0]),
            (int(fields[11]) + int(fields[12])) / ticks)


def _log_requests(api: Api) -> dict[str, int]:
    status, data = api.request("GET", "/metrics")
    if status != 200:
        return {}
    return {code: int(n) for code, n in _LOG_REQUESTS.findall(data.decode())}


def waiters(server: Server, count: int = WAITERS) -> dict[str, Any]:
    api = Api(server.url)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REMOTE_CI_")},
           "REMOTE_CI_TOKEN": TOKEN, "REMOTE_CI_SERVER": server.url}
    kinds = {"py": [sys.executable, str(REPO / "remoteci.py"), "submit"],
             "sh": ["bash", str(REPO / "ci" / "remote-ci.sh")]}
    requests_before = _log_requests(api)
    samples: list[tuple[float, int, int, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append((time.monotonic(), *_proc_sample(server.api_pid)))
            except OSError:
                return
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    procs: list[tuple[int, str, subprocess.Popen[bytes]]] = []
    started = time.monotonic()
    sampler.start()
    try:
        for i in range(count):
            kind = ("py", "sh")[i % 2]
            script = f"sleep 1; echo {i}; exit $(({i} % 3))"
            procs.append((i, kind, subprocess.Popen(
                [*kinds[kind], "--workspace", "tiny", "--name", f"waiter-{i}", "--script", script],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        submitted = time.monotonic() - started
        outputs: dict[int, tuple[int, bytes, bytes]] = {}
        deadline = started + CLIENT_DEADLINE
        for i, _, proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            outputs[i] = (proc.returncode, out, err)
        wall = time.monotonic() - started
    finally:
        stop.set()
        sampler.join(5)
        for _, _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    requests_after = _log_requests(api)
    ids = {job["name"]: job["id"] for job in api.json("GET", "/api/jobs?limit=500")["jobs"]}
    false_failures, wrong_logs, notes = 0, 0, []
    for i, (code, out, err) in outputs.items():
        job_id = ids.get(f"waiter-{i}")
        if code != i % 3:
            false_failures += 1
            notes.append(f"client {i}: exit {code}: {err.decode(errors='replace')[-300:]}")
        if job_id is None or out != api.logs(job_id) or not out.startswith(f"{i}\n".encode()):
            wrong_logs += 1
            notes.append(f"client {i}: log differs")
    api.close()
    waiting = [s for s in samples if s[0] - started <= wall]
    cpu_s = waiting[-1][3] - waiting[0][3] if len(waiting) > 1 else 0.0
    span = waiting[-1][0] - waiting[0][0] if len(waiting) > 1 else 1.0
    polls = {code: requests_after.get(code, 0) - requests_before.get(code, 0)
             for code in sorted(set(requests_after) | set(requests_before))}
    ideal = count * 1.0 / 2
    return {"scenario": "waiters", "clients": count, "false_failures": false_failures,
            "wrong_logs": wrong_logs, "notes": notes[:10],
            "submitted_s": round(submitted, 1), "wall_s": round(wall, 1), "ideal_s": ideal,
            "wall_over_ideal": round(wall / ideal, 3),
            "api_threads_max": max(s[1] for s in waiting), "api_threads_min": min(s[1] for s in waiting),
            "api_rss_mb_max": round(max(s[2] for s in waiting) / 1024, 1),
            "api_rss_mb_first": round(waiting[0][2] / 1024, 1),
            "api_cpu_s": round(cpu_s, 1), "api_cpu_pct": round(100 * cpu_s / span, 1),
            "log_requests_by_code": polls,
            "log_requests_per_s": round(sum(polls.values()) / wall, 1)}


def _pack_seconds(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        times.append(round(time.monotonic() - t, 2))
    return times


_PY_PACK = ("import sys; sys.path.insert(0, sys.argv[3]); from remoteci import client; "
            "out = sys.stdout.buffer\n"
            "for chunk in client.tar_stream(sys.argv[1], False, sys.argv[2]): out.write(chunk)")


def upload_formats(root: Path, runs: int = 3) -> dict[str, Any]:
    """Packing only (the network and the server are not in it): what the client's CPU costs."""
    tree = str(big_workspace(root))
    subprocess.run(["tar", "cf", "-", "-C", tree, "."], check=True, stdout=subprocess.DEVNULL)  # warm cache
    commands = {
        # GNU tar reads no file data when its output is /dev/null itself: this is the literal
        # `tar cf - DIR > /dev/null`, the next one a tar that really reads the tree.
        "tar_to_devnull": ["tar", "cf", "-", "-C", tree, "."],
        "tar_through_pipe": ["bash", "-c", 'tar -C "$1" -cf - . | cat', "pack", tree],
        "bash_gzip": ["tar", "-C", tree, "-czf", "-", "."],
        "bash_zstd": ["bash", "-c", 'tar -C "$1" -cf - . | zstd -T0 -q -c', "pack", tree],
        "python_gzip": [sys.executable, "-c", _PY_PACK, tree, "gzip", str(REPO)],
        "python_zstd": [sys.executable, "-c", _PY_PACK, tree, "zstd", str(REPO)],
    }
    out: dict[str, Any] = {"scenario": "upload_formats", "files": 20_000, "bytes": 300_000_000,
                           "cores": os.cpu_count(), "zstd": shutil.which("zstd") is not None}
    for name, argv in commands.items():
        log(f"upload_formats: {name}")
        times = _pack_seconds(argv, runs)
        out[name] = {"median_s": sorted(times)[len(times) // 2], "runs_s": times}
    base = out["tar_through_pipe"]["median_s"]
    for name in commands:
        out[name]["over_tar"] = round(out[name]["median_s"] / base, 2) if base else None
    return out
