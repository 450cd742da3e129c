"""The Lua scripts that make each protocol step one atomic transaction.

Every key a script touches lives in one partition (one hash tag), so each runs within one
Redis Cluster slot. Job keys are ``job_prefix .. job_id``, with the prefix from
:meth:`queueing.keys.Keys.job_prefix`.
"""

from __future__ import annotations

# Shared helpers, prepended to the scripts that end jobs.
_PRELUDE = """
local LIVE = {queued = true, running = true}

-- End a live job: status, outcome, TTL, and a wake-up on every waiter's channel.
local function end_job(job, job_id, status, field, value, now, ttl, stage)
  redis.call('HSET', job, 'status', status, field, value, 'finished_at', now)
  if status == 'failed' and stage ~= '' then
    redis.call('HSET', job, 'error_stage', stage)
  end
  redis.call('EXPIRE', job, ttl)
  local reply = redis.call('HGET', job, 'reply')
  if reply then
    for channel in string.gmatch(reply, '%S+') do
      redis.call('PUBLISH', channel, job_id)
    end
  end
end

local function count(stats, stage, what, n)
  if n > 0 then redis.call('HINCRBY', stats, stage .. ':' .. what, n) end
end
"""

# KEYS: stream, entries, job, idempotency key
# ARGV: job_id, pipeline, stage, now, deadline|'', max_backlog, use_idem, fingerprint,
#       idem_ttl, reply channel, owner, message fields...
SUBMIT = """
local job_id = ARGV[1]
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    local sep = string.find(existing, ' ', 1, true)
    local id = string.sub(existing, 1, sep - 1)
    if string.sub(existing, sep + 1) ~= ARGV[8] then
      return {'conflict', id}
    end
    return {'existing', id}
  end
end
local backlog = redis.call('XLEN', KEYS[1])
if backlog >= tonumber(ARGV[6]) then
  return {'full', tostring(backlog)}
end
local entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 12))
redis.call('HSET', KEYS[2], entry, job_id)
redis.call('HSET', KEYS[3], 'status', 'queued', 'pipeline', ARGV[2], 'stage', ARGV[3],
  'entry', entry, 'created_at', ARGV[4], 'deadline', ARGV[5], 'reply', ARGV[10],
  'owner', ARGV[11])
if ARGV[7] == '1' then
  redis.call('SET', KEYS[4], job_id .. ' ' .. ARGV[8], 'EX', ARGV[9])
end
return {'queued', job_id}
"""

# Marks a batch's jobs running; answers per job: 'run', or the status that forbids running.
# ARGV: job_prefix, now, job ids...
START = """
local out = {}
for i = 3, #ARGV do
  local job = ARGV[1] .. ARGV[i]
  local status = redis.call('HGET', job, 'status')
  if status == 'queued' or status == 'running' then
    redis.call('HSET', job, 'status', 'running')
    redis.call('HSETNX', job, 'started_at', ARGV[2])
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
#   then per target: stream, entries, stage, n fields, fields...
# outcome: done | failed | expired | next | skip | dead
FINISH = (
    _PRELUDE
    + """
local stream, entries, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, prefix, now, ttl, stage = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local out = {}
local tally = {done = 0, failed = 0, expired = 0, next = 0, skip = 0, dead = 0, fenced = 0}
local i = 7
while i <= #ARGV do
  local entry, job_id, outcome, value, timing = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local n_targets = tonumber(ARGV[i + 5])
  i = i + 6
  local targets_at = i
  for _ = 1, n_targets do
    i = i + 4 + tonumber(ARGV[i + 3])
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
    if job_id ~= '' and LIVE[redis.call('HGET', job, 'status')] then
      if timing ~= '' then redis.call('HSET', job, 't:' .. stage, timing) end
      if outcome == 'next' then
        local j = targets_at
        for _ = 1, n_targets do
          local n_fields = tonumber(ARGV[j + 3])
          local id = redis.call('XADD', ARGV[j], '*', unpack(ARGV, j + 4, j + 3 + n_fields))
          redis.call('HSET', ARGV[j + 1], id, job_id)
          redis.call('HSET', job, 'stage', ARGV[j + 2], 'entry', id)
          j = j + 4 + n_fields
        end
      elseif outcome == 'done' then
        end_job(job, job_id, 'done', 'result', value, now, ttl, stage)
      elseif outcome == 'expired' then
        end_job(job, job_id, 'expired', 'error', value, now, ttl, stage)
      elseif outcome ~= 'skip' then
        end_job(job, job_id, 'failed', 'error', value, now, ttl, stage)
      end
    end
    out[#out + 1] = 1
    tally[outcome] = tally[outcome] + 1
  end
end
for what, n in pairs(tally) do count(stats, stage, what, n) end
return out
"""
)

# Recovers entries idle past the visibility timeout: claims them for this consumer, or, past
# max_deliveries (or with their payload deleted), dead-letters them and fails their jobs.
# KEYS: stream, entries, dead stream, stats
# ARGV: group, consumer, min_idle_ms, count, max_deliveries, job_prefix, now, ttl, stage
# Answers {claimed entries, number dead-lettered}.
CLAIM = (
    _PRELUDE
    + """
local stream, entries, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local max, prefix, now, ttl, stage = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local claimed, n_dead = {}, 0
for _, p in ipairs(redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', ARGV[4])) do
  local entry, deliveries = p[1], tonumber(p[4])
  local found = redis.call('XRANGE', stream, entry, entry)
  local reason = nil
  if #found == 0 then
    reason = 'its stream entry was deleted before a worker finished it'
  elseif deliveries >= max then
    reason = 'dead-lettered after ' .. deliveries ..
      ' deliveries without finishing (the worker crashed or stalled on it each time)'
    redis.call('XADD', dead, 'MAXLEN', '~', 100000, '*', 'entry', entry, 'reason', reason,
      'deliveries', deliveries, unpack(found[1][2]))
  end
  if reason then
    local job_id = redis.call('HGET', entries, entry)
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', entries, entry)
    n_dead = n_dead + 1
    if job_id then
      local job = prefix .. job_id
      if LIVE[redis.call('HGET', job, 'status')] then
        end_job(job, job_id, 'failed', 'error', reason, now, ttl, stage)
      end
    end
  else
    local got = redis.call('XCLAIM', stream, group, consumer, min_idle, entry)
    if #got > 0 then claimed[#claimed + 1] = got[1] end
  end
end
count(stats, stage, 'redelivered', #claimed)
count(stats, stage, 'dead', n_dead)
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
  end_job(KEYS[1], ARGV[1], 'cancelled', 'error', 'cancelled', ARGV[2], ARGV[3], '')
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
