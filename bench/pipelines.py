"""Pipelines: how long a stage hand-off takes, against a plain job's queue wait.

Starts our server (embedded default, concurrency 2) and runs, one after another, N pipelines
of three stages of two `true` jobs each. A hand-off is the next stage's first start minus the
ending of the stage before (the later of its two jobs' ends), from the jobs' own server-side
`finished_at` and `started_at`: the step that ends the stage and enqueues the next is one Lua
script inside the last job's final transition, so a hand-off is that job's end being written
plus the next executors' take. Compared with the queue wait (`created_at` -> `started_at`) of
N single `true` jobs submitted one at a time to the same idle server, and with the POST of a
pipeline (an rsync source: the workspace is copied at submission).

    .venv/bin/python bench/pipelines.py [-n 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import TOKEN, cleanup, start_ours


def call(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def epoch(iso: object) -> float:
    return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()


def wait_final(url: str, kind: str, item_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = call(f"{url}/api/{kind}/{item_id}")
        if found["status"] in ("success", "failed", "timeout", "error", "cancelled"):
            return found
        time.sleep(0.02)
    raise RuntimeError(f"{kind} {item_id} did not end")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    n = parser.parse_args().n
    root = Path(tempfile.mkdtemp(prefix="rci-bench-pipelines-ws-"))
    (root / "proj").mkdir()
    (root / "proj" / "README").write_text("bench\n")
    server = start_ours(root, label="pipelines")
    try:
        waits = []
        for _ in range(n):
            job = call(f"{server.url}/api/jobs/rsync", {"workspace": "proj", "script": "true"})
            done = wait_final(server.url, "jobs", str(job["id"]))
            waits.append((epoch(done["started_at"]) - epoch(done["created_at"])) * 1000)
        handoffs, posts = [], []
        stage = [{"name": "a", "script": "true"}, {"name": "b", "script": "true"}]
        for i in range(n):
            spec = {"source": {"mode": "rsync", "workspace": "proj"}, "stages": [
                {"name": f"s{k}", "jobs": [{**j, "name": f"{j['name']}{k}"} for j in stage]}
                for k in range(3)]}
            started = time.monotonic()
            created = call(f"{server.url}/api/pipelines", spec)
            posts.append((time.monotonic() - started) * 1000)
            assert wait_final(server.url, "pipelines", str(created["id"]))["status"] == "success", i
            ends = []
            for st in created["stages"]:  # type: ignore[union-attr]
                jobs = [call(f"{server.url}/api/jobs/{j}") for j in st["jobs"]]
                ends.append((min(epoch(j["started_at"]) for j in jobs),
                             max(epoch(j["finished_at"]) for j in jobs)))
            handoffs += [(ends[k + 1][0] - ends[k][1]) * 1000 for k in range(2)]
        print(f"plain job queue wait, idle server: p50 {statistics.median(waits):.2f} ms, "
              f"p90 {pct(waits, 0.9):.2f} ms (n={n})")
        print(f"stage hand-off (last end -> next start): p50 {statistics.median(handoffs):.2f} ms, "
              f"p90 {pct(handoffs, 0.9):.2f} ms (n={len(handoffs)})")
        print(f"POST /api/pipelines (rsync, 1-file workspace, 6 jobs): "
              f"p50 {statistics.median(posts):.2f} ms, p90 {pct(posts, 0.9):.2f} ms")
    finally:
        cleanup(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
