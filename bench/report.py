"""The table of figures (ours, the peer, the target, pass/fail) and bench/README.md's numbers."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The issue's figures for the reference, used when the peer is skipped (--skip-peer).
ISSUE_REFERENCE = {"latency": 12.4, "throughput": 95.0, "api": 900.0, "stats": 2060.0,
                   "memory": 266.0, "memory_pss": 168.0, "orphans": 2}
BEGIN, END = "<!-- numbers:begin -->", "<!-- numbers:end -->"


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\S+)", redis)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "nproc": os.cpu_count(),
            "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "redis": m.group(1) if m else "?"}


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v}{unit}"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "**FAIL**")


Row = tuple[str, str, str, str, str]


def _rows(ours: dict[str, Any], peer: dict[str, Any] | None) -> list[Row]:
    def ref(key: str, value: Any) -> tuple[Any, str]:
        """The peer's figure from this run, or the issue's when the peer was skipped."""
        if peer is not None and value is not None:
            return value, ""
        return ISSUE_REFERENCE.get(key), " (issue)"

    def check(v: Any, f: Callable[[Any], bool]) -> bool | None:
        return None if v is None else bool(f(v))

    rows: list[Row] = []

    lat = _get(ours, "latency", "start_latency_ms", "p50")
    floor = _get(ours, "latency", "floor", "p50_ms")
    r, src = ref("latency", _get(peer or {}, "latency", "start_latency_ms", "p50"))
    if "latency" in ours:
        ok = check(lat, lambda v: v <= (r or 0) / 3 and floor is not None and v <= floor + 1.5)
        rows.append(("start latency p50 (POST → first instruction)", _fmt(lat, " ms", 2),
                     _fmt(r, " ms", 2) + src,
                     f"≤ ref/3 and ≤ floor + 1.5 = {_fmt(floor, ' ms', 2)} + 1.5", _verdict(ok)))
    if "throughput" in ours:
        tp = _get(ours, "throughput", "completed_jobs_per_s")
        r, src = ref("throughput", _get(peer or {}, "throughput", "completed_jobs_per_s"))
        rows.append(("throughput, 300 × `true`", _fmt(tp, " jobs/s"), _fmt(r, " jobs/s") + src,
                     "≥ 3× ref", _verdict(check(tp, lambda v: v >= 3 * (r or 0)))))
    if "api" in ours:
        rps, p99 = _get(ours, "api", "requests_per_s"), _get(ours, "api", "latency_p99_ms")
        r, src = ref("api", _get(peer or {}, "api", "requests_per_s"))
        rp99 = _get(peer or {}, "api", "latency_p99_ms")
        rows.append(("GET /api/jobs/<id>, wrk -t2 -c16", f"{_fmt(rps, ' req/s', 0)}, p99 "
                     f"{_fmt(p99, ' ms', 2)}", f"{_fmt(r, ' req/s', 0)}, p99 {_fmt(rp99, ' ms', 2)}"
                     + src, "≥ 2× ref, p99 ≤ 10 ms",
                     _verdict(check(rps, lambda v: v >= 2 * (r or 0) and (p99 or 99) <= 10))))
    if "stats" in ours:
        st = _get(ours, "stats", "p50_ms")
        r, src = ref("stats", _get(peer or {}, "stats", "p50_ms"))
        rows.append(("GET /api/stats p50", _fmt(st, " ms", 2), _fmt(r, " ms", 0) + src, "≤ 5 ms",
                     _verdict(check(st, lambda v: v <= 5))))
    if "logs" in ours:
        lr = _get(ours, "logs", "ratio_server_over_local")
        pr = _get(peer or {}, "logs", "ratio_server_over_local")
        runs = _get(ours, "logs", "all_ratios")
        rows.append((f"200 MB of output: POST → final / local `> file` (median of {len(runs or [1])})",
                     _fmt(lr, "×", 2) + (f" (runs {', '.join(map(str, runs))})" if runs else ""),
                     _fmt(pr, "×", 2), "≤ 1.1×", _verdict(check(lr, lambda v: v <= 1.1))))
    if "memory" in ours:
        # PSS: pages the forked processes share count once, as they cost the machine once.
        pss, rss = _get(ours, "memory", "pss_mb"), _get(ours, "memory", "rss_mb")
        r, src = ref("memory_pss", _get(peer or {}, "memory", "pss_mb"))
        rows.append(("idle PSS of the whole server tree (redis excluded)",
                     f"{_fmt(pss, ' MB')} (RSS {_fmt(rss, ' MB')})", _fmt(r, " MB") + src,
                     "≤ ref/2", _verdict(check(pss, lambda v: r is not None and v <= r / 2))))
    if "upload" in ours:
        up = ours["upload"]
        growth, rate, disk = (up.get("api_peak_rss_growth_mb"), up.get("upload_mb_s"),
                              up.get("disk_write_mb_s"))
        ok = None if growth is None else growth <= 30 and rate >= 0.8 * disk
        runs = ", ".join(_fmt(r, "", 0) for r in up.get("runs_upload_mb_s", []))
        disks = ", ".join(_fmt(d, "", 0) for d in up.get("runs_disk_write_mb_s", []))
        rows.append(("500 MB upload: API peak RSS growth; POST → running (median of 3)",
                     f"{_fmt(growth, ' MB')}; {_fmt(rate, ' MB/s', 0)} "
                     f"({_fmt(up.get('post_to_running_s'), ' s', 2)}; runs {runs}); a bare "
                     f"socket → file receiver: {_fmt(up.get('bare_receive_mb_s'), ' MB/s', 0)}",
                     "not measured",
                     f"≤ 30 MB; ≥ 80% of disk {_fmt(disk, ' MB/s', 0)} (synced `dd`, runs {disks})",
                     _verdict(ok) if "error" not in up else "**FAIL** " + str(up["error"])[:60]))
    if "rsync" in ours:
        rr = _get(ours, "rsync", "ratio")
        rows.append(("rsync private copy, 20,000 files / 300 MB, vs `cp -a`",
                     f"{_fmt(rr, '×', 2)} ({_fmt(_get(ours, 'rsync', 'server_copy_s'), ' s', 2)} "
                     f"vs {_fmt(_get(ours, 'rsync', 'cp_a_s'), ' s', 2)})",
                     _fmt(_get(peer or {}, "rsync", "ratio"), "×", 2), "≤ 1.1×",
                     _verdict(check(rr, lambda v: v <= 1.1))))
    if "orphans" in ours:
        orph = _get(ours, "orphans", "orphans_after_2s")
        r, src = ref("orphans", _get(peer or {}, "orphans", "orphans_after_2s"))
        rows.append(("processes left after a timed-out job", _fmt(orph), _fmt(r) + src, "0",
                     _verdict(check(orph, lambda v: v == 0))))
    if "waiters" in ours:
        w = ours["waiters"]
        bad = (w.get("false_failures"), w.get("wrong_logs"))
        rows.append(("200 clients waiting, concurrency 2: false failures, wrong logs; wall vs "
                     "200 × 1 s / 2; API threads, RSS, CPU while they wait",
                     f"{_fmt(bad[0])}, {_fmt(bad[1])}; {_fmt(w.get('wall_s'), ' s')} "
                     f"({_fmt(w.get('wall_over_ideal'), '×', 3)}); {_fmt(w.get('api_threads_max'))} "
                     f"threads, {_fmt(w.get('api_rss_mb_max'), ' MB')}, "
                     f"{_fmt(w.get('api_cpu_pct'), '%')} CPU",
                     "not measured", "0, 0", _verdict(check(bad, lambda v: v == (0, 0)))
                     if "error" not in w else "**FAIL** " + str(w["error"])[:60]))
    if "upload_formats" in ours:
        f = ours["upload_formats"]
        rows.append(("packing 20,000 files / 300 MB (random bytes): seconds, × `tar cf - \\| cat`",
                     "; ".join(f"{name} {_fmt(_get(f, name, 'median_s'), ' s', 2)} "
                               f"({_fmt(_get(f, name, 'over_tar'), '×', 2)})"
                               for name in ("tar_to_devnull", "tar_through_pipe", "bash_zstd", "python_zstd",
                                            "bash_gzip", "python_gzip")),
                     "not measured", "zstd ≪ gzip", "—"))
    return rows


def _growth_rows(g: dict[str, Any]) -> list[str]:
    if not g or "error" in g:
        return [f"growth: {g.get('error') if g else 'not run'}"]
    cols = ("empty", "queued_1000", "finished_10000")
    keys = [("start_latency_ms", "start latency p50 (ms)"), ("post_p50_ms", "POST p50 (ms)"),
            ("get_job_ms", "GET /api/jobs/<id> p50 (ms)"), ("list50_ms", "GET /api/jobs?limit=50 (ms)"),
            ("list_status_success_ms", "… ?status=success (ms)"),
            ("list_status_failed_ms", "… ?status=failed, rare (ms)"),
            ("list_mode_rsync_status_queued_ms", "… ?mode=rsync&status=queued (ms)"),
            ("stats_ms", "GET /api/stats p50 (ms)"), ("memory_rss_mb", "RSS, redis excluded (MB)")]
    lines = ["| figure | empty | 1,000 queued | 10,000 finished |", "|---|---|---|---|"]
    for key, label in keys:
        lines.append(f"| {label} | " + " | ".join(_fmt(_get(g, c, key), "", 2) for c in cols) + " |")
    detail = _get(g, "finished_10000", "memory_detail") or []
    lines.append("")
    lines.append(f"Throughput over the 10,000 jobs: {_fmt(g.get('throughput_10000_jobs_per_s'))} "
                 f"jobs/s; draining 1,000 queued: {_fmt(_get(g, 'queued_1000', 'drain_jobs_per_s'))} "
                 "jobs/s. Memory per process after 10,000 jobs: "
                 + ", ".join(f"{p['comm']} {p['rss_mb']} MB" for p in detail) + ".")
    return lines


def _pages_rows(pg: dict[str, Any]) -> list[str]:
    if not pg or "error" in pg:
        return [f"pages: {pg.get('error') if pg else 'not run'}"]
    lines = ["| page | p50 (ms) | p90 (ms) | target | verdict |", "|---|---|---|---|---|"]
    for key, value in pg.items():
        if isinstance(value, dict) and "p50_ms" in value:
            lines.append(f"| `GET {value['path']}` ({key.replace('_', ' ')}) | "
                         f"{_fmt(value['p50_ms'], '', 2)} | {_fmt(value['p90_ms'], '', 2)} | "
                         f"≤ 50 ms | {_verdict(value['p50_ms'] <= 50)} |")
    return lines


def table(results: dict[str, Any]) -> str:
    ours, peer = results.get("ours", {}), results.get("peer")
    lines = ["| scenario | ours | reference (celery_seed) | target | verdict |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(ours, peer)]
    if "growth" in ours:
        lines += ["", "Growth (ours):", "", *_growth_rows(ours["growth"])]
    if "pages" in ours:
        stored = ours["pages"].get("stored", "?")
        lines += ["", f"Pages (ours, {stored:,} jobs stored):" if isinstance(stored, int)
                  else "Pages (ours):", "", *_pages_rows(ours["pages"])]
    meta = results.get("meta", {})
    lines += ["", f"Measured {meta.get('date')} on {meta.get('nproc')} × {meta.get('cpu')}, "
                  f"Linux {meta.get('kernel')}, Python {meta.get('python')}, "
                  f"redis {meta.get('redis')}; whole run {meta.get('wall_s')} s"
                  + ("" if meta.get("peer") else "; peer skipped: reference = the issue's figures")
                  + "."]
    return "\n".join(lines)


def write_readme(path: Path, table_md: str, results: dict[str, Any]) -> None:
    """Replace only the numbers section; the prose around it is written by hand."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    path.write_text(f"{head}{BEGIN}\n{table_md}\n{END}{tail}")
