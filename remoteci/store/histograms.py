"""Job duration and queue-wait histograms, kept as bucket counters in one Redis hash.

Executors on every host add to the same hash when a job ends (in the finish transaction), so the
API can show fleet-wide histograms without keeping state of its own. Each observation increments
exactly one bucket; the cumulative `le` counts Prometheus wants are summed when read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from remoteci import timefmt

INF = "+Inf"


@dataclass(frozen=True)
class Histogram:
    name: str  # metric name without the remoteci_ prefix, and the field prefix in Redis
    help: str
    buckets: tuple[float, ...]  # upper bounds in seconds, ascending; +Inf is implied


DURATION = Histogram("job_duration_seconds", "Run time of jobs' scripts.",
                     (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
QUEUE_WAIT = Histogram("job_queue_wait_seconds", "Time jobs waited between acceptance and start.",
                       (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
ALL = (DURATION, QUEUE_WAIT)


@dataclass(frozen=True)
class Snapshot:
    cumulative: list[tuple[str, int]]  # (le, observations <= le), ending with +Inf
    total: float
    count: int


def bound_label(bound: float) -> str:
    return INF if bound == float("inf") else repr(float(bound))


def increments(hist: Histogram, value: float) -> dict[str, float]:
    """Hash fields to add to for one observation: its bucket, the sum and the count."""
    bound = next((b for b in hist.buckets if value <= b), float("inf"))
    return {f"{hist.name}:bucket:{bound_label(bound)}": 1, f"{hist.name}:sum": value,
            f"{hist.name}:count": 1}


def finish_observations(created_at: str | None, started_at: str | None,
                        duration: float | None) -> dict[str, float]:
    """What a finished job adds: its run time, and how long it queued (started_at - created_at)."""
    observed: dict[str, float] = {}
    if duration is not None:
        observed.update(increments(DURATION, duration))
    wait = seconds_between(created_at, started_at)
    if wait is not None:
        observed.update(increments(QUEUE_WAIT, wait))
    return observed


def seconds_between(start: str | None, end: str | None) -> float | None:
    first, last = timefmt.epoch(start), timefmt.epoch(end)
    if first is None or last is None:
        return None
    return max(0.0, last - first)  # clocks of two hosts may disagree by a little


def read(hist: Histogram, raw: Mapping[str, str]) -> Snapshot:
    """The cumulative view of one histogram from the stored hash (missing fields count 0)."""
    running = 0
    cumulative = []
    for bound in (*hist.buckets, float("inf")):
        label = bound_label(bound)
        running += int(float(raw.get(f"{hist.name}:bucket:{label}", 0)))
        cumulative.append((label, running))
    return Snapshot(cumulative, float(raw.get(f"{hist.name}:sum", 0)),
                    int(float(raw.get(f"{hist.name}:count", 0))))
