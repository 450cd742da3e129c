-- START: mark a batch's jobs running and count this stage's attempt on each (an entry started
-- max_attempts times without finishing is what crashed its workers). Answers per job: 'run',
-- 'dead' (too many attempts: finish it as dead), or the status that forbids running it
-- ('cancelled', 'expired', 'done', 'failed'; 'missing' if the record is gone).
--
-- Only recovered entries (a dead consumer's, or this consumer's from a previous life) and
-- streaming stages' go through START. A batch of new entries goes through NOTE (note.lua):
-- it checks the jobs' status as START does, but notes the entries in their stream's started
-- hash (one HSET for the batch) instead of writing each job, and FINISH clears the notes. A
-- note still there when its entry is recovered is an attempt that START did not count:
-- CHARGE (charge.lua) counts it then, once. The jobs show 'running' if the batch runs long
-- enough (RUNNING: running.lua), and FINISH writes their started_at.
--
-- KEYS: the jobs' keys
-- ARGV: now, stage, max_attempts
local now, stage, max_attempts = ARGV[1], ARGV[2], tonumber(ARGV[3])
local attempts_field = 'a:' .. stage
local answers = {}
for i, job in ipairs(KEYS) do
  local state = redis.call('HMGET', job, 'status', attempts_field)
  local status, attempts = state[1], tonumber(state[2]) or 0
  if not LIVE[status] then
    answers[i] = status or 'missing'
  elseif attempts >= max_attempts then
    answers[i] = 'dead'
  elseif status == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'started_at', now, attempts_field, attempts + 1)
    answers[i] = 'run'
  else
    redis.call('HSET', job, attempts_field, attempts + 1)
    answers[i] = 'run'
  end
end
return answers
