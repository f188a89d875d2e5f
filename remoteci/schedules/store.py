"""Schedules in Redis (keys in queue.py): a hash each, kept until deleted (no TTL), a list of
all, and the due set.

`rci:schedules:due` scores each enabled schedule by its next tick (epoch seconds). A tick is
claimed by the job's enqueue itself (its idempotency key names the schedule and the tick), and
the schedule moves on to its next tick only from the tick it was at (a compare-and-set): so
any number of tickers on any number of hosts make one job per tick, and one that dies between
the two steps leaves the tick due, to be finished by the next look without a second job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from remoteci.queue import SCHEDULES, SCHEDULES_DUE, schedule_key
from remoteci.store.redis_conn import Client


def tick_claim(schedule_id: str, tick: int) -> str:
    """The idempotency key of the job of one tick. '/' is outside what the Idempotency-Key
    header accepts, so no client can take a tick's key."""
    return f"schedule/{schedule_id}/{tick}"


# KEYS: schedule, schedules, due; ARGV: id, created ms, next tick or '', max schedules, fields...
_CREATE = """
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
return 1
"""

# KEYS: schedule, due; ARGV: id, tick it must be at, next tick or '', job id, run at
# Moves the schedule on only from the tick it is at: a late ticker changes nothing.
_ADVANCE = """
local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not at or tonumber(at) ~= tonumber(ARGV[2]) or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) end
redis.call('HSET', KEYS[1], 'next_run_at', ARGV[3], 'last_job_id', ARGV[4], 'last_run_at', ARGV[5])
return 1
"""

# KEYS: schedule, due; ARGV: id, enabled ('1'/'0'), next tick or ''
# Resuming an enabled schedule keeps its tick: a due tick is never skipped by a resume.
_SET_ENABLED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'enabled') == ARGV[2] then return 1 end
redis.call('HSET', KEYS[1], 'enabled', ARGV[2], 'next_run_at', ARGV[3])
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) end
return 1
"""

# KEYS: schedule; ARGV: job id, run at. A run-now shows as the last job, if the schedule exists.
_NOTE_RUN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_job_id', ARGV[1], 'last_run_at', ARGV[2])
return 1
"""


class ScheduleStore:
    def __init__(self, client: Client):
        self.r = client
        self._create = client.register_script(_CREATE)
        self._advance = client.register_script(_ADVANCE)
        self._set_enabled = client.register_script(_SET_ENABLED)
        self._note_run = client.register_script(_NOTE_RUN)

    def create(self, record: Mapping[str, str], created_ms: int, max_schedules: int) -> bool:
        """Store a new schedule, due at its `next_run_at`; False when the server holds
        `max_schedules` already."""
        schedule_id = record["id"]
        fields = [item for pair in record.items() for item in pair]
        return bool(self._create(
            keys=[schedule_key(schedule_id), SCHEDULES, SCHEDULES_DUE],
            args=[schedule_id, created_ms, record.get("next_run_at", ""), max_schedules, *fields]))

    def get(self, schedule_id: str) -> dict[str, str] | None:
        record = cast("dict[str, str]", self.r.hgetall(schedule_key(schedule_id)))
        return record or None

    def listing(self, owner: str | None = None) -> list[dict[str, str]]:
        """Every schedule (of `owner`, if given), newest first."""
        ids = cast("list[str]", self.r.zrevrange(SCHEDULES, 0, -1))
        pipe = self.r.pipeline(transaction=False)
        for schedule_id in ids:
            pipe.hgetall(schedule_key(schedule_id))
        found: list[dict[str, str]] = [rec for rec in pipe.execute() if rec]
        return [rec for rec in found if owner is None or rec.get("owner") == owner]

    def delete(self, schedule_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(schedule_key(schedule_id))
        pipe.zrem(SCHEDULES, schedule_id)
        pipe.zrem(SCHEDULES_DUE, schedule_id)
        return bool(pipe.execute()[0])

    def set_enabled(self, schedule_id: str, enabled: bool, next_tick: int | None) -> bool:
        """Pause (no tick) or resume (from `next_tick` on); False if there is no such schedule."""
        return bool(self._set_enabled(
            keys=[schedule_key(schedule_id), SCHEDULES_DUE],
            args=[schedule_id, "1" if enabled else "0",
                  "" if next_tick is None or not enabled else next_tick]))

    def due(self, now: float, limit: int = 1000) -> list[tuple[str, int]]:
        """(id, tick) of schedules whose tick has come, earliest first."""
        found = cast("list[tuple[str, float]]", self.r.zrangebyscore(
            SCHEDULES_DUE, "-inf", now, start=0, num=limit, withscores=True))
        return [(str(schedule_id), int(score)) for schedule_id, score in found]

    def advance(self, schedule_id: str, tick: int, next_tick: int | None, job_id: str,
                run_at: str) -> bool:
        """Record the tick's job and move on to `next_tick`, if still at `tick`."""
        return bool(self._advance(
            keys=[schedule_key(schedule_id), SCHEDULES_DUE],
            args=[schedule_id, tick, "" if next_tick is None else next_tick, job_id, run_at]))

    def note_run(self, schedule_id: str, job_id: str, run_at: str) -> None:
        self._note_run(keys=[schedule_key(schedule_id)], args=[job_id, run_at])
