"""The per-host table of stats, pages and metrics, and what a job pinned to a host waits for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from remoteci.hosts.names import node_of


def host_table(executors: Iterable[Mapping[str, Any]], running_workers: Iterable[str | None],
               queued: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """{host: {executors, running, queued}}: live executors from their heartbeats, running jobs
    by the executor that claimed them, and the jobs pinned to each host still waiting (a host
    with queued jobs and no executors is one the jobs wait for)."""
    table: dict[str, dict[str, int]] = {}

    def row(host: str) -> dict[str, int]:
        return table.setdefault(host, {"executors": 0, "running": 0, "queued": 0})

    for info in executors:
        host = info.get("host")
        if isinstance(host, str) and host:
            row(host)["executors"] += 1
    for worker in running_workers:
        host = node_of(worker or "")
        if host:
            row(host)["running"] += 1
    for host, count in queued.items():
        if count > 0:
            row(host)["queued"] += count
    return dict(sorted(table.items()))


def waiting_note(job: Mapping[str, Any], live_hosts: Iterable[str]) -> str | None:
    """What a queued job pinned to a host with no live executor waits for, in words; else None."""
    host = job.get("host")
    if job.get("status") != "queued" or not host or host in set(live_hosts):
        return None
    return (f"host {host!r}, which has no live executor now; the job starts once a worker "
            f"with REMOTE_CI_NODE_NAME={host} takes it")
