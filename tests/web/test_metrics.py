"""GET /metrics: strict Prometheus text format, and counters that move with real jobs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tests.helpers import Server

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)\}})? (?P<value>\S+)")
_KINDS = ("counter", "gauge", "histogram", "summary", "untyped")

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    kind: str
    help: str = ""
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """The text exposition format, strictly: TYPE before samples, samples only of the declared
    family (with _bucket/_sum/_count for histograms), no duplicates, valid floats."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, Family("untyped")).help = help_text
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in _KINDS, line
            assert not families.get(name, Family("")).samples, f"TYPE after samples: {line}"
            families.setdefault(name, Family(kind)).kind = kind
        else:
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, value = match["name"], float(match["value"])
            labels = tuple(re.findall(_LABEL, match["labels"] or ""))
            family = next((f for base, f in families.items() if name == base or (
                f.kind == "histogram" and name in (f"{base}_bucket", f"{base}_sum",
                                                   f"{base}_count"))), None)
            assert family is not None, f"sample without a TYPE: {line}"
            assert (name, labels) not in family.samples, f"duplicate sample: {line}"
            family.samples[(name, labels)] = value
    return families


def scrape(server: Server) -> dict[str, Family]:
    resp = server.request("GET", "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(resp.body.decode())


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    family = families.get(name) or families[base]
    return family.samples.get((name, tuple(labels.items())), 0.0)


def test_metrics_need_the_token(server: Server) -> None:
    resp = server.request("GET", "/metrics", token=None)
    assert resp.status == 401


def test_metrics_parse_strictly_with_every_family(server: Server) -> None:
    families = scrape(server)
    kinds = {name: f.kind for name, f in families.items()}
    assert kinds == {
        "remoteci_jobs_queued": "gauge", "remoteci_jobs_running": "gauge",
        "remoteci_executors": "gauge", "remoteci_jobs_finished_total": "counter",
        "remoteci_job_duration_seconds": "histogram", "remoteci_job_queue_wait_seconds": "histogram",
        "remoteci_http_requests_total": "counter", "remoteci_history_pending": "gauge",
        "remoteci_history_lag_seconds": "gauge", "remoteci_host_executors": "gauge",
        "remoteci_host_running": "gauge", "remoteci_host_queued": "gauge"}
    assert all(f.help for f in families.values())
    assert value(families, "remoteci_executors") == 2
    host = server.request("GET", "/api/stats").json()["hosts"]
    assert [value(families, "remoteci_host_executors", host=h) for h in host] == [2]


def test_histogram_buckets_are_cumulative_and_end_at_the_count(server: Server) -> None:
    server.wait_final(server.submit("true")["id"])
    families = scrape(server)
    for name in ("remoteci_job_duration_seconds", "remoteci_job_queue_wait_seconds"):
        buckets = [(float(dict(labels)["le"]), v) for (sample, labels), v
                   in families[name].samples.items() if sample.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1][0] == float("inf")
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        assert buckets[-1][1] == value(families, f"{name}_count") >= 1


def test_counters_move_after_jobs(server: Server) -> None:
    before = scrape(server)
    ok = server.submit("true")
    bad = server.submit("exit 2")
    slow = server.submit("sleep 1.2")
    for job in (ok, bad, slow):
        server.wait_final(job["id"])
    server.request("GET", f"/api/jobs/{ok['id']}")
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("remoteci_jobs_finished_total", status="success") == 2
    assert moved("remoteci_jobs_finished_total", status="failed") == 1
    assert moved("remoteci_job_duration_seconds_count") == 3
    assert moved("remoteci_job_queue_wait_seconds_count") == 3
    assert moved("remoteci_job_duration_seconds_sum") >= 1.2
    assert moved("remoteci_job_duration_seconds_bucket", le="1.0") == 2  # the slow one is above
    assert moved("remoteci_http_requests_total", route="/api/jobs/rsync", method="POST",
                 code="202") == 3
    assert moved("remoteci_http_requests_total", route="/api/jobs/{id}", method="GET",
                 code="200") >= 1


def test_request_routes_are_patterns_not_paths(server: Server) -> None:
    server.request("GET", "/no/such/path/12345")
    server.request("GET", "/api/jobs/unknown-id-12345")
    routes = {dict(labels)["route"] for (_, labels) in
              scrape(server)["remoteci_http_requests_total"].samples}
    assert "unmatched" in routes and "/api/jobs/{id}" in routes
    assert not any("12345" in r for r in routes)


def test_queue_wait_is_read_from_the_api_time_format() -> None:
    from remoteci.jobs import iso_time
    from remoteci.store.histograms import seconds_between

    assert seconds_between(iso_time(1_800_000_000.25), iso_time(1_800_000_002.75)) == 2.5
    assert seconds_between(iso_time(100.0), iso_time(99.0)) == 0.0  # two hosts' clocks
    assert seconds_between("2026-11-28T07:00:00.000", "2026-11-28T07:00:01.500Z") == 1.5
    for bad in ("", None, "yesterday", "2026-13-01T00:00:00.000Z"):
        assert seconds_between(bad, iso_time(100.0)) is None
