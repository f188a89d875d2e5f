"""The Redis schema of webhook deliveries: a reliable queue, delayed retries, deliverer heartbeats.

Keys (all under `rci:`):
  webhooks                   list of job ids due for delivery; the Lua script that makes a job
                             final LPUSHes its id when the record has a `webhook` (queue.py),
                             and `pipeline:<id>` when a pipeline with one ends (pipelines/lua.py)
  webhooks:retry             sorted set of job ids waiting for a retry, scored by due time (epoch s)
  webhooks:inflight:<id>     list; a taken delivery stays here until its outcome is recorded
  deliverers                 set of deliverer ids that registered
  deliverer:<id>             heartbeat with a short TTL; gone means the deliverer is dead
On the job hash: `webhook` (the URL), `webhook_status` (pending | delivered | failed: <reason>),
`webhook_attempts`, and `webhook_delivery` (the X-RemoteCI-Delivery uuid, the same on retries).

Delivery is at least once: the in-flight entries of a dead deliverer go back to the queue, so a
receiver may see a delivery twice and can tell by its X-RemoteCI-Delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from remoteci.queue import WEBHOOKS, P, beat, heartbeats, job_key
from remoteci.store.redis_conn import Client as Redis

RETRY = P + "webhooks:retry"
DELIVERERS = P + "deliverers"
PROMOTE_BATCH = 100


def record_key(entry: str) -> str:
    """A delivery names a job id, or `pipeline:<id>` for a pipeline's end (pipelines/lua.py)."""
    return P + entry if entry.startswith("pipeline:") else job_key(entry)


def inflight_key(deliverer_id: str) -> str:
    return f"{P}webhooks:inflight:{deliverer_id}"


def heartbeat_key(deliverer_id: str) -> str:
    return f"{P}deliverer:{deliverer_id}"


# KEYS: job; ARGV: field/value pairs. Never recreates an expired record (it would have no TTL).
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: job, inflight, retry; ARGV: id, due ('' = no retry), then field/value pairs
# The outcome, the retry (if any) and leaving the in-flight list are one step: a crash between
# them can neither lose the delivery nor send it twice.
_SETTLE = """
if #ARGV > 2 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
end
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1]) end
redis.call('LREM', KEYS[2], 1, ARGV[1])
return 1
"""

# KEYS: retry, webhooks; ARGV: now, batch
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('LPUSH', KEYS[2], id)
end
return #due
"""

# KEYS: inflight, webhooks, heartbeat, deliverers; ARGV: deliverer id
# RPUSH: handed-back deliveries are the next ones taken.
_HAND_BACK = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do redis.call('RPUSH', KEYS[2], id) end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return #ids
"""


class WebhookStore:
    """All Redis access of webhook delivery; one method per step."""

    def __init__(self, client: Redis):
        self.r = client
        self._update = client.register_script(_UPDATE)
        self._settle = client.register_script(_SETTLE)
        self._promote = client.register_script(_PROMOTE)
        self._hand_back = client.register_script(_HAND_BACK)

    def take(self, deliverer_id: str, timeout: float) -> str | None:
        """Block up to `timeout` for a due delivery; it moves to our in-flight list, never lost."""
        job_id = self.r.blmove(WEBHOOKS, inflight_key(deliverer_id), timeout,  # type: ignore[arg-type]
                               "RIGHT", "LEFT")
        return cast("str | None", job_id)

    def promote_due(self, now: float) -> int:
        """Move retries whose time has come back to the queue; return how many."""
        return int(self._promote(keys=[RETRY, WEBHOOKS], args=[now, PROMOTE_BATCH]))

    def record(self, job_id: str) -> dict[str, str]:
        """The job's stored hash ({} once it expired)."""
        return cast("dict[str, str]", self.r.hgetall(record_key(job_id)))

    def update(self, job_id: str, fields: Mapping[str, str]) -> None:
        self._update(keys=[record_key(job_id)], args=_flat(fields))

    def settle(self, deliverer_id: str, job_id: str, fields: Mapping[str, str],
               retry_at: float | None) -> None:
        """Record an attempt's outcome, schedule its retry, and drop it from in-flight, at once."""
        due = "" if retry_at is None else repr(retry_at)
        self._settle(keys=[record_key(job_id), inflight_key(deliverer_id), RETRY],
                     args=[job_id, due, *_flat(fields)])

    def heartbeat(self, deliverer_id: str) -> None:
        beat(self.r, DELIVERERS, deliverer_id, heartbeat_key(deliverer_id), "1")

    def dead_deliverers(self) -> list[str]:
        return [m for m, b in heartbeats(self.r, DELIVERERS, heartbeat_key) if b is None]

    def hand_back(self, deliverer_id: str) -> int:
        """Forget a deliverer, putting its unfinished deliveries back on the queue."""
        keys = [inflight_key(deliverer_id), WEBHOOKS, heartbeat_key(deliverer_id), DELIVERERS]
        return int(self._hand_back(keys=keys, args=[deliverer_id]))


def _flat(fields: Mapping[str, Any]) -> list[Any]:
    return [item for pair in fields.items() for item in pair]
