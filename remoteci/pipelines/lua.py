"""The Lua that moves a pipeline, run inside the scripts that end its jobs (queue.py) and in
the pipeline's own create and cancel scripts (store.py).

A job's final transition and its pipeline's step are one script, so one atomic transaction:
a stage's end is seen exactly once (by the transition of its last job), the next stage is
enqueued in that same step, and no process can die between the two. There is no half-advanced
pipeline for anyone to repair.

It needs `iso_time` and `queue_history` (queue.py) defined before it. Keys are built from the
`rci:` prefix inside the script, as the claim builds a job's key: a single Redis allows it.

Pipeline hash `rci:pipeline:<id>`: id, name, owner, status (running | success | failed |
cancelled), created_at, finished_at, error, stage (the index of the stage running or that
ended it), pending (its jobs not yet ended), spec (plan.stage_templates as JSON), mode,
source, ref, commit, and webhook fields like a job's.
"""

PIPELINE_LUA = r"""
local PIPE_P = 'rci:'

local function pipe_now()
  local t = redis.call('TIME')
  return iso_time(tonumber(t[1]), tonumber(t[2]))
end

local function pipe_index(id, seq, status, record)
  redis.call('ZADD', PIPE_P .. 'index:all', seq, id)
  redis.call('ZADD', PIPE_P .. 'index:status:' .. status, seq, id)
  redis.call('ZADD', PIPE_P .. 'index:mode:' .. record['mode'], seq, id)
  local owner = record['owner']
  if owner and owner ~= '' then
    redis.call('ZADD', PIPE_P .. 'index:owner:' .. owner, seq, id)
    redis.call('SADD', PIPE_P .. 'owners', owner)
    if status == 'queued' then redis.call('ZADD', PIPE_P .. 'index:queued:' .. owner, seq, id) end
  end
end

local function pipe_write_record(key, seq, record, fields)
  local flat = {}
  for k, v in pairs(record) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  for i = 1, #fields do flat[#flat + 1] = fields[i] end
  redis.call('HSET', key, 'seq', seq, unpack(flat))
end

-- A job of a starting stage: record, indexes and queue entry, as an accepted job gets them.
local function pipe_enqueue(job, now, ttl)
  local key = PIPE_P .. 'job:' .. job['id']
  local payload = job['payload']
  payload['created_at'] = now  -- its queue wait starts now, not at the pipeline's submission
  local encoded = cjson.encode(payload)
  local seq = redis.call('INCR', PIPE_P .. 'seq')
  pipe_write_record(key, seq, job['record'],
                    {'payload', encoded, 'status', 'queued', 'created_at', now})
  redis.call('EXPIRE', key, ttl)
  pipe_index(job['id'], seq, 'queued', job['record'])
  redis.call('LPUSH', PIPE_P .. 'queue', encoded)
  redis.call('XADD', PIPE_P .. 'bell', 'MAXLEN', '1', '*', 'job', job['id'])  -- wakes idle executors
end

-- A job whose stage never starts: a final `cancelled` record, never queued.
local function pipe_never_ran(job, now, ttl, reason)
  local key = PIPE_P .. 'job:' .. job['id']
  if redis.call('EXISTS', key) == 1 then return end
  local seq = redis.call('INCR', PIPE_P .. 'seq')
  pipe_write_record(key, seq, job['record'], {'status', 'cancelled', 'created_at', now,
                                              'finished_at', now, 'error', reason})
  redis.call('EXPIRE', key, ttl)
  pipe_index(job['id'], seq, 'cancelled', job['record'])
  redis.call('HINCRBY', PIPE_P .. 'counters', 'cancelled', 1)
  queue_history(key, PIPE_P .. 'history')
end

-- A job of the current stage: off the queue if it waits there (as queue.py's cancel does);
-- a running one is asked to stop (`stop_running`) or left to finish.
local function pipe_stop_job(id, now, ttl, reason, stop_running)
  local key = PIPE_P .. 'job:' .. id
  local status = redis.call('HGET', key, 'status')
  if status == 'queued' then
    redis.call('LREM', PIPE_P .. 'queue', 1, redis.call('HGET', key, 'payload'))
    local owner = redis.call('HGET', key, 'owner')
    if owner then redis.call('ZREM', PIPE_P .. 'index:queued:' .. owner, id) end
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now, 'error', reason)
    redis.call('EXPIRE', key, ttl)
    local seq = redis.call('HGET', key, 'seq')
    redis.call('ZREM', PIPE_P .. 'index:status:queued', id)
    redis.call('ZADD', PIPE_P .. 'index:status:cancelled', seq, id)
    redis.call('HINCRBY', PIPE_P .. 'counters', 'cancelled', 1)
    queue_history(key, PIPE_P .. 'history')
  elseif status == 'running' and stop_running then
    redis.call('HSET', key, 'cancel_requested', '1')
  end
end

-- The final record for the history database, queued with the history's job records: every
-- field but the plan, whose stage names and job ids (what the pipeline object shows) stay.
local function pipe_history(pkey, spec)
  local flat = redis.call('HGETALL', pkey)
  local record = {kind = 'pipeline'}
  for i = 1, #flat, 2 do
    if flat[i] ~= 'spec' then record[flat[i]] = flat[i + 1] end
  end
  local stages = {}
  for s, stage in ipairs(spec) do
    local ids = {}
    for j, job in ipairs(stage['jobs']) do ids[j] = {id = job['id']} end
    stages[s] = {name = stage['name'], jobs = ids}
  end
  record['spec'] = cjson.encode(stages)
  redis.call('RPUSH', PIPE_P .. 'history', cjson.encode(record))
end

local function pipe_end(pkey, spec, status, now, ttl, err)
  redis.call('HSET', pkey, 'status', status, 'finished_at', now)
  if err then redis.call('HSET', pkey, 'error', err) end
  redis.call('EXPIRE', pkey, ttl)
  if redis.call('HEXISTS', pkey, 'webhook') == 1 then
    redis.call('LPUSH', PIPE_P .. 'webhooks', 'pipeline:' .. redis.call('HGET', pkey, 'id'))
  end
  pipe_history(pkey, spec)
end

-- What has not run will not: the current stage's waiting jobs and every later stage's jobs.
local function pipe_close(spec, stage, now, ttl, reason, stop_running)
  for _, job in ipairs(spec[stage + 1]['jobs']) do
    pipe_stop_job(job['id'], now, ttl, reason, stop_running)
  end
  for s = stage + 2, #spec do
    for _, job in ipairs(spec[s]['jobs']) do pipe_never_ran(job, now, ttl, reason) end
  end
end

local function pipe_start_stage(pkey, spec, stage, now, ttl)
  redis.call('HSET', pkey, 'stage', stage, 'pending', #spec[stage + 1]['jobs'])
  redis.call('EXPIRE', pkey, ttl)
  for _, job in ipairs(spec[stage + 1]['jobs']) do pipe_enqueue(job, now, ttl) end
end

-- The hook of every job end (queue.py): the job at `job_key` just became final with `status`.
local function pipeline_job_ended(job_key, status, ttl)
  local id = redis.call('HGET', job_key, 'pipeline')
  if not id then return end
  local pkey = PIPE_P .. 'pipeline:' .. id
  if redis.call('HGET', pkey, 'status') ~= 'running' then return end  -- ended already
  local stage = tonumber(redis.call('HGET', pkey, 'stage'))
  if tonumber(redis.call('HGET', job_key, 'stage_index')) ~= stage then return end
  if status == 'success' and redis.call('HINCRBY', pkey, 'pending', -1) > 0 then
    redis.call('EXPIRE', pkey, ttl)  -- the stage goes on: no need to read the plan
    return
  end
  local spec = cjson.decode(redis.call('HGET', pkey, 'spec'))
  local now = pipe_now()
  if status ~= 'success' then
    local why = 'job ' .. (redis.call('HGET', job_key, 'name') or '?') .. ' of stage '
                .. spec[stage + 1]['name'] .. ' ended ' .. status
    pipe_end(pkey, spec, 'failed', now, ttl, why)
    pipe_close(spec, stage, now, ttl, 'not run: ' .. why, false)
    return
  end
  if stage + 1 >= #spec then
    pipe_end(pkey, spec, 'success', now, ttl, nil)
  else
    pipe_start_stage(pkey, spec, stage + 1, now, ttl)
  end
end
"""
