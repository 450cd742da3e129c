-- START: mark a batch's jobs running and count this stage's attempt on each (an entry started
-- max_attempts times without finishing is what crashed its workers). Answers per job: 'run',
-- 'dead' (too many attempts: finish it as dead), or the status that forbids running it
-- ('cancelled', 'expired', 'done', 'failed'; 'missing' if the record is gone).
--
-- KEYS: the jobs' keys
-- ARGV: now, stage, max_attempts
local now, stage, max_attempts = ARGV[1], ARGV[2], tonumber(ARGV[3])
local attempts_field = 'a:' .. stage
local answers = {}
for i, job in ipairs(KEYS) do
  local state = redis.call('HMGET', job, 'status', attempts_field)
  local status, attempts = state[1], tonumber(state[2]) or 0
  if status == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'started_at', now, attempts_field, 1)
    answers[i] = 'run'
  elseif status == 'running' and attempts >= max_attempts then
    answers[i] = 'dead'
  elseif status == 'running' then
    redis.call('HSET', job, attempts_field, attempts + 1)
    answers[i] = 'run'
  else
    answers[i] = status or 'missing'
  end
end
return answers
