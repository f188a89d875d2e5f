"""The Redis side of durable history: final records waiting for the writer, and the writer's lease.

Keys (all under `rci:`):
  history               list of final job records (JSON); the Lua script that makes a job final
                        RPUSHes one (queue.py), and a pipeline's end its own (`kind: pipeline`,
                        pipelines/lua.py); the writer copies the oldest to the database and
                        only then trims them off, so a crash in between copies them again
                        (the database upserts by id: a copy twice is a copy once)
  history:lease         the id of the one writer that may copy and trim, with a short TTL
  history:pruned-at     when the database was last pruned (epoch s), so pruning is daily
                        whichever host holds the lease
"""

from __future__ import annotations

import json
from typing import Any, cast

from remoteci import timefmt
from remoteci.queue import HISTORY, P
from remoteci.store.redis_conn import Client as Redis

LEASE = P + "history:lease"
PRUNED_AT = P + "history:pruned-at"

# KEYS: lease; ARGV: writer id, ttl ms. Take the lease when free, renew it when ours.
_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease, history; ARGV: writer id, count. Trim only while still the lease holder: a
# writer that stalled past its lease must not trim what the next one has not copied yet.
_TRIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
return 1
"""


class HistoryQueue:
    """What the history writer and /metrics need from Redis."""

    def __init__(self, client: Redis):
        self.r = client
        self._take_lease = client.register_script(_TAKE_LEASE)
        self._trim = client.register_script(_TRIM)

    def take_lease(self, writer_id: str, ttl_seconds: float) -> bool:
        taken = self._take_lease(keys=[LEASE], args=[writer_id, int(ttl_seconds * 1000)])
        return bool(taken)

    def release_lease(self, writer_id: str) -> None:
        if self.r.get(LEASE) == writer_id:
            self.r.delete(LEASE)

    def oldest(self, count: int) -> list[str]:
        return cast("list[str]", self.r.lrange(HISTORY, 0, count - 1))

    def done(self, writer_id: str, count: int) -> bool:
        """Drop the `count` oldest records, copied; False when the lease was lost meanwhile."""
        return bool(self._trim(keys=[LEASE, HISTORY], args=[writer_id, count]))

    def pending(self) -> int:
        return int(self.r.llen(HISTORY))

    def lag_seconds(self, now: float) -> float:
        """How long the oldest record not yet copied has been final (0 when none waits)."""
        head = cast("str | None", self.r.lindex(HISTORY, 0))
        finished = timefmt.epoch(_parse(head).get("finished_at")) if head is not None else None
        return 0.0 if finished is None else max(0.0, now - finished)

    def pruned_at(self) -> float:
        raw = self.r.get(PRUNED_AT)
        return float(raw) if raw else 0.0

    def set_pruned_at(self, when: float) -> None:
        self.r.set(PRUNED_AT, f"{when:.0f}")


def _parse(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_record(raw: str) -> dict[str, str] | None:
    """One queued record; None for an entry that is not one (skipped, never retried forever)."""
    record = _parse(raw)
    if not isinstance(record.get("id"), str) or not record.get("status"):
        return None
    return {str(k): str(v) for k, v in record.items()}
