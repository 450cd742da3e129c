-- CANCEL: end a live job as cancelled (a queued one never reaches a model). Answers the status
-- it had (false if there is no such job).
--
-- KEYS: the job's key
-- ARGV: job id, now, ttl
local job = KEYS[1]
local job_id, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local state = job_state(job)
if LIVE[state[1]] then
  end_job(job, job_id, state, 'cancelled', 'cancelled', now, ttl, '', '')
  flush_notices()
end
return state[1]
