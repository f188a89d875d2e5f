"""The Redis side of pipelines: create (with its first stage enqueued), read, list, cancel.

The keys are named in queue.py with the rest of the schema; the Lua that moves a pipeline is
lua.py's, shared with the job transitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

from remoteci import jobs
from remoteci.pipelines.lua import PIPELINE_LUA
from remoteci.pipelines.objects import pipeline_object
from remoteci.queue import (
    _LUA_ISO_TIME,
    _LUA_QUEUE_HISTORY,
    PIPELINES,
    AlreadySubmitted,
    OverQuota,
    QueueFull,
    idempotency_index,
    owner_queued_index,
    pipeline_key,
    pipelines_owner_index,
    replicated,
    status_index,
)
from remoteci.store.redis_conn import Client as Redis

_SHOWN = ("id", "name", "status", "owner", "mode", "source", "ref", "commit", "created_at",
          "finished_at", "error", "stage", "spec", "webhook", "webhook_status", "webhook_attempts")


_LIB = _LUA_ISO_TIME + _LUA_QUEUE_HISTORY + PIPELINE_LUA

# KEYS: pipeline, pipelines, pipelines:owner:<o>, index:status:queued, idempotency key or '',
#       index:queued:<o>
# ARGV: id, ttl, max_queue, score, spec JSON, max queued per owner (0: none), then field/value
#       pairs of the pipeline
# Returns {'created', created_at}, {'earlier', <id>} when an earlier request with the same
# idempotency key made a pipeline, -1 when the first stage would pass REMOTE_CI_MAX_QUEUE, or
# -2 when it would pass the owner's cap on queued jobs. Later stages are part of a pipeline
# already accepted: they are enqueued whatever the caps say then.
_CREATE = _LIB + """
if KEYS[5] ~= '' then
  local earlier = redis.call('GET', KEYS[5])
  if earlier then return {'earlier', earlier} end
end
local spec = cjson.decode(ARGV[5])
local first = #spec[1]['jobs']
if redis.call('ZCARD', KEYS[4]) + first > tonumber(ARGV[3]) then return -1 end
local max_queued = tonumber(ARGV[6])
if max_queued > 0 and redis.call('ZCARD', KEYS[6]) + first > max_queued then return -2 end
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[2]) end
local now = pipe_now()
redis.call('HSET', KEYS[1], 'status', 'running', 'created_at', now, 'spec', ARGV[5],
           unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
pipe_start_stage(KEYS[1], spec, 0, now, ARGV[2])
return {'created', now}
"""

# KEYS: pipeline;  ARGV: ttl
# Returns 'ok', 'missing', or the final status the pipeline already had.
_CANCEL = _LIB + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'running' then return status end
local spec = cjson.decode(redis.call('HGET', KEYS[1], 'spec'))
local stage = tonumber(redis.call('HGET', KEYS[1], 'stage'))
local now = pipe_now()
pipe_end(KEYS[1], spec, 'cancelled', now, ARGV[1], 'cancelled through the API')
pipe_close(spec, stage, now, ARGV[1], 'not run: the pipeline was cancelled', true)
return 'ok'
"""


class PipelineStore:
    def __init__(self, client: Redis, retention_seconds: int, min_replicas: int = 0):
        self.r = client
        self.ttl = retention_seconds
        # Answered only once REMOTE_CI_REDIS_MIN_REPLICAS replicas have it, as a job's enqueue.
        self._create = replicated(client, client.register_script(_CREATE), min_replicas)
        self._cancel = client.register_script(_CANCEL)

    def create(self, pipeline_id: str, fields: Mapping[str, str], stages: list[dict[str, Any]],
               max_queue: int, idempotency_key: str | None = None, max_queued: int = 0) -> str:
        """Store the pipeline and enqueue its first stage in one step; return its created_at.

        A repeat of the same submission (a client retrying after a lost reply, with the same
        Idempotency-Key) raises AlreadySubmitted with the pipeline the first one made.
        """
        owner = fields["owner"]
        flat = [item for pair in fields.items() for item in pair]
        spec = json.dumps(stages, separators=(",", ":"))
        key = idempotency_index(owner, idempotency_key) if idempotency_key else ""
        result = self._create(
            keys=[pipeline_key(pipeline_id), PIPELINES, pipelines_owner_index(owner),
                  status_index(jobs.QUEUED), key,
                  owner_queued_index(owner)],
            args=[pipeline_id, self.ttl, max_queue, int(time.time() * 1000), spec, max_queued,
                  *flat])
        if result == -1:
            raise QueueFull()
        if result == -2:
            raise OverQuota("queued")
        outcome, value = result
        if outcome == "earlier":
            raise AlreadySubmitted(str(value))
        return str(value)

    def cancel(self, pipeline_id: str) -> str:
        """'ok' (it was running and is cancelled now), 'missing', or the status it had."""
        return str(self._cancel(keys=[pipeline_key(pipeline_id)], args=[self.ttl]))

    def record(self, pipeline_id: str) -> dict[str, str | None] | None:
        values = cast("list[str | None]", self.r.hmget(pipeline_key(pipeline_id), _SHOWN))
        record = dict(zip(_SHOWN, values, strict=True))
        return None if record["status"] is None else record

    def get(self, pipeline_id: str) -> dict[str, Any] | None:
        record = self.record(pipeline_id)
        return None if record is None else pipeline_object(record)

    def status(self, pipeline_id: str) -> str | None:
        return cast("str | None", self.r.hget(pipeline_key(pipeline_id), "status"))

    def list(self, owner: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; ids of expired pipelines leave the index as they are met."""
        index = PIPELINES if owner is None else pipelines_owner_index(owner)
        ids = cast("list[str]", self.r.zrevrange(index, 0, limit - 1))
        found = []
        gone = []
        for pipeline_id in ids:
            record = self.record(pipeline_id)
            if record is None:
                gone.append(pipeline_id)
            else:
                found.append(pipeline_object(record))
        if gone:
            self.r.zrem(index, *gone)
            self.r.zrem(PIPELINES, *gone)
        return found
