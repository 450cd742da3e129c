-- Shared by the scripts that add entries or end jobs (prepended to them by queueing/scripts.py).
--
-- A job's hash: status, pipeline, stage, created_at, reply (the waiters' channels), entry (its
-- current stream entry: '' while a fan-out's branches are in flight), started_at, timings (the
-- stages' timing objects, comma-joined), a:<stage> (attempts), ttl (seconds it is kept once
-- ended, if not the default), requeued (how often it was requeued from the dead letters), then
-- result or error, finished_at and final_stage once it has ended.

local LIVE = {queued = true, running = true}
local notices = {}

-- XADD one entry for a stage: the fields Message.decode reads.
local function add_entry(stream, job_id, data, now, deadline, fmt)
  if deadline == '' and fmt == '' then  -- (the usual entry, without a table to build)
    return redis.call('XADD', stream, '*', 'job', job_id, 'data', data, 'at', now)
  end
  local fields = {'job', job_id, 'data', data, 'at', now}
  if deadline ~= '' then fields[#fields + 1] = 'dl'; fields[#fields + 1] = deadline end
  if fmt ~= '' then fields[#fields + 1] = 'fmt'; fields[#fields + 1] = fmt end
  return redis.call('XADD', stream, '*', unpack(fields))
end

-- 'a' and 'b' joined by a comma (either may be empty).
local function joined(a, b)
  if a == '' or a == false then return b end
  if b == '' then return a end
  return a .. ',' .. b
end

local function queue_notice(channel, head, timings, value)
  local list = notices[channel]
  if not list then list = {}; notices[channel] = list end
  list[#list + 1] = head
  list[#list + 1] = timings
  list[#list + 1] = value
end

-- End a live job and queue its wake-up for every waiter's channel (sent by flush_notices). The
-- notice is the whole job document, so no waiter has to read the record back:
-- '<job> <status> <stage> <pipeline> <created_at> <started_at> <finished_at> <#timings> <#value>
-- <lane>\n' then the timings and the value (result JSON, or the error text).
-- state: the job's HMGET of status, reply, pipeline, created_at, started_at, timings, ttl, lane.
-- started: when a batch that ran it without START began (nil: START marked it, or it never ran),
-- written as its started_at if it has none.
local function end_job(job, job_id, state, status, value, now, ttl, stage, timing, started)
  local field = status == 'done' and 'result' or 'error'
  local timings = joined(state[6], timing)
  local started_at = state[5]
  if not started_at and started then
    started_at = started
    redis.call('HSET', job, 'status', status, field, value, 'finished_at', now, 'final_stage',
      stage, 'timings', timings, 'started_at', started_at)
  else
    redis.call('HSET', job, 'status', status, field, value, 'finished_at', now, 'final_stage',
      stage, 'timings', timings)
  end
  redis.call('EXPIRE', job, state[7] or ttl)
  local reply = state[2]
  if not reply or reply == '' then return end
  -- (kept as parts, joined once per channel by flush_notices: a value is copied once)
  local head = table.concat({job_id, status, stage, state[3] or '', state[4] or '',
    started_at or '', now, #timings, #value, state[8] or 'normal'}, ' ') .. '\n'
  if not string.find(reply, ' ', 1, true) then
    queue_notice(reply, head, timings, value)
  else
    for channel in string.gmatch(reply, '%S+') do queue_notice(channel, head, timings, value) end
  end
end

-- The fields end_job needs, in its order.
local function job_state(job)
  return redis.call('HMGET', job, 'status', 'reply', 'pipeline', 'created_at', 'started_at',
    'timings', 'ttl', 'lane')
end

-- One SPUBLISH per channel for all the wake-ups of this call (sharded pub/sub: the channel is
-- in this partition's slot, so in a cluster only this shard carries it).
local function flush_notices()
  for channel, list in pairs(notices) do
    redis.call('SPUBLISH', channel, table.concat(list))
  end
end

local function count(stats, stage, what, n)
  if n > 0 then redis.call('HINCRBY', stats, stage .. ':' .. what, n) end
end

-- An argument reader: each call returns the next ARGV slot, from 'first' on.
local function reader(first)
  local at = first - 1
  return function()
    at = at + 1
    return ARGV[at]
  end, function() return at < #ARGV end
end

-- The fence of FINISH and EMIT, for a whole batch at once: a function that says whether an
-- entry is pending on this consumer (not claimed by another since it was read).
local function fence(stream, group, consumer, lowest, highest, n_items)
  local held, limit = {}, n_items + 1000
  local range = redis.call('XPENDING', stream, group, lowest, highest, limit, consumer)
  for _, p in ipairs(range) do held[p[1]] = true end
  local full = #range == limit
  return function(entry)
    if held[entry] then return true end
    -- (only if the consumer holds more than was listed in that range)
    return full and #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) > 0
  end
end

-- The end of FINISH and EMIT: one XACK and one XDEL for the batch's entries that are done with
-- (in slices: Lua's unpack has a stack limit), and one HDEL of their notes in the stream's
-- started hash (FINISH: see start.lua), its tally counted, the waiters woken.
local function settle(stream, group, acked, stats, stage, tally, started)
  for first = 1, #acked, 1000 do
    local slice = {unpack(acked, first, math.min(first + 999, #acked))}
    redis.call('XACK', stream, group, unpack(slice))
    redis.call('XDEL', stream, unpack(slice))
    if started then redis.call('HDEL', started, unpack(slice)) end
  end
  for what, n in pairs(tally) do count(stats, stage, what, n) end
  flush_notices()
end
