"""`python bench/waitress_switch.py`: the server before and after it kept to waitress' public API.

The "before" tree is the commit before the one that deleted remoteci/spool.py (waitress'
parser, buffer, channel, task and dispatcher subclassed), exported with `git archive` into a
temp dir; "after" is this checkout. Each is started on its embedded default and measured the
same way, one after the other in this run: idle memory (PSS and RSS of the whole server tree,
redis excluded), the API process' CPU per GET /api/jobs/<id> on one keep-alive connection,
`wrk -t2 -c16` on the same URL (the shared harness), and three raw 500 MB uploads (the API's
peak RSS growth and POST → running, against a synced dd and a bare receiver on the same disk).
Prints a table; the README keeps it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_bench
import scenarios
import servers
from redis_switch import before_and_after, before_deleting, get_cpu


def measure(label: str, repo: Path, ws: Path) -> dict[str, Any]:
    server = servers.start_ours(ws, label=label, repo=repo)
    try:
        pids = [a for pid in server.root_pids for a in ("--pid", str(pid))]
        out: dict[str, Any] = {"memory": peer_bench.run(server, "memory", *pids, "--settle", "1")}
        out["get"] = get_cpu(server)
        out["wrk"] = peer_bench.run(server, "api", "--duration", "10", "--connections", "16",
                                    "--threads", "2")
        out["upload"] = scenarios.upload(server, runs=3)
        return out
    finally:
        servers.cleanup(server)


def row(label: str, r: dict[str, Any]) -> str:
    mem, get, wrk, up = r["memory"], r["get"], r["wrk"], r["upload"]
    rps = wrk.get("requests_per_s", wrk.get("error", "?"))
    p99 = wrk.get("latency_p99_ms", "?")
    return (f"| {label} | {mem['pss_mb']} / {mem['rss_mb']} MB | {get['cpu_us_per_request']} µs "
            f"({get['req_per_s']:,} req/s) | {rps} req/s, p99 {p99} ms | "
            f"{up.get('api_peak_rss_growth_mb')} MB | {up.get('upload_mb_s')} MB/s "
            f"(runs {up.get('runs_upload_mb_s')}) | {up.get('disk_write_mb_s')} MB/s "
            f"(runs {up.get('runs_disk_write_mb_s')}) |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="git revision of the 'before' tree (default: the commit "
                                     "before spool.py was deleted)")
    args = ap.parse_args()
    rev = args.before or before_deleting("remoteci/spool.py")
    results = before_and_after(rev, measure)
    print("| tree | idle PSS / RSS | GET job, one connection: API CPU per request | "
          "GET job, wrk -t2 -c16 | 500 MB upload: API peak RSS growth | upload POST → running "
          "| synced dd |")
    print("|---|---|---|---|---|---|---|")
    print(row(f"before (`{rev[:10]}`, waitress internals subclassed)", results["before"]))
    print(row("after (waitress' public API)", results["after"]))
    (Path(__file__).resolve().parent / "last-waitress-switch.json").write_text(
        json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
