"""The Lua scripts that make each protocol step one atomic transaction.

Every key a script touches lives in one partition (one hash tag), so each runs within one
Redis Cluster slot. Job keys are ``job_prefix .. job_id``, with the prefix from
:meth:`queueing.keys.Keys.job_prefix`.
"""

from __future__ import annotations

# Shared helpers, prepended to the scripts that end jobs.
_PRELUDE = """
local LIVE = {queued = true, running = true}
local notices = {}

-- End a live job: status, outcome (and this stage's timing) and TTL; queue a wake-up that
-- carries the outcome for every waiter's channel (sent by flush_notices).
local function end_job(job, job_id, status, field, value, now, ttl, stage, timing, reply)
  if timing ~= '' then
    redis.call('HSET', job, 'status', status, field, value, 'finished_at', now, 'final_stage', stage,
      't:' .. stage, timing)
  else
    redis.call('HSET', job, 'status', status, field, value, 'finished_at', now, 'final_stage', stage)
  end
  redis.call('EXPIRE', job, ttl)
  if reply == nil then reply = redis.call('HGET', job, 'reply') end
  if reply then
    local notice = job_id .. ' ' .. status .. ' ' .. stage .. ' ' .. #value .. '\\n' .. value
    for channel in string.gmatch(reply, '%S+') do
      local list = notices[channel]
      if not list then list = {}; notices[channel] = list end
      list[#list + 1] = notice
    end
  end
end

-- One PUBLISH per channel for all the wake-ups of this call: '<job> <status> <stage> <len>\\n<value>'...
local function flush_notices()
  for channel, list in pairs(notices) do
    redis.call('PUBLISH', channel, table.concat(list))
  end
end

local function count(stats, stage, what, n)
  if n > 0 then redis.call('HINCRBY', stats, stage .. ':' .. what, n) end
end
"""

# Submits several jobs of one pipeline in one partition, all or none: each gets a job record
# and one entry in the first stage's stream. Per job answers {'queued'|'existing'|'conflict',
# job id}; or, if the backlog has no room for the new ones, {{'full', backlog}}; or, if a
# key names a job with another input, {{'conflict', that job id, index of the input}}.
# KEYS: stream, entries
# ARGV: pipeline, stage, now, max_backlog, idem_ttl, reply channel, owner, job_prefix, then
#   per job: job id, deadline|'', idempotency key|'', fingerprint, n fields, fields...
SUBMIT = """
local stream, entries = KEYS[1], KEYS[2]
local pipeline, stage, now, reply, owner, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[6], ARGV[7], ARGV[8]
local jobs, i = {}, 9
while i <= #ARGV do
  local n = tonumber(ARGV[i + 4])
  jobs[#jobs + 1] = {id = ARGV[i], deadline = ARGV[i + 1], idem = ARGV[i + 2], fp = ARGV[i + 3],
    first = i + 5, last = i + 4 + n}
  i = i + 5 + n
end
local out, new = {}, 0
for k, job in ipairs(jobs) do
  local existing = job.idem ~= '' and redis.call('GET', job.idem)
  if existing then
    local sep = string.find(existing, ' ', 1, true)
    local id = string.sub(existing, 1, sep - 1)
    if string.sub(existing, sep + 1) ~= job.fp then
      return {{'conflict', id, k}}  -- nothing of this call is queued
    else
      out[k] = {'existing', id}
    end
  else
    new = new + 1
  end
end
local backlog = redis.call('XLEN', stream)
if new > 0 and backlog + new > tonumber(ARGV[4]) then
  return {{'full', tostring(backlog)}}
end
for k, job in ipairs(jobs) do
  if not out[k] then
    -- an idempotency key repeated within this call names the job made for its first use
    local existing = job.idem ~= '' and redis.call('GET', job.idem)
    if existing then
      out[k] = {'existing', string.sub(existing, 1, string.find(existing, ' ', 1, true) - 1)}
    else
      local entry = redis.call('XADD', stream, '*', unpack(ARGV, job.first, job.last))
      redis.call('HSET', entries, entry, job.id)
      local record = {'status', 'queued', 'pipeline', pipeline, 'stage', stage, 'created_at', now,
        'reply', reply}
      if job.deadline ~= '' then
        record[#record + 1] = 'deadline'; record[#record + 1] = job.deadline
      end
      if owner ~= '' then
        record[#record + 1] = 'owner'; record[#record + 1] = owner
      end
      redis.call('HSET', prefix .. job.id, unpack(record))
      if job.idem ~= '' then
        redis.call('SET', job.idem, job.id .. ' ' .. job.fp, 'EX', ARGV[5])
      end
      out[k] = {'queued', job.id}
    end
  end
end
return out
"""

# Marks a batch's jobs running and counts this stage's attempt on each (what max_deliveries
# bounds); answers per job: 'run', or the status that forbids running it.
# ARGV: job_prefix, now, stage, job ids...
START = """
local out = {}
for i = 4, #ARGV do
  local job = ARGV[1] .. ARGV[i]
  local status = redis.call('HGET', job, 'status')
  if status == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'started_at', ARGV[2], 'a:' .. ARGV[3], 1)
    out[#out + 1] = 'run'
  elseif status == 'running' then
    redis.call('HINCRBY', job, 'a:' .. ARGV[3], 1)
    out[#out + 1] = 'run'
  else
    out[#out + 1] = status or 'missing'
  end
end
return out
"""

# Hands off or ends each item of a batch and acks it, fenced: an entry no longer pending on
# this consumer (claimed by another after a stall) is left alone, so a result is published
# once. Answers 1 (done here) or 0 (fenced) per item.
# KEYS: stream, entries, dead stream, stats
# ARGV: group, consumer, job_prefix, now, ttl, stage, then per item:
#   entry id, job id ('' if unknown), outcome, value, timing json ('' for none), n targets,
#   then per target: n args, args...
# outcome: done | failed | expired | skip | dead (value: the result or the reason)
#   next: value unused; per target: stream, entries, stage, entry fields...
#   join: value = this branch's output; one target: join hash, stream, entries, stage, branch,
#     n branches, entry fields... (the join entry's; its data field is filled here with
#     {"<branch>": <output>, ...} once the last branch is in)
FINISH = (
    _PRELUDE
    + """
local stream, entries, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, prefix, now, ttl, stage = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local out = {}
local tally = {done = 0, failed = 0, expired = 0, next = 0, join = 0, skip = 0, dead = 0, fenced = 0}

-- XADD an entry for the next stage and index it; fields as given (the data one replaced if set)
local function hand_to(job_id, target_stream, target_entries, first, last, data)
  local fields = {unpack(ARGV, first, last)}
  if data then
    for f = 1, #fields, 2 do
      if fields[f] == 'data' then fields[f + 1] = data end
    end
  end
  local id = redis.call('XADD', target_stream, '*', unpack(fields))
  redis.call('HSET', target_entries, id, job_id)
end

-- The job's current stage and this stage's timing, in one write
local function moved(job, to, timing)
  if timing ~= '' then
    redis.call('HSET', job, 'stage', to, 't:' .. stage, timing)
  else
    redis.call('HSET', job, 'stage', to)
  end
end

local i = 7
while i <= #ARGV do
  local entry, job_id, outcome, value, timing = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local n_targets = tonumber(ARGV[i + 5])
  i = i + 6
  local targets_at = i
  for _ = 1, n_targets do
    i = i + 1 + tonumber(ARGV[i])
  end
  if #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) == 0 then
    out[#out + 1] = 0
    tally.fenced = tally.fenced + 1
  else
    if job_id == '' then job_id = redis.call('HGET', entries, entry) or '' end
    if outcome == 'dead' then
      local found = redis.call('XRANGE', stream, entry, entry)
      local fields = {}
      if #found > 0 then fields = found[1][2] end
      redis.call('XADD', dead, 'MAXLEN', '~', 100000, '*', 'entry', entry, 'reason', value, unpack(fields))
    end
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', entries, entry)
    local job = prefix .. job_id
    local state = job_id ~= '' and redis.call('HMGET', job, 'status', 'reply')
    if state and LIVE[state[1]] then
      local reply = state[2]
      if outcome == 'next' then
        local j = targets_at
        for _ = 1, n_targets do
          local n = tonumber(ARGV[j])
          hand_to(job_id, ARGV[j + 1], ARGV[j + 2], j + 4, j + n, nil)
          moved(job, ARGV[j + 3], timing)
          timing = ''
          j = j + 1 + n
        end
      elseif outcome == 'join' then
        if timing ~= '' then redis.call('HSET', job, 't:' .. stage, timing) end
        local j = targets_at
        local n, join = tonumber(ARGV[j]), ARGV[j + 1]
        -- The fence makes each branch arrive once, so the join is made once, when the last
        -- branch is in; a failed branch ended the job, so a partial join never runs.
        redis.call('HSET', join, ARGV[j + 5], value)
        redis.call('EXPIRE', join, ttl)
        if redis.call('HLEN', join) == tonumber(ARGV[j + 6]) then
          local parts = redis.call('HGETALL', join)
          local doc = {}
          for p = 1, #parts, 2 do
            doc[#doc + 1] = '"' .. parts[p] .. '":' .. parts[p + 1]
          end
          redis.call('DEL', join)
          hand_to(job_id, ARGV[j + 2], ARGV[j + 3], j + 7, j + n, '{' .. table.concat(doc, ',') .. '}')
          redis.call('HSET', job, 'stage', ARGV[j + 4])
        end
      elseif outcome == 'done' then
        end_job(job, job_id, 'done', 'result', value, now, ttl, stage, timing, reply)
      elseif outcome == 'expired' then
        end_job(job, job_id, 'expired', 'error', value, now, ttl, stage, timing, reply)
      elseif outcome ~= 'skip' then
        end_job(job, job_id, 'failed', 'error', value, now, ttl, stage, timing, reply)
      end
    end
    out[#out + 1] = 1
    tally[outcome] = tally[outcome] + 1
  end
end
for what, n in pairs(tally) do count(stats, stage, what, n) end
flush_notices()
return out
"""
)

# Recovers entries idle past the visibility timeout: claims them for this consumer, or
# dead-letters them and fails their jobs: those a worker started max_deliveries times (the
# 'a:<stage>' count START keeps: an entry claimed along with a poison one but never started
# is not held against), those delivered DELIVERY_CAP x max_deliveries times without ever being started (a
# worker dies before it gets to them), and those whose payload was deleted.
# KEYS: stream, entries, dead stream, stats
# ARGV: group, consumer, min_idle_ms, count, max_deliveries, job_prefix, now, ttl, stage
# Answers {claimed entries, number dead-lettered}.
CLAIM = (
    _PRELUDE
    + """
local stream, entries, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local max, prefix, now, ttl, stage = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local DELIVERY_CAP = 5
local claimed, n_dead = {}, 0
for _, p in ipairs(redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', ARGV[4])) do
  local entry, deliveries = p[1], tonumber(p[4])
  local found = redis.call('XRANGE', stream, entry, entry)
  local job_id = redis.call('HGET', entries, entry)
  local attempts = job_id and tonumber(redis.call('HGET', prefix .. job_id, 'a:' .. stage)) or 0
  local reason = nil
  if #found == 0 then
    reason = 'its stream entry was deleted before a worker finished it'
  elseif attempts >= max or deliveries >= max * DELIVERY_CAP then
    reason = 'dead-lettered after ' .. attempts .. ' attempts (' .. deliveries ..
      ' deliveries) without finishing: the worker crashed or stalled on it each time'
    redis.call('XADD', dead, 'MAXLEN', '~', 100000, '*', 'entry', entry, 'reason', reason,
      'deliveries', deliveries, unpack(found[1][2]))
  end
  if reason then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', entries, entry)
    n_dead = n_dead + 1
    if job_id then
      local job = prefix .. job_id
      if LIVE[redis.call('HGET', job, 'status')] then
        end_job(job, job_id, 'failed', 'error', reason, now, ttl, stage, '')
      end
    end
  else
    local got = redis.call('XCLAIM', stream, group, consumer, min_idle, entry)
    if #got > 0 then claimed[#claimed + 1] = got[1] end
  end
end
count(stats, stage, 'redelivered', #claimed)
count(stats, stage, 'dead', n_dead)
flush_notices()
return {claimed, n_dead}
"""
)

# Resets the idle time of entries still pending on this consumer (a heartbeat), so a slow
# batch is not taken for a dead one. Entries already claimed by another are left alone.
# KEYS: stream; ARGV: group, consumer, entry ids...
TOUCH = """
local n = 0
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""

# KEYS: job; ARGV: job_id, now, ttl. Answers the status before (false if no such job).
CANCEL = (
    _PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if LIVE[status] then
  end_job(KEYS[1], ARGV[1], 'cancelled', 'error', 'cancelled', ARGV[2], ARGV[3], '', '')
  flush_notices()
end
return status
"""
)

# Adds a waiter's channel to a live job (so that its end wakes that waiter).
# KEYS: job; ARGV: channel. Answers the status (false if no such job).
WATCH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  local reply = redis.call('HGET', KEYS[1], 'reply') or ''
  if not string.find(' ' .. reply .. ' ', ' ' .. ARGV[1] .. ' ', 1, true) then
    redis.call('HSET', KEYS[1], 'reply', reply .. ' ' .. ARGV[1])
  end
end
return status
"""
