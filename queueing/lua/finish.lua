-- FINISH: hand off or end each item of a batch and ack it, fenced: an entry no longer pending
-- on this consumer (another claimed it after a stall) is left alone, so a result is published
-- once. Answers 1 (done here) or 0 (fenced) per item.
--
-- A batch of new entries goes through NOTE, not START (see start.lua): its items' jobs may
-- still be 'queued'. An item that ran (it has a timing) gets the batch's start as its job's
-- started_at if it has none, and a job handed on is 'running' from then on. The items' notes in the
-- stream's started hash are cleared with their acks.
--
-- KEYS: stream, dead-letter stream, stats, the stream's started hash, then each item's job
--   key, then the keys its targets name (next stages' streams, join hashes)
-- ARGV: group, consumer, now, ttl, stage, lowest entry id, highest entry id, number of items,
--   started (when the batch began; '' none), then per item: entry id, job id, kind, value,
--   timing ('' none), deadline ('' none), then by kind:
--   next: n targets, then per target: stream slot in KEYS, stage
--   join: join hash slot, stream slot, join stage, branch name, number of branches
-- kind: done (value: the result) | failed, expired, dead (value: the reason) | skip (ack only)
--   | next (value: the data for the next stage(s)) | join (value: this branch's output)
local stream, dead, stats, started_hash = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, now, ttl, stage = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local lowest, highest, n_items = ARGV[6], ARGV[7], tonumber(ARGV[8])
local batch_started = ARGV[9] ~= '' and ARGV[9] or nil

local is_held = fence(stream, group, consumer, lowest, highest, n_items)

-- Hand the job on to the next stage(s), whose arguments start at ARGV[at].
local function hand_on(job, job_id, state, value, timing, deadline, at)
  local n = tonumber(ARGV[at])
  local entry, to = '', ARGV[at + 2]
  for t = 1, n do
    local target_stream = KEYS[tonumber(ARGV[at - 1 + 2 * t])]
    entry = add_entry(target_stream, job_id, value, now, deadline, '')
  end
  -- (a fan-out's branches are in flight at once: the job has no one current entry)
  redis.call('HSET', job, 'stage', to, 'entry', n == 1 and entry or '', 'timings',
    joined(state[6], timing), 'status', 'running', 'started_at', state[5] or batch_started or now)
end

-- Park a fan-out branch's output; the last branch in hands them all to the join stage. The
-- fence makes each branch arrive once, so the join is made once; a failed branch ended the
-- job, so a partial join never runs. Its arguments start at ARGV[at].
local function join(job, job_id, state, value, timing, deadline, at)
  local hash, target_stream = KEYS[tonumber(ARGV[at])], KEYS[tonumber(ARGV[at + 1])]
  local to, branch, fan_in = ARGV[at + 2], ARGV[at + 3], tonumber(ARGV[at + 4])
  redis.call('HSET', hash, branch, value)
  redis.call('EXPIRE', hash, ttl)
  local timings = joined(state[6], timing)
  if redis.call('HLEN', hash) < fan_in then
    redis.call('HSET', job, 'timings', timings)
    return
  end
  local parts = redis.call('HGETALL', hash)
  local doc = {}
  for p = 1, #parts, 2 do doc[#doc + 1] = '"' .. parts[p] .. '":' .. parts[p + 1] end
  redis.call('DEL', hash)
  local entry = add_entry(target_stream, job_id, '{' .. table.concat(doc, ',') .. '}', now,
    deadline, '')
  redis.call('HSET', job, 'stage', to, 'entry', entry, 'timings', timings)
end

local answers, acked = {}, {}
local tally = {done = 0, failed = 0, expired = 0, next = 0, join = 0, skip = 0, dead = 0, fenced = 0}
local at = 10
for i = 1, n_items do
  local job = KEYS[4 + i]
  local entry, job_id, kind, value, timing, deadline =
    ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  local targets_at = at + 6
  if kind == 'next' then
    at = targets_at + 1 + 2 * tonumber(ARGV[targets_at])
  elseif kind == 'join' then
    at = targets_at + 5
  else
    at = targets_at
  end
  if not is_held(entry) then
    answers[i] = 0
    tally.fenced = tally.fenced + 1
  else
    answers[i] = 1
    acked[#acked + 1] = entry
    tally[kind] = tally[kind] + 1
    if kind == 'dead' then
      local found = redis.call('XRANGE', stream, entry, entry)
      local fields = #found > 0 and found[1][2] or {}
      redis.call('XADD', dead, 'MAXLEN', '~', 100000, '*', 'entry', entry, 'reason', value,
        unpack(fields))
    end
    local state = job_id ~= '' and job_state(job)
    if state and LIVE[state[1]] then
      if kind == 'next' then
        hand_on(job, job_id, state, value, timing, deadline, targets_at)
      elseif kind == 'join' then
        join(job, job_id, state, value, timing, deadline, targets_at)
      else
        local started = timing ~= '' and batch_started or nil  -- (it ran in this batch)
        if kind == 'done' or kind == 'expired' then
          end_job(job, job_id, state, kind, value, now, ttl, stage, timing, started)
        elseif kind ~= 'skip' then
          end_job(job, job_id, state, 'failed', value, now, ttl, stage, timing, started)
        end
      end
    end
  end
end
settle(stream, group, acked, stats, stage, tally, started_hash)
return answers
