-- SUBMIT: queue the jobs of several requests for one pipeline in one partition. Each request
-- (a group of jobs) is all or none; groups are independent of each other.
--
-- KEYS: the first stage's stream, then each job's key, then each idempotency key used, then
--   (only with a webhook) the partition's set of jobs whose webhook is pending
-- ARGV: pipeline, stage, now, max_backlog, idem_ttl, reply channel, owner, retry, webhook ('' none),
--   lane ('' normal: the stream is that lane's; the record keeps it), then per group:
--   n jobs, keyed (1 if any job of the group has an idempotency key, else 0), then per job:
--   job id, idempotency key slot in KEYS (0: none), fingerprint, deadline ('' none),
--   fmt ('' json), data, result ttl ('' the default: FINISH's)
-- Answers per group: {'ok', kind, id, kind, id...} (kind 'queued' or 'existing'),
--   {'conflict', job id, index of the job in its group}, or {'full', backlog}.
--
-- retry is 1 when the client sends this call again because an earlier attempt failed in a way
-- that leaves unknown whether it ran (its reply was lost): job ids are made by the client, so a
-- job whose record exists was queued by that attempt, and is answered 'existing' instead of
-- being queued twice. (0 on a first attempt, which pays nothing for it.)
local stream = KEYS[1]
local pipeline, stage, now, max_backlog = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local idem_ttl, reply, owner, retry = ARGV[5], ARGV[6], ARGV[7], ARGV[8] == '1'
local webhook, lane = ARGV[9], ARGV[10]
local JOB_ARGS = 7

-- The job an idempotency key names, and the fingerprint of its input.
local function named_by(idem_slot)
  if idem_slot == 0 then return nil end
  local existing = redis.call('GET', KEYS[idem_slot])
  if not existing then return nil end
  local sep = string.find(existing, ' ', 1, true)
  return string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
end

-- Whether an earlier attempt of this call queued the job whose key is KEYS[slot].
local function made_before(slot)
  return retry and redis.call('EXISTS', KEYS[slot]) == 1
end

-- Queue the job whose arguments start at ARGV[at], its key KEYS[slot].
local function queue(slot, at)
  local id, deadline, fmt, data, ttl = ARGV[at], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5],
    ARGV[at + 6]
  local entry = add_entry(stream, id, data, now, deadline, fmt)
  if deadline == '' and owner == '' and ttl == '' and webhook == '' and lane == '' then  -- (usual)
    redis.call('HSET', KEYS[slot], 'status', 'queued', 'pipeline', pipeline, 'stage', stage,
      'created_at', now, 'reply', reply, 'entry', entry)
  else
    local record = {'status', 'queued', 'pipeline', pipeline, 'stage', stage,
      'created_at', now, 'reply', reply, 'entry', entry}
    if deadline ~= '' then record[#record + 1] = 'deadline'; record[#record + 1] = deadline end
    if owner ~= '' then record[#record + 1] = 'owner'; record[#record + 1] = owner end
    if ttl ~= '' then record[#record + 1] = 'ttl'; record[#record + 1] = ttl end
    if lane ~= '' then record[#record + 1] = 'lane'; record[#record + 1] = lane end
    if webhook ~= '' then
      record[#record + 1] = 'webhook'; record[#record + 1] = webhook
      -- (the notifier delivers it once the job has ended; its reply lists the notifier's channel)
      redis.call('SADD', KEYS[#KEYS], id)
    end
    redis.call('HSET', KEYS[slot], unpack(record))
  end
  return id
end

local backlog = redis.call('XLEN', stream)
local answers = {}
local slot, at = 1, 11  -- the KEYS slot of the last job's key; the next group's first ARGV
while at <= #ARGV do
  local n, keyed = tonumber(ARGV[at]), ARGV[at + 1] == '1'
  local first, first_slot = at + 2, slot + 1
  at, slot = first + n * JOB_ARGS, slot + n
  local answer, new = {'ok'}, n
  if keyed or retry then  -- which jobs exist already (a conflict refuses the whole group)
    new = 0
    for k = 1, n do
      local args = first + (k - 1) * JOB_ARGS
      local id, fp = named_by(tonumber(ARGV[args + 1]))
      if id and fp ~= ARGV[args + 2] then
        answer = {'conflict', id, k}
        break
      end
      if not id and not made_before(first_slot + k - 1) then new = new + 1 end
    end
  end
  if answer[1] == 'ok' and new > 0 and backlog + new > max_backlog then
    answer = {'full', tostring(backlog)}
  end
  if answer[1] == 'ok' then
    for k = 1, n do
      local args = first + (k - 1) * JOB_ARGS
      local idem = keyed and tonumber(ARGV[args + 1]) or 0
      -- (looked up again: a key repeated within the group names the job made for its first use)
      local id = named_by(idem)
      if not id and made_before(first_slot + k - 1) then id = ARGV[args] end
      if id then
        answer[#answer + 1] = 'existing'; answer[#answer + 1] = id
      else
        id = queue(first_slot + k - 1, args)
        if idem ~= 0 then redis.call('SET', KEYS[idem], id .. ' ' .. ARGV[args + 2], 'EX', idem_ttl) end
        backlog = backlog + 1
        answer[#answer + 1] = 'queued'; answer[#answer + 1] = id
      end
    end
  end
  answers[#answers + 1] = answer
end
return answers
