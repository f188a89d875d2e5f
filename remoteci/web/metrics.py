"""GET /metrics in the Prometheus text format (version 0.0.4), and the API's request counters.

Job counters and histograms live in Redis (every host's executors add to them); request counts
are per API process, which is what Prometheus expects of a counter scraped from one target.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping

from remoteci.queue import Stats
from remoteci.store import histograms

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"
_KNOWN_METHODS = ("GET", "HEAD", "POST")


def route_label(pattern: str) -> str:
    """A route's regex as a readable template: /api/jobs/(?P<id>[^/]+) -> /api/jobs/{id}."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).replace("\\", "")


class RequestCounts:
    """Requests by (route, method, status); labels come from fixed sets, so series stay few."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, int], int] = {}

    def add(self, route: str, method: str, status: int) -> None:
        key = (route, method if method in _KNOWN_METHODS else "other", status)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._counts)


def _labels(**labels: str) -> str:
    def value(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{value(v)}"' for k, v in labels.items()) + "}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP remoteci_{name} {help_text}", f"# TYPE remoteci_{name} {kind}", *samples]


def _histogram(hist: histograms.Histogram, raw: Mapping[str, str]) -> list[str]:
    snap = histograms.read(hist, raw)
    name = f"remoteci_{hist.name}"
    return _family(hist.name, "histogram", hist.help, [
        *(f"{name}_bucket{_labels(le=le)} {count}" for le, count in snap.cumulative),
        f"{name}_sum {snap.total!r}", f"{name}_count {snap.count}"])


_HOST_GAUGES = (("executors", "Live executors of a worker host."),
                ("running", "Jobs running on a worker host."),
                ("queued", "Queued jobs pinned to a worker host."))


def render(stats: Stats, histogram_raw: Mapping[str, str],
           requests: Mapping[tuple[str, str, int], int],
           history: tuple[int, float] = (0, 0.0)) -> str:
    """`history`: final records not yet in the history database, and the oldest one's age."""
    lines = [
        *_family("jobs_queued", "gauge", "Jobs waiting in the queue.",
                 [f"remoteci_jobs_queued {stats.queued}"]),
        *_family("jobs_running", "gauge", "Jobs running on any host.",
                 [f"remoteci_jobs_running {stats.running}"]),
        *_family("executors", "gauge", "Live executors on every host.",
                 [f"remoteci_executors {stats.workers}"]),
        # Per worker host: queued counts the jobs pinned to it (a submission's `host`).
        *(line for field, help_text in _HOST_GAUGES for line in _family(
            f"host_{field}", "gauge", help_text,
            [f"remoteci_host_{field}{_labels(host=h)} {row[field]}"
             for h, row in stats.hosts.items()])),
        *_family("jobs_finished_total", "counter", "Jobs that ended, by final status.",
                 [f"remoteci_jobs_finished_total{_labels(status=s)} {n}"
                  for s, n in stats.finished.items()]),
        *(line for hist in histograms.ALL for line in _histogram(hist, histogram_raw)),
        *_family("history_pending", "gauge", "Final job records waiting for the history writer.",
                 [f"remoteci_history_pending {history[0]}"]),
        *_family("history_lag_seconds", "gauge",
                 "How long the oldest record not yet in the history database has been final.",
                 [f"remoteci_history_lag_seconds {history[1]:.3f}"]),
        *_family("http_requests_total", "counter", "API requests answered by this process.",
                 [f"remoteci_http_requests_total{_labels(route=r, method=m, code=str(c))} {n}"
                  for (r, m, c), n in sorted(requests.items())]),
    ]
    return "\n".join(lines) + "\n"
