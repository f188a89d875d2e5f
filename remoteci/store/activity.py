"""Per-hour activity for the charts: jobs ended by status, queue-wait and run-time buckets, and
per host the executor seconds spent on jobs ("busy") and the executor seconds available ("up").

One Redis hash per hour, `rci:activity:<hours since the epoch>`, each write renewing a TTL of
8 days: at most 8 x 24 hashes exist, each with 5 status fields, 2 x 13 bucket fields and two
fields per host, however many jobs run. Every host's executors and supervisor add to the same
hashes, so the charts are fleet-wide and the API keeps no state of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from redis.exceptions import RedisError

from remoteci import events, timefmt
from remoteci.store import histograms
from remoteci.store.redis_conn import Client as Redis

PREFIX = "rci:activity:"
HOUR = 3600
TTL = 8 * 86400  # a day more than the longest chart, so its oldest hour is whole
ENDED_FIELDS = ("created_at", "started_at", "finished_at", "worker")

# KEYS: the hour hashes; ARGV: ttl, then per key: n, then n field/increment pairs
_ADD = """
local a = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  for i = a + 1, a + 2 * n, 2 do redis.call('HINCRBYFLOAT', KEYS[k], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[k], ARGV[1])
  a = a + 1 + 2 * n
end
return #KEYS
"""

Increments = dict[int, dict[str, float]]  # hour number -> field -> amount


def hour_key(hour: int) -> str:
    return f"{PREFIX}{hour}"


def host_of(executor_id: str) -> str:
    """Executor ids are <host>:<pid>."""
    return executor_id.rpartition(":")[0] or executor_id


def _bucket(hist: histograms.Histogram, value: float) -> str:
    return histograms.bound_label(next((b for b in hist.buckets if value <= b), float("inf")))


def _spread(into: Increments, field: str, start: float, end: float, weight: float = 1.0) -> None:
    """Add the seconds of [start, end) to each hour they fall in, times `weight`."""
    moment = start
    while moment < end:
        hour = int(moment // HOUR)
        upto = min(end, (hour + 1) * HOUR)
        hours = into.setdefault(hour, {})
        hours[field] = hours.get(field, 0.0) + (upto - moment) * weight
        moment = upto


def ended(status: str, record: Mapping[str, str | None], now: float) -> Increments:
    """What one job's end adds: its status in the hour it ended; if it ran, its queue wait and
    run time in that hour's buckets and its run spread over the hours it took on its host."""
    end = timefmt.epoch(record.get("finished_at")) or now
    hour = int(end // HOUR)
    into: Increments = {hour: {f"jobs:{status}": 1}}
    start = timefmt.epoch(record.get("started_at"))
    if start is None:
        return into  # cancelled while queued: it never took an executor
    into[hour][f"duration:{_bucket(histograms.DURATION, max(0.0, end - start))}"] = 1
    created = timefmt.epoch(record.get("created_at"))
    if created is not None:
        into[hour][f"wait:{_bucket(histograms.QUEUE_WAIT, max(0.0, start - created))}"] = 1
    if record.get("worker"):
        _spread(into, f"busy:{host_of(str(record['worker']))}", start, end)
    return into


def capacity(host: str, executors: int, start: float, end: float) -> Increments:
    """Executor seconds a host offered from start to end: the denominator of its busy share."""
    into: Increments = {}
    _spread(into, f"up:{host}", start, end, executors)
    return into


class ActivityStore:
    def __init__(self, client: Redis):
        self.r = client
        self._add = client.register_script(_ADD)

    def add(self, increments: Increments) -> None:
        """All hours of one event in one script call: one round trip, all or nothing."""
        if not increments:
            return
        keys, args = [], [str(TTL)]
        for hour, fields in sorted(increments.items()):
            keys.append(hour_key(hour))
            args.append(str(len(fields)))
            for name, amount in fields.items():
                args += [name, repr(float(amount))]
        self._add(keys=keys, args=args)

    def job_ended(self, job_key: str, status: str, now: float) -> None:
        """Count a job that just ended; the charts may miss one, the job's end is already kept."""
        try:
            values = cast("list[str | None]", self.r.hmget(job_key, ENDED_FIELDS))
            self.add(ended(status, dict(zip(ENDED_FIELDS, values, strict=True)), now))
        except RedisError as exc:
            events.warning("activity", f"a job's end is missing from the charts: {exc}")

    def hours(self, now: float, count: int) -> list[Hour]:
        """The last `count` hours up to the current one, oldest first (missing hours are empty)."""
        last = int(now // HOUR)
        numbers = range(last - count + 1, last + 1)
        pipe = self.r.pipeline(transaction=False)
        for hour in numbers:
            pipe.hgetall(hour_key(hour))
        return [Hour(hour * HOUR, {k: float(v) for k, v in raw.items()})
                for hour, raw in zip(numbers, pipe.execute(), strict=True)]


@dataclass(frozen=True)
class Hour:
    start: float  # epoch seconds
    fields: Mapping[str, float]

    def ended(self, status: str) -> int:
        return int(self.fields.get(f"jobs:{status}", 0))


def totals(hours: Iterable[Hour]) -> dict[str, float]:
    summed: dict[str, float] = {}
    for hour in hours:
        for name, value in hour.fields.items():
            summed[name] = summed.get(name, 0.0) + value
    return summed


def percentile(hist: histograms.Histogram, prefix: str, summed: Mapping[str, float],
               q: float) -> float | None:
    """The q-quantile from bucket counts, interpolated inside its bucket (as Prometheus'
    histogram_quantile); one in the open top bucket reads as the highest bound. None: no data."""
    bounds = [*hist.buckets, float("inf")]
    counts = [summed.get(f"{prefix}:{histograms.bound_label(b)}", 0.0) for b in bounds]
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count and seen + count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound if bound != float("inf") else lower
    return lower


def busy_share(summed: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Per host: (busy seconds, up seconds); hosts that reported either."""
    hosts = {name.split(":", 1)[1] for name in summed if name.startswith(("busy:", "up:"))}
    return {host: (summed.get(f"busy:{host}", 0.0), summed.get(f"up:{host}", 0.0))
            for host in sorted(hosts)}

