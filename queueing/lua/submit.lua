-- SUBMIT: queue the jobs of several requests for one pipeline in one partition. Each request
-- (a group of jobs) is all or none; groups are independent of each other.
--
-- KEYS: the first stage's stream, then each job's key, then each idempotency key used
-- ARGV: pipeline, stage, now, max_backlog, idem_ttl, reply channel, owner, then per group:
--   n jobs, then per job: job id, idempotency key slot in KEYS (0: none), fingerprint,
--   deadline ('' none), fmt ('' json), data
-- Answers per group: {'ok', kind, id, kind, id...} (kind 'queued' or 'existing'),
--   {'conflict', job id, index of the job in its group}, or {'full', backlog}.
local stream = KEYS[1]
local pipeline, stage, now, max_backlog = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local idem_ttl, reply, owner = ARGV[5], ARGV[6], ARGV[7]
local arg, more = reader(8)

-- The job an idempotency key names, and the fingerprint of its input.
local function named_by(idem_slot)
  if idem_slot == 0 then return nil end
  local existing = redis.call('GET', KEYS[idem_slot])
  if not existing then return nil end
  local sep = string.find(existing, ' ', 1, true)
  return string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
end

local backlog = redis.call('XLEN', stream)
local answers = {}
local job_slot = 1
while more() do
  local jobs = {}
  for k = 1, tonumber(arg()) do
    job_slot = job_slot + 1
    jobs[k] = {key = KEYS[job_slot], id = arg(), idem = tonumber(arg()), fp = arg(),
      deadline = arg(), fmt = arg(), data = arg()}
  end
  local answer, new = {'ok'}, 0
  for k, job in ipairs(jobs) do
    local id, fp = named_by(job.idem)
    if id and fp ~= job.fp then
      answer = {'conflict', id, k}
      break
    end
    if not id then new = new + 1 end
  end
  if answer[1] == 'ok' and new > 0 and backlog + new > max_backlog then
    answer = {'full', tostring(backlog)}
  end
  if answer[1] == 'ok' then
    for _, job in ipairs(jobs) do
      -- (looked up again: a key repeated within the group names the job made for its first use)
      local id = named_by(job.idem)
      if id then
        answer[#answer + 1] = 'existing'; answer[#answer + 1] = id
      else
        local entry = add_entry(stream, job.id, job.data, now, job.deadline, job.fmt)
        local record = {'status', 'queued', 'pipeline', pipeline, 'stage', stage,
          'created_at', now, 'reply', reply, 'entry', entry}
        if job.deadline ~= '' then
          record[#record + 1] = 'deadline'; record[#record + 1] = job.deadline
        end
        if owner ~= '' then
          record[#record + 1] = 'owner'; record[#record + 1] = owner
        end
        redis.call('HSET', job.key, unpack(record))
        if job.idem ~= 0 then
          redis.call('SET', KEYS[job.idem], job.id .. ' ' .. job.fp, 'EX', idem_ttl)
        end
        backlog = backlog + 1
        answer[#answer + 1] = 'queued'; answer[#answer + 1] = job.id
      end
    end
  end
  answers[#answers + 1] = answer
end
return answers
