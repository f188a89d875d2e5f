"""Worker hosts by name: what a node name may be, the `host` a submission pins a job to, and the
per-host table that stats and pages show."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from remoteci.errors import ApiError

# A hostname's alphabet: what `hostname` prints fits, and a name is safe in a Redis key, a log
# line and a URL query without quoting. No ':' (executor ids are `<node>:<pid>`).
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NODE_NAME_RULE = ("1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit "
                  "(a worker's REMOTE_CI_NODE_NAME)")


def is_node_name(value: str) -> bool:
    return NODE_NAME_RE.fullmatch(value) is not None


def parse_host(value: Any) -> str | None:
    """The optional `host` of a submission: None (any host) or a valid node name."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"field 'host' must be a string: {NODE_NAME_RULE}")
    if not is_node_name(value):
        raise ApiError(400, f"field 'host' {value[:140]!r} is not a node name; it must be "
                            f"{NODE_NAME_RULE}")
    return value


def node_of(executor_id: str) -> str:
    """The host part of an executor id `<node>:<pid>` ('' for an id without one)."""
    return executor_id.rpartition(":")[0]


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
