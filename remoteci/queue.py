"""The whole Redis schema, whatever the file name says (the path is fixed: deployments and docs
name it): every key of every feature, enqueue, reliable pop, status transitions, listing, stats,
heartbeats. Features keep their Redis code in their own store modules, on the keys named here.

Keys (all under `rci:`):
  queue                 list of the payload JSON of jobs any host may run; LPUSH to enqueue,
                        the oldest at the right
  queue:host:<h>        the same for jobs pinned to host <h> (a submission's `host`)
  queue-hosts           set of the hosts that had a pinned job queued (stats read their lists;
                        the sweep drops entries whose record expired while their host never
                        came, and a host whose list is empty)
  bell, bell:<h>        streams of one entry: each enqueue (and requeue) adds one to the bell of
                        its list, so idle executors wake (XREAD BLOCK) without polling
  inflight:<executor>   list; a taken job stays here until its final status is written
  job:<id>              hash, the job record; TTL = retention, renewed on every transition
  seq                   counter giving every accepted job its place in FIFO order
  index:all|status:<s>|mode:<m>|owner:<token name>
                        sorted sets of job ids scored by seq: listings and queue positions
  owners                set of the owner names with jobs stored, so pruning finds each owner
                        index (an owner whose jobs all expired is dropped by the pruning)
  executors             set of executor ids that registered
  executor:<id>         heartbeat string (JSON) with a short TTL; gone means the executor is dead
  counters              hash of jobs finished per status since the data was created
  histograms            hash of duration / queue-wait histogram buckets (see store/histograms.py)
  activity:<hour>       hash per hour of jobs ended, wait/run buckets, busy/up seconds per host;
                        8-day TTL (see store/activity.py)
  webhooks              list of job ids whose webhook is due (see webhooks/store.py)
  history               list of final job records (JSON, without the payload) waiting for the
                        history writer to copy them to the database (see history/store.py)
  job-uids              hash token owner -> the uid its jobs run as (kept, no TTL: stable
                        across hosts and restarts); job-uid-owners is its reverse, uid -> owner
  gitcred:<id>          a queued git job's credential (JSON), taken (GETDEL) when the job starts
  index:queued:<owner>  sorted set of an owner's queued job ids: its cap on queued jobs
  stored:<owner>        hash job id -> bytes the job keeps on disk (its upload while it waits or
                        runs, then its artifacts until the record expires)
  stored                hash owner -> the sum of its stored:<owner>: its cap on stored bytes
  pipeline:<id>         hash, a pipeline: its status, stage, plan (see pipelines/lua.py, which
                        moves it inside the job transitions below); TTL = retention
  pipelines             sorted set of pipeline ids by creation time (ms): the listing;
                        pipelines:owner:<owner> the same per owner
  A pipeline's jobs are job records with `pipeline`, `stage` and `stage_index` fields.
  schedule:<id>         hash: a schedule (cron, zone, its job, next tick, last job); no TTL
  schedules             sorted set of schedule ids by creation time (ms), for listing
  schedules:due         sorted set of enabled schedule ids by next tick (epoch seconds); the
                        tickers read the due ones (see schedules/store.py)

Several hosts and FIFO: an executor of host h takes whichever of the two oldest entries, of
`queue:host:h` and of `queue`, was accepted first (the lower seq), so jobs start in submission
order among everything h may run: a pinned job never overtakes an older unpinned one, nor the
other way round, while jobs pinned elsewhere never hold h up. (Each list is in seq order: an
enqueue draws its seq and pushes in one script.) Choosing between two lists and
moving the entry is one Lua script, which cannot block, so an executor that found nothing
waits on the bells instead: the script hands back the last id of both bells it read, and
XREAD BLOCK from those ids returns at once if anything was queued since. (One list with every
job, skipped over by hosts it is not for, would cost a scan per take; BLMOVE waits on a single
list only; BLMPOP waits on several but pops without the in-flight copy that makes a take safe.)
Each enqueue wakes every idle executor that may run the job; one claims it, the others look once
and wait again: a few µs of Lua each at the fleet sizes this server is for.

Every status change is one Lua script, so it is one atomic transaction, and conditional:
a job is claimed only while `queued`, finished only while `running`. The script that makes a job
final also queues its webhook and its history record, so no final status can miss either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisError

from remoteci import jobs
from remoteci.hosts.names import node_of
from remoteci.hosts.table import host_table
from remoteci.pipelines.lua import PIPELINE_LUA
from remoteci.store.activity import ActivityStore
from remoteci.store.redis_conn import Client as Redis

P = "rci:"
QUEUE = P + "queue"
QUEUE_HOSTS = P + "queue-hosts"
BELL = P + "bell"
SEQ = P + "seq"
INDEX_ALL = P + "index:all"
EXECUTORS = P + "executors"
OWNERS = P + "owners"
COUNTERS = P + "counters"
HISTOGRAMS = P + "histograms"
WEBHOOKS = P + "webhooks"
HISTORY = P + "history"
JOB_UIDS = P + "job-uids"
JOB_UID_OWNERS = P + "job-uid-owners"
SCHEDULES = P + "schedules"
SCHEDULES_DUE = P + "schedules:due"
HEARTBEAT_TTL = 15
SCAN_BATCHES = 20  # bound on index batches one listing page reads when a second filter is rare
REPLICA_WAIT_MS = 2000  # how long a write waits for REMOTE_CI_REDIS_MIN_REPLICAS acks


def job_key(job_id: str) -> str:
    return f"{P}job:{job_id}"


def host_queue_key(host: str) -> str:
    return f"{P}queue:host:{host}"


def bell_key(host: str | None) -> str:
    return f"{BELL}:{host}" if host else BELL


def queue_of(host: str | None) -> str:
    """The list a job waits in: its host's when pinned, else the shared one."""
    return host_queue_key(host) if host else QUEUE


def inflight_key(executor_id: str) -> str:
    return f"{P}inflight:{executor_id}"


def heartbeat_key(executor_id: str) -> str:
    return f"{P}executor:{executor_id}"


def status_index(status: str) -> str:
    return f"{P}index:status:{status}"


def mode_index(mode: str) -> str:
    return f"{P}index:mode:{mode}"


def idempotency_index(owner: str, key: str) -> str:
    """Scoped by owner: one project can neither see nor collide with another's keys."""
    return f"{P}idem:{owner}:{key}"


def git_credential_key(job_id: str) -> str:
    """A git job's `user:password` until its executor takes it; never in the payload or record."""
    return f"{P}gitcred:{job_id}"


STORED = P + "stored"
OWNER_QUEUED_PREFIX = P + "index:queued:"


def owner_queued_index(owner: str) -> str:
    return OWNER_QUEUED_PREFIX + owner


def stored_key(owner: str) -> str:
    return f"{P}stored:{owner}"


def schedule_key(schedule_id: str) -> str:
    return f"{P}schedule:{schedule_id}"


def owner_index(owner: str) -> str:
    return f"{P}index:owner:{owner}"


PIPELINES = P + "pipelines"


def pipeline_key(pipeline_id: str) -> str:
    return f"{P}pipeline:{pipeline_id}"


def pipelines_owner_index(owner: str) -> str:
    return f"{PIPELINES}:owner:{owner}"


def beat(r: Redis, members: str, member: str, key: str, value: str) -> None:
    """Heartbeat and membership in one transaction: a member without a heartbeat is dead.

    Membership is renewed too, so a process declared dead during a network split is counted
    again once it is heard from.
    """
    pipe = r.pipeline(transaction=True)
    pipe.set(key, value, ex=HEARTBEAT_TTL)
    pipe.sadd(members, member)
    pipe.execute()


def heartbeats(r: Redis, members: str, key_of: Callable[[str], str]) -> list[tuple[str, Any]]:
    """Every registered member with its heartbeat (None: expired, so the member is dead)."""
    names = sorted(cast("set[str]", r.smembers(members)))
    if not names:
        return []
    return list(zip(names, r.mget([key_of(m) for m in names]), strict=True))


class NotReplicated(RedisError):
    """Fewer replicas than REMOTE_CI_REDIS_MIN_REPLICAS confirmed a write in time."""

    def __init__(self, acked: int, wanted: int):
        super().__init__(f"only {acked} of the {wanted} Redis replicas required "
                         f"(REMOTE_CI_REDIS_MIN_REPLICAS) confirmed this write within "
                         f"{REPLICA_WAIT_MS / 1000:g} s")
        self.acked = acked
        self.wanted = wanted


def replicated(client: Redis, script: Script, min_replicas: int) -> Callable[..., Any]:
    """`script`, answering only once `min_replicas` replicas have its writes (WAIT): a write
    a failover could still lose raises NotReplicated. WAIT counts what its own connection
    wrote, so script and WAIT go out in one pipeline."""
    if min_replicas <= 0:
        return script

    def call(keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        pipe = client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.wait(min_replicas, REPLICA_WAIT_MS)
        result, acked = pipe.execute()
        if int(acked) < min_replicas:
            raise NotReplicated(int(acked), min_replicas)
        return result

    return call


class QueueFull(Exception):
    """The queue holds REMOTE_CI_MAX_QUEUE jobs already."""


class OverQuota(Exception):
    """The owner is at a per-owner cap: `what` is "queued" (jobs) or "stored" (bytes)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class Quotas:
    """Per-owner caps checked atomically with the enqueue; 0 means no cap."""

    max_queued: int = 0
    max_stored_bytes: int = 0


class AlreadySubmitted(Exception):
    """This idempotency key already created a job; `job_id` is that job."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


# KEYS: job, queue (shared, or the pinned host's), seq, index:all, index:status:queued,
#       index:mode:<m>, index:owner:<o> or '', owners or '', idempotency key or '',
#       index:queued:<o> or '', stored:<o> or '', stored, bell of that queue, queue-hosts
# Returns the queue position, -1 when the queue (every queued job, pinned or not) is full,
# -2 when the owner has its most queued jobs, -3 when the owner's stored bytes would pass its
# cap, or (a string) the id of the job an earlier request with the same idempotency key created.
# ARGV: id, payload, ttl, max_queue, owner, max queued per owner (0: none), bytes the job
#       stores (its upload), max stored bytes per owner (0: none), '1' when the job will store
#       something (an upload, artifacts), then field/value pairs of the record
# A record without an owner (written by older code or tests) passes '' for both, and no caps.
_ENQUEUE = """
if KEYS[9] ~= '' then
  local earlier = redis.call('GET', KEYS[9])
  if earlier then return earlier end
end
if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[4]) then return -1 end
local bytes = tonumber(ARGV[7])
if ARGV[5] ~= '' then
  local max_queued = tonumber(ARGV[6])
  if max_queued > 0 and redis.call('ZCARD', KEYS[10]) >= max_queued then return -2 end
  local max_stored = tonumber(ARGV[8])
  local stored = tonumber(redis.call('HGET', KEYS[12], ARGV[5]) or '0')
  if max_stored > 0 and ARGV[9] == '1' and stored + math.max(bytes, 1) > max_stored then
    return -3
  end
end
if KEYS[9] ~= '' then redis.call('SET', KEYS[9], ARGV[1], 'EX', ARGV[3]) end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'seq', seq, 'payload', ARGV[2], unpack(ARGV, 10))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
redis.call('ZADD', KEYS[5], seq, ARGV[1])
redis.call('ZADD', KEYS[6], seq, ARGV[1])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[7], seq, ARGV[1])
  redis.call('SADD', KEYS[8], ARGV[5])
  redis.call('ZADD', KEYS[10], seq, ARGV[1])
  if bytes > 0 then
    redis.call('HSET', KEYS[11], ARGV[1], bytes)
    redis.call('HINCRBY', KEYS[12], ARGV[5], bytes)
  end
end
local host = redis.call('HGET', KEYS[1], 'host')
if host then redis.call('SADD', KEYS[14], host) end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[13], 'MAXLEN', '1', '*', 'job', ARGV[1])
return redis.call('ZCARD', KEYS[5])
"""

# KEYS: stored:<owner>, stored;  ARGV: owner, then job id / bytes pairs
# Sets what each job keeps on disk now (0: nothing, the entry goes) and the owner's sum with it.
_SETTLE_STORED = """
for i = 2, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local new = tonumber(ARGV[i + 1])
  if new > 0 then redis.call('HSET', KEYS[1], ARGV[i], new) else redis.call('HDEL', KEYS[1], ARGV[i]) end
  if new ~= old then redis.call('HINCRBY', KEYS[2], ARGV[1], new - old) end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1
"""

# ISO-8601 UTC with milliseconds, as jobs.iso_time writes it, from seconds and microseconds
# (Redis' TIME). Lua has no date library here: days become a civil date by Howard Hinnant's
# days_from_civil inverse, exact for the proleptic Gregorian calendar.
_LUA_ISO_TIME = """
local function iso_time(secs, micros)
  local days = math.floor(secs / 86400)
  local s = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', year, month, day,
                       math.floor(s / 3600), math.floor(s % 3600 / 60), s % 60,
                       math.floor(micros / 1000))
end
"""

# KEYS: inflight, index:status:queued, index:status:running, queue:host:<h> or '', queue,
#       bell:<h> or '', bell
# ARGV: job key prefix, worker, ttl, owner queued index prefix
# Moves the oldest entry this executor may run (the lower seq of the two lists' oldest; see the
# module docstring) to its in-flight list and claims it: {payload, 'running', started_at}, or
# {payload, status} when the job was cancelled or expired meanwhile (then dropped from
# in-flight), or {payload, 'malformed'} for an entry that is not a job (left for the executor
# to report). Nothing to take: {'', 'idle', last id of bell:<h>, last id of bell}, from which
# the executor waits. started_at is Redis' clock, read in the claim. A job's key is built here
# from ARGV[1] (its id is known only from the entry), which a single Redis allows; a cluster
# would not.
_TAKE = _LUA_ISO_TIME + """
local function job_id(payload)
  local ok, job = pcall(cjson.decode, payload)
  if not ok or type(job) ~= 'table' or type(job['id']) ~= 'string'
     or not string.match(job['id'], '^[%w_-]+$') then
    return nil
  end
  return job['id']
end
-- The seq of a list's oldest entry; 0 (first in line) for one that is not a job or whose
-- record is gone, so it is reported or dropped at once instead of blocking the list.
local function oldest(list)
  if list == '' then return nil end
  local payload = redis.call('LINDEX', list, -1)
  if not payload then return nil end
  local id = job_id(payload)
  if not id then return 0 end
  return tonumber(redis.call('HGET', ARGV[1] .. id, 'seq')) or 0
end
local function last_id(bell)
  if bell == '' then return '0-0' end
  local last = redis.call('XREVRANGE', bell, '+', '-', 'COUNT', 1)
  if last[1] then return last[1][1] end
  return '0-0'
end
local pinned, shared = oldest(KEYS[4]), oldest(KEYS[5])
local source
if pinned and (not shared or pinned < shared) then source = KEYS[4]
elseif shared then source = KEYS[5]
else return {'', 'idle', last_id(KEYS[6]), last_id(KEYS[7])} end
local payload = redis.call('LMOVE', source, KEYS[1], 'RIGHT', 'LEFT')
local id = job_id(payload)
if not id then return {payload, 'malformed'} end
local key = ARGV[1] .. id
local status = redis.call('HGET', key, 'status')
if status == 'running' then  -- a second copy of a job that runs: not to be run twice
  redis.call('LREM', KEYS[1], 1, payload)
  return nil
end
if status ~= 'queued' then
  redis.call('LREM', KEYS[1], 1, payload)
  return {payload, status or 'missing'}
end
local now = redis.call('TIME')
local started_at = iso_time(tonumber(now[1]), tonumber(now[2]))
redis.call('HSET', key, 'status', 'running', 'started_at', started_at, 'worker', ARGV[2])
redis.call('EXPIRE', key, ARGV[3])
redis.call('ZREM', KEYS[2], id)
redis.call('ZADD', KEYS[3], redis.call('HGET', key, 'seq'), id)
local owner = redis.call('HGET', key, 'owner')
if owner then redis.call('ZREM', ARGV[4] .. owner, id) end
return {payload, 'running', started_at}
"""

# The final record, as the history database keeps it: every field but the payload (which holds
# the job's env secrets) and the cancel flag. Queued in the step that makes the job final, so
# no final record can miss the history, and kept in full, so a writer that is down longer than
# the record's TTL still finds it.
_LUA_QUEUE_HISTORY = """
local function queue_history(job_key, history_key)
  local flat = redis.call('HGETALL', job_key)
  local record = {}
  for i = 1, #flat, 2 do
    if flat[i] ~= 'payload' and flat[i] ~= 'cancel_requested' then record[flat[i]] = flat[i + 1] end
  end
  redis.call('RPUSH', history_key, cjson.encode(record))
end
"""

# KEYS: job, inflight, index:status:<from>, index:status:<to>, counters, histograms, webhooks,
#       history
# ARGV: id, payload, from_status, to_status, ttl, n, then n histogram field/increment pairs,
#       then field/value pairs
# Ends a job that is in <from>; anything else only drops the payload from the in-flight list.
# A pipeline's job moves its pipeline in the same step (pipelines/lua.py).
_TRANSITION = _LUA_QUEUE_HISTORY + _LUA_ISO_TIME + PIPELINE_LUA + """
local status = redis.call('HGET', KEYS[1], 'status')
if KEYS[2] ~= '' then redis.call('LREM', KEYS[2], 1, ARGV[2]) end
if status ~= ARGV[3] then return status or 'missing' end
local n = tonumber(ARGV[6])
for i = 7, 6 + 2 * n, 2 do redis.call('HINCRBYFLOAT', KEYS[6], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'status', ARGV[4], unpack(ARGV, 7 + 2 * n))
redis.call('EXPIRE', KEYS[1], ARGV[5])
local seq = redis.call('HGET', KEYS[1], 'seq')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
if redis.call('HEXISTS', KEYS[1], 'webhook') == 1 then redis.call('LPUSH', KEYS[7], ARGV[1]) end
queue_history(KEYS[1], KEYS[8])
pipeline_job_ended(KEYS[1], ARGV[4], ARGV[5])
return 'ok'
"""

# KEYS: job, queue (the job's: shared or its host's), index:status:queued,
#       index:status:cancelled, counters, webhooks, history
# ARGV: id, finished_at, ttl, owner queued index prefix
_CANCEL = _LUA_QUEUE_HISTORY + _LUA_ISO_TIME + PIPELINE_LUA + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'queued' then
  redis.call('LREM', KEYS[2], 1, redis.call('HGET', KEYS[1], 'payload'))
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then redis.call('ZREM', ARGV[4] .. owner, ARGV[1]) end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2],
             'error', 'cancelled before it started')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  local seq = redis.call('HGET', KEYS[1], 'seq')
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], seq, ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
  if redis.call('HEXISTS', KEYS[1], 'webhook') == 1 then redis.call('LPUSH', KEYS[6], ARGV[1]) end
  queue_history(KEYS[1], KEYS[7])
  pipeline_job_ended(KEYS[1], 'cancelled', ARGV[3])
  return 'dequeued'
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'running'
end
return status
"""

# KEYS: inflight, queue (the job's: shared or its host's), job, bell of that queue, queue-hosts
# ARGV: payload, the host it is pinned to or ''
# A taken job whose executor died before claiming it goes back to the head of its queue.
_REQUEUE_UNCLAIMED = """
local status = redis.call('HGET', KEYS[3], 'status')
redis.call('LREM', KEYS[1], 1, ARGV[1])
if status == 'queued' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  if ARGV[2] ~= '' then redis.call('SADD', KEYS[5], ARGV[2]) end
  redis.call('XADD', KEYS[4], 'MAXLEN', '1', '*', 'requeued', '1')
end
return status or 'missing'
"""


# KEYS: queue:host:<h>, queue-hosts;  ARGV: host
# A host with nothing queued for it leaves the set, in one step with the look at its list.
_FORGET_HOST = """
if redis.call('LLEN', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


# KEYS: index:owner:<o>, owners;  ARGV: owner
# In one step, so a job enqueued meanwhile (which adds both) cannot lose its owner.
_FORGET_OWNER = """
if redis.call('ZCARD', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


# One uid per owner, the lowest free one of the range, claimed atomically so two hosts asking
# for two new owners at once never hand out the same uid.
_JOB_UID = """
local low, high = tonumber(ARGV[2]), tonumber(ARGV[3])
local uid = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if uid and uid >= low and uid <= high then return uid end
for candidate = low, high do
  local holder = redis.call('HGET', KEYS[2], candidate)
  if not holder or holder == ARGV[1] then  -- free, or this owner's before the range moved
    redis.call('HSET', KEYS[2], candidate, ARGV[1])
    redis.call('HSET', KEYS[1], ARGV[1], candidate)
    return candidate
  end
end
return -1
"""


@dataclass(frozen=True)
class Taken:
    """A job moved to an executor's in-flight list; `status` is `running` when it was claimed,
    else what it already was (`cancelled`, `missing`) or `malformed` (not a job at all)."""

    payload: str  # the queued JSON, exactly: the in-flight entry that `finish` removes
    status: str
    started_at: str | None  # Redis' clock at the claim, when claimed

    @property
    def claimed(self) -> bool:
        return self.status == jobs.RUNNING


@dataclass(frozen=True)
class Stats:
    queued: int
    running: int
    workers: int
    finished: dict[str, int]
    # {host: {executors, running, queued}}; queued counts the jobs pinned to that host
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)


def _entry_id(entry: str) -> str | None:
    """The job id of a queue entry, or None for one that is not a job (its taker reports it)."""
    try:
        job_id = json.loads(entry)["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return job_id if isinstance(job_id, str) and jobs.is_valid_job_id(job_id) else None


def _requeue_args(inflight: str, payload: str, job_id: str) -> tuple[list[str], list[str]]:
    """The keys and args that put a taken entry back where it waited: its host's queue when
    pinned."""
    host = json.loads(payload).get("host")
    host = host if isinstance(host, str) and host else None
    return ([inflight, queue_of(host), job_key(job_id), bell_key(host), QUEUE_HOSTS],
            [payload, host or ""])


class JobStore:
    """All Redis access of the server goes through here; one method per transition."""

    def __init__(self, client: Redis, retention_seconds: int, min_replicas: int = 0):
        self.r = client
        self.ttl = retention_seconds
        self.min_replicas = min_replicas
        self._enqueue = replicated(client, client.register_script(_ENQUEUE), min_replicas)
        self._take = client.register_script(_TAKE)
        self._transition = replicated(client, client.register_script(_TRANSITION), min_replicas)
        self._cancel = client.register_script(_CANCEL)
        self._requeue = client.register_script(_REQUEUE_UNCLAIMED)
        self._forget_owner = client.register_script(_FORGET_OWNER)
        self._forget_host = client.register_script(_FORGET_HOST)
        self._job_uid = client.register_script(_JOB_UID)
        self._settle_stored = client.register_script(_SETTLE_STORED)
        self.activity = ActivityStore(client)

    # --- accepting -------------------------------------------------------------------------

    def enqueue(self, record: Mapping[str, str], payload: Mapping[str, Any], max_queue: int,
                idempotency_key: str | None = None, quotas: Quotas = Quotas(),
                stored_bytes: int = 0) -> int:
        """Store the record and push the payload in one step; return the queue position.

        With an idempotency key, a repeat of the same submission (a client retrying after a
        lost reply) raises AlreadySubmitted instead of creating a second job. The owner's caps
        are checked in the same step (OverQuota), so concurrent submissions cannot pass them.
        """
        job_id = record["id"]
        payload_json = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        fields = [item for pair in record.items() for item in pair]
        owner = record.get("owner", "")
        host = record.get("host")
        keys = [job_key(job_id), queue_of(host), SEQ, INDEX_ALL, status_index(jobs.QUEUED),
                mode_index(record["mode"]), owner_index(owner) if owner else "",
                OWNERS if owner else "",
                idempotency_index(owner, idempotency_key) if idempotency_key else "",
                owner_queued_index(owner) if owner else "", stored_key(owner) if owner else "",
                STORED, bell_key(host), QUEUE_HOSTS]
        result = self._enqueue(keys=keys, args=[job_id, payload_json, self.ttl, max_queue,
                                                owner, quotas.max_queued, stored_bytes,
                                                quotas.max_stored_bytes,
                                                "1" if stored_bytes or payload.get("artifacts") else "0",
                                                *fields])
        if isinstance(result, str):
            raise AlreadySubmitted(result)
        if int(result) == -1:
            raise QueueFull()
        if int(result) < 0:
            raise OverQuota("queued" if int(result) == -2 else "stored")
        return int(result)

    def settle_stored(self, owner: str, job_id: str, stored_bytes: int) -> None:
        """What a job keeps on disk changed (its upload went, its artifacts came): count that."""
        self._settle_stored(keys=[stored_key(owner), STORED], args=[owner, job_id, stored_bytes])

    def stored_bytes(self, owner: str) -> int:
        return int(self.r.hget(STORED, owner) or 0)

    def put_git_credential(self, job_id: str, secret: str) -> None:
        """Before the enqueue: a job is never taken before what it needs is stored."""
        self.r.set(git_credential_key(job_id), secret, ex=self.ttl)

    def drop_git_credential(self, job_id: str) -> None:
        self.r.delete(git_credential_key(job_id))

    def take_git_credential(self, job_id: str) -> str | None:
        """Read once, at the job's start: from then on it lives only in the clone's environment."""
        return cast("str | None", self.r.getdel(git_credential_key(job_id)))

    # --- executing -------------------------------------------------------------------------

    def take(self, executor_id: str, timeout: float) -> Taken | None:
        """Take the oldest job this executor may run (its host's or anyone's; the host is the
        `<node>` of its id), move it to our in-flight list (never lost) and claim it, in one
        step; with nothing queued, wait up to `timeout` for the bell of a new one. None when
        no job came.

        With min_replicas, a claim no replica confirmed raises NotReplicated: a failover could
        lose it and hand the job to another executor, so the job is not run before
        `left_in_flight` has read it back.
        """
        host = node_of(executor_id)
        reply = self._try_take(executor_id, host)
        if not isinstance(reply, tuple):
            return reply
        streams = {BELL: reply[1], **({bell_key(host): reply[0]} if host else {})}
        found = self._try_take(executor_id, host, after_bell=(streams, timeout))
        return None if isinstance(found, tuple) else found

    def _try_take(self, executor_id: str, host: str,
                  after_bell: tuple[dict[str, str], float] | None = None,
                  ) -> Taken | tuple[str, str] | None:
        """A take: the job claimed, or the bells' last ids to wait from. `after_bell` (the
        bells' ids and a timeout) first waits for a ring, in the same round trip: Redis runs
        the take as soon as the wait ends, so a job that rang is claimed in that round trip."""
        keys = [inflight_key(executor_id), status_index(jobs.QUEUED), status_index(jobs.RUNNING),
                host_queue_key(host) if host else "", QUEUE, bell_key(host) if host else "",
                BELL]
        args: list[str | int] = [job_key(""), executor_id, self.ttl, OWNER_QUEUED_PREFIX]
        # The WAIT goes out with the claim, so a confirmed take costs no second round trip.
        pipe = self.r.pipeline(transaction=False)
        if after_bell:
            streams, timeout = after_bell
            pipe.xread(streams, block=max(1, int(timeout * 1000)))  # type: ignore[arg-type]
        pipe.evalsha(self._take.sha, len(keys), *keys, *args)
        if self.min_replicas:
            pipe.wait(self.min_replicas, REPLICA_WAIT_MS)
        replies = pipe.execute(raise_on_error=False)
        if after_bell:
            rung = replies.pop(0)
            if isinstance(rung, Exception):
                raise rung
        reply, *acked = replies
        if isinstance(reply, NoScriptError):  # a restarted or new primary: nothing ran yet
            reply = replicated(self.r, self._take, self.min_replicas)(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
        elif reply is not None and reply[1] != "idle" and acked and (
                int(acked[0]) < self.min_replicas):
            raise NotReplicated(int(acked[0]), self.min_replicas)
        if reply is None:
            return None
        payload, status, *rest = reply
        if status == "idle" and not payload:
            return rest[0], rest[1]
        return Taken(payload, status, rest[0] if rest else None)

    def left_in_flight(self, executor_id: str) -> Taken | None:
        """After a take whose answer was lost: the job it claimed for us, to be run now. Any
        other entry of our in-flight list (we run nothing) goes back to the queue if it was
        never claimed, and is dropped if it already ended."""
        key = inflight_key(executor_id)
        for payload in self.inflight(executor_id):
            try:
                job_id = json.loads(payload)["id"]
            except (ValueError, KeyError, TypeError):
                return Taken(payload, "malformed", None)
            status, worker, started_at = self.r.hmget(job_key(job_id),
                                                      ["status", "worker", "started_at"])
            if status == jobs.RUNNING and worker == executor_id:
                self._confirm_claim(job_id, executor_id)
                return Taken(payload, jobs.RUNNING, cast("str | None", started_at))
            self._requeue(*_requeue_args(key, payload, job_id))
        return None

    def _confirm_claim(self, job_id: str, executor_id: str) -> None:
        """With min_replicas: the claim is on enough replicas, so this Redis is the primary the
        others follow and not one a failover left behind (whose writes will be discarded).
        Rewriting the claim's worker makes WAIT count up to it."""
        if not self.min_replicas:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(job_key(job_id), "worker", executor_id)
        pipe.wait(self.min_replicas, REPLICA_WAIT_MS)
        acked = int(pipe.execute()[1])
        if acked < self.min_replicas:
            raise NotReplicated(acked, self.min_replicas)

    def set_fields(self, job_id: str, fields: Mapping[str, str]) -> None:
        self.r.hset(job_key(job_id), mapping=dict(fields))  # type: ignore[arg-type]

    def finish(self, executor_id: str, job_id: str, payload: str, status: str,
               fields: Mapping[str, str], observations: Mapping[str, float] | None = None) -> bool:
        """Record a running job's final status and drop it from the in-flight list, atomically;
        histogram `observations` count in the same step, so they match the counters."""
        return self._finish_from(jobs.RUNNING, inflight_key(executor_id), job_id, payload,
                                 status, fields, observations)

    def _finish_from(self, from_status: str, inflight: str, job_id: str, payload: str,
                     status: str, fields: Mapping[str, str],
                     observations: Mapping[str, float] | None = None) -> bool:
        flat = [item for pair in fields.items() for item in pair]
        observed = [item for pair in (observations or {}).items() for item in pair]
        keys = [job_key(job_id), inflight, status_index(from_status), status_index(status),
                COUNTERS, HISTOGRAMS, WEBHOOKS, HISTORY]
        result = self._transition(keys=keys, args=[job_id, payload, from_status, status,
                                                   self.ttl, len(observed) // 2, *observed,
                                                   *flat])
        if result == "ok":
            self.activity.job_ended(job_key(job_id), status, time.time())
        return bool(result == "ok")

    def drop_inflight(self, executor_id: str, payload: str) -> None:
        self.r.lrem(inflight_key(executor_id), 1, payload)

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(job_key(job_id), "cancel_requested") is not None

    # --- cancelling ------------------------------------------------------------------------

    def cancel(self, job_id: str, finished_at: str) -> str:
        """Cancel: 'dequeued' (it was queued), 'running' (its executor stops it), 'missing', or
        the final status it already had."""
        host = cast("str | None", self.r.hget(job_key(job_id), "host"))  # never changes
        keys = [job_key(job_id), queue_of(host), status_index(jobs.QUEUED),
                status_index(jobs.CANCELLED),
                COUNTERS, WEBHOOKS, HISTORY]
        outcome: str = self._cancel(keys=keys, args=[job_id, finished_at, self.ttl,
                                                     OWNER_QUEUED_PREFIX])
        if outcome == "dequeued":
            self.activity.job_ended(job_key(job_id), jobs.CANCELLED, time.time())
        return outcome

    def payload(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(job_key(job_id), "payload")
        return None if raw is None else dict(json.loads(raw))

    # --- executors -------------------------------------------------------------------------

    def heartbeat(self, executor_id: str, info: Mapping[str, Any]) -> None:
        beat(self.r, EXECUTORS, executor_id, heartbeat_key(executor_id), json.dumps(dict(info)))

    def live_executors(self) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in heartbeats(self.r, EXECUTORS, heartbeat_key) if b is not None]

    def live_hosts(self) -> set[str]:
        return {str(e.get("host")) for e in self.live_executors()}

    def dead_executors(self) -> list[str]:
        return [m for m, b in heartbeats(self.r, EXECUTORS, heartbeat_key) if b is None]

    def inflight(self, executor_id: str) -> list[str]:
        payloads = cast("list[str]", self.r.lrange(inflight_key(executor_id), 0, -1))
        return payloads

    def reap_executor(self, executor_id: str, reason: str, finished_at: str) -> list[str]:
        """End the in-flight jobs of a dead executor as `error`; return the ids that ended."""
        ended = []
        key = inflight_key(executor_id)
        for payload in self.inflight(executor_id):
            try:
                job_id = json.loads(payload)["id"]
            except (ValueError, KeyError, TypeError):
                self.r.lrem(key, 1, payload)  # not a job; nothing to record
                continue
            status = self._requeue(*_requeue_args(key, payload, job_id))
            if status == jobs.QUEUED:
                continue  # never started: it went back to the head of the queue
            # _requeue already dropped it from in-flight; an empty key skips the second LREM.
            if self._finish_from(jobs.RUNNING, "", job_id, payload, jobs.ERROR,
                                 {"error": reason, "finished_at": finished_at}):
                ended.append(job_id)
        self.unregister_executor(executor_id)
        return ended

    def unregister_executor(self, executor_id: str) -> None:
        self.r.delete(heartbeat_key(executor_id))
        self.r.srem(EXECUTORS, executor_id)

    # --- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job object with its queue position, or None when unknown or expired."""
        found = self._fetch([job_id])[0]
        return None if found is None else jobs.job_object(*found)

    def _fetch(self, ids: list[str]) -> list[tuple[dict[str, str | None], int | None] | None]:
        """The records (the fields a job object shows) and queue positions of `ids`, in one
        round trip; None for gone ones.

        Per job, its rank in the queue, then its record: pipelined commands, not a script,
        which cost Redis about 20 µs more per job. Should a claim come between the two, the
        record says `running`, and a running job has no position; a job is never read before
        its enqueue is done (its id is not known before), so a rank is never missed that way.
        """
        queued = status_index(jobs.QUEUED)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.zrank(queued, job_id)
            pipe.hmget(job_key(job_id), jobs.SHOWN_FIELDS)
        replies = pipe.execute()
        out: list[tuple[dict[str, str | None], int | None] | None] = []
        for rank, values in zip(replies[::2], replies[1::2], strict=True):
            record = dict(zip(jobs.SHOWN_FIELDS, values, strict=True))
            if record["status"] is None:  # expired: no record is without a status
                out.append(None)
            else:
                out.append((record, None if rank is None else rank + 1))
        return out

    def running_ids(self) -> frozenset[str]:
        """Every job running now, on any host."""
        return frozenset(cast("list[str]", self.r.zrange(status_index(jobs.RUNNING), 0, -1)))

    def status(self, job_id: str) -> str | None:
        status = cast("str | None", self.r.hget(job_key(job_id), "status"))
        return status

    def list_jobs(self, status: str | None, mode: str | None, limit: int,
                  owner: str | None = None) -> list[dict[str, Any]]:
        """Newest first; filters use the narrowest index and check the others on the record."""
        return self.list_page(status, mode, limit, owner=owner)[0]

    def list_page(self, status: str | None, mode: str | None, limit: int,
                  before: int | None = None, owner: str | None = None,
                  ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first below seq `before`, with the cursor of the next page (None: no more).

        Reads the narrowest index by score and checks the other filters on each record, at most
        SCAN_BATCHES batches per page, so a rare filter combination still costs bounded time.
        """
        index = self._narrowest_index(status, mode, owner)
        found: list[dict[str, Any]] = []
        high = "+inf" if before is None else f"({before}"
        cursor: int | None = None
        for _ in range(SCAN_BATCHES):
            batch: list[tuple[str, float]] = self.r.zrevrangebyscore(  # type: ignore[assignment]
                index, high, "-inf", start=0, num=limit, withscores=True)
            fetched = self._fetch([member for member, _ in batch]) if batch else []
            for (_, score), found_record in zip(batch, fetched, strict=True):
                cursor = int(score)
                if found_record is None:
                    continue  # expired; housekeeping prunes the index
                record, position = found_record
                if (not status or record.get("status") == status) and (
                        not mode or record.get("mode") == mode) and (
                        not owner or record.get("owner") == owner):
                    found.append(jobs.job_object(record, position))
                if len(found) == limit:
                    return found, cursor
            if len(batch) < limit:
                return found, None
            high = f"({cursor}"
        return found, cursor

    def _narrowest_index(self, status: str | None, mode: str | None, owner: str | None) -> str:
        """The smallest index of the filters given: an owner's few jobs, or the few running."""
        filters = ((owner_index, owner), (status_index, status), (mode_index, mode))
        candidates = [index_of(value) for index_of, value in filters if value]
        if len(candidates) < 2:
            return candidates[0] if candidates else INDEX_ALL
        pipe = self.r.pipeline(transaction=False)
        for key in candidates:
            pipe.zcard(key)
        sizes: list[int] = pipe.execute()
        return candidates[sizes.index(min(sizes))]

    def next_queued(self, limit: int) -> list[dict[str, Any]]:
        """The jobs that start next, in the order they will start."""
        ids = cast("list[str]", self.r.zrange(status_index(jobs.QUEUED), 0, limit - 1))
        return [jobs.job_object(*found) for found in self._fetch(ids) if found] if ids else []

    def stats(self) -> Stats:
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(status_index(jobs.QUEUED))
        pipe.zrange(status_index(jobs.RUNNING), 0, -1)
        pipe.hgetall(COUNTERS)
        pipe.smembers(QUEUE_HOSTS)
        queued, running_ids, counters, queue_hosts = pipe.execute()
        finished = {s: int(counters.get(s, 0)) for s in jobs.FINAL_STATUSES}
        pipe = self.r.pipeline(transaction=False)
        for job_id in running_ids:
            pipe.hget(job_key(job_id), "worker")
        hosts = sorted(queue_hosts)
        for host in hosts:
            pipe.llen(host_queue_key(host))
        replies = pipe.execute() if running_ids or hosts else []
        workers, lengths = replies[:len(running_ids)], replies[len(running_ids):]
        executors = self.live_executors()
        return Stats(queued=queued, running=len(running_ids), workers=len(executors),
                     finished=finished,
                     hosts=host_table(executors, workers, dict(zip(hosts, lengths, strict=True))))

    def owners(self) -> list[str]:
        """Every owner with a job still stored, for an admin's owner filter."""
        return sorted(cast("set[str]", self.r.smembers(OWNERS)))

    def histogram_counts(self) -> dict[str, str]:
        counts = cast("dict[str, str]", self.r.hgetall(HISTOGRAMS))
        return counts

    def prune_indexes(self, batch: int = 500) -> int:
        """Drop ids of expired records from the listing indexes; return how many went."""
        removed = 0
        owners = cast("set[str]", self.r.smembers(OWNERS))
        indexes = [INDEX_ALL] + [status_index(s) for s in jobs.STATUSES] + [
            mode_index(m) for m in jobs.MODES] + [owner_index(o) for o in owners] + [
            owner_queued_index(o) for o in owners]
        cursor = 0
        while True:
            ids = cast("list[str]", self.r.zrange(INDEX_ALL, cursor, cursor + batch - 1))
            if not ids:
                self._forget_idle_owners(owners)
                self.forget_idle_hosts()
                return removed
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.exists(job_key(job_id))
            gone = [i for i, alive in zip(ids, pipe.execute(), strict=True) if not alive]
            if gone:
                pipe = self.r.pipeline(transaction=True)
                for index in indexes:
                    pipe.zrem(index, *gone)
                pipe.execute()
                for owner in owners:  # an expired job's artifacts go with it (the sweep's age)
                    self._settle_stored(keys=[stored_key(owner), STORED],
                                        args=[owner, *(v for j in gone for v in (j, 0))])
                removed += len(gone)
            cursor += batch - len(gone)

    def forget_idle_hosts(self, batch: int = 500) -> None:
        """Jobs pinned to a host that never came expire (their records do) without anyone taking
        their entries: the oldest `batch` entries of each host's queue whose record is gone are
        dropped. A host with nothing left waiting leaves the stats' list of queues."""
        for host in cast("set[str]", self.r.smembers(QUEUE_HOSTS)):
            key = host_queue_key(host)
            entries = cast("list[str]", self.r.lrange(key, -batch, -1))
            ids = [_entry_id(entry) for entry in entries]
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.exists(job_key(job_id or ""))
            alive = pipe.execute() if ids else []
            gone = [e for e, i, a in zip(entries, ids, alive, strict=True) if i and not a]
            if gone:
                pipe = self.r.pipeline(transaction=False)
                for entry in gone:
                    pipe.lrem(key, 1, entry)
                pipe.execute()
            self._forget_host(keys=[key, QUEUE_HOSTS], args=[host])

    def _forget_idle_owners(self, owners: set[str]) -> None:
        """An owner whose jobs have all expired leaves the owner filter (and its empty index)."""
        for owner in owners:
            self._forget_owner(keys=[owner_index(owner), OWNERS], args=[owner])

    def job_uid(self, owner: str, low: int, high: int) -> int | None:
        """The uid `owner`'s jobs run as (the same on every host); None when the range is full."""
        uid: int = self._job_uid(keys=[JOB_UIDS, JOB_UID_OWNERS], args=[owner, low, high])
        return uid if uid >= 0 else None

    def ping(self) -> None:
        self.r.ping()

