-- FINISH: hand off or end each item of a batch and ack it, fenced: an entry no longer pending
-- on this consumer (another claimed it after a stall) is left alone, so a result is published
-- once. Answers 1 (done here) or 0 (fenced) per item.
--
-- KEYS: stream, dead-letter stream, stats, then each item's job key, then the keys its
--   targets name (next stages' streams, join hashes)
-- ARGV: group, consumer, now, ttl, stage, lowest entry id, highest entry id, then per item:
--   entry id, job id, kind, value, timing ('' none), deadline ('' none), then by kind:
--   next: n targets, then per target: stream slot in KEYS, stage
--   join: join hash slot, stream slot, join stage, branch name, number of branches
-- kind: done (value: the result) | failed, expired, dead (value: the reason) | skip (ack only)
--   | next (value: the data for the next stage(s)) | join (value: this branch's output)
local stream, dead, stats = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, now, ttl, stage = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local lowest, highest = ARGV[6], ARGV[7]
local arg, more = reader(8)

local items = {}
while more() do
  local item = {key = KEYS[3 + #items + 1], entry = arg(), job_id = arg(), kind = arg(),
    value = arg(), timing = arg(), deadline = arg()}
  if item.kind == 'next' then
    item.targets = {}
    for t = 1, tonumber(arg()) do
      item.targets[t] = {stream = KEYS[tonumber(arg())], stage = arg()}
    end
  elseif item.kind == 'join' then
    item.join = KEYS[tonumber(arg())]
    item.stream, item.stage, item.branch, item.fan_in = KEYS[tonumber(arg())], arg(), arg(),
      tonumber(arg())
  end
  items[#items + 1] = item
end

-- The fence, for the whole batch at once: which of its entries are pending on this consumer.
local held = {}
local range = redis.call('XPENDING', stream, group, lowest, highest, #items + 1000, consumer)
for _, p in ipairs(range) do held[p[1]] = true end
local range_full = #range == #items + 1000
local function is_held(entry)
  if held[entry] then return true end
  -- (only if the consumer holds more than was listed in that range)
  return range_full and #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) > 0
end

-- The job's current stage (and entry), with this stage's timing added.
local function moved(item, state, to, entry)
  redis.call('HSET', item.key, 'stage', to, 'entry', entry, 'timings', joined(state[6], item.timing))
end

local answers, acked = {}, {}
local tally = {done = 0, failed = 0, expired = 0, next = 0, join = 0, skip = 0, dead = 0, fenced = 0}
for i, item in ipairs(items) do
  if not is_held(item.entry) then
    answers[i] = 0
    tally.fenced = tally.fenced + 1
  else
    answers[i] = 1
    acked[#acked + 1] = item.entry
    tally[item.kind] = tally[item.kind] + 1
    if item.kind == 'dead' then
      local found = redis.call('XRANGE', stream, item.entry, item.entry)
      local fields = #found > 0 and found[1][2] or {}
      redis.call('XADD', dead, 'MAXLEN', '~', 100000, '*', 'entry', item.entry, 'reason',
        item.value, unpack(fields))
    end
    local state = item.job_id ~= '' and job_state(item.key)
    if state and LIVE[state[1]] then
      if item.kind == 'next' then
        -- (a fan-out's branches are in flight at once: the job has no one current entry)
        local entry = ''
        for _, target in ipairs(item.targets) do
          entry = add_entry(target.stream, item.job_id, item.value, now, item.deadline, '')
        end
        moved(item, state, item.targets[1].stage, #item.targets == 1 and entry or '')
      elseif item.kind == 'join' then
        -- The fence makes each branch arrive once, so the join is made once, when the last
        -- branch is in; a failed branch ended the job, so a partial join never runs.
        redis.call('HSET', item.join, item.branch, item.value)
        redis.call('EXPIRE', item.join, ttl)
        if redis.call('HLEN', item.join) == item.fan_in then
          local parts = redis.call('HGETALL', item.join)
          local doc = {}
          for p = 1, #parts, 2 do
            doc[#doc + 1] = '"' .. parts[p] .. '":' .. parts[p + 1]
          end
          redis.call('DEL', item.join)
          local data = '{' .. table.concat(doc, ',') .. '}'
          moved(item, state, item.stage, add_entry(item.stream, item.job_id, data, now,
            item.deadline, ''))
        else
          redis.call('HSET', item.key, 'timings', joined(state[6], item.timing))
        end
      elseif item.kind == 'done' or item.kind == 'expired' then
        end_job(item.key, item.job_id, state, item.kind, item.value, now, ttl, stage, item.timing)
      elseif item.kind ~= 'skip' then
        end_job(item.key, item.job_id, state, 'failed', item.value, now, ttl, stage, item.timing)
      end
    end
  end
end
-- One XACK and one XDEL for the batch (in slices: Lua's unpack has a stack limit).
for first = 1, #acked, 1000 do
  local slice = {unpack(acked, first, math.min(first + 999, #acked))}
  redis.call('XACK', stream, group, unpack(slice))
  redis.call('XDEL', stream, unpack(slice))
end
for what, n in pairs(tally) do count(stats, stage, what, n) end
flush_notices()
return answers
