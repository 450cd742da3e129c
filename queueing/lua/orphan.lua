-- ORPHAN: fail a live job whose current stream entry is gone (deleted from outside batchline,
-- e.g. by an XTRIM), so that it ends instead of waiting for ever. Waiters run it when a job has
-- been live for longer than the visibility timeout. Answers 1 if it failed the job, else 0.
--
-- KEYS: the job's key, the stream of the stage it is at
-- ARGV: job id, now, ttl
local job, stream = KEYS[1], KEYS[2]
local job_id, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local entry, stage = unpack(redis.call('HMGET', job, 'entry', 'stage'))
if not entry or entry == '' or #redis.call('XRANGE', stream, entry, entry) > 0 then
  return 0
end
local state = job_state(job)
if not LIVE[state[1]] then return 0 end
end_job(job, job_id, state, 'failed', 'its stream entry was deleted before a worker finished it',
  now, ttl, stage or '', '')
flush_notices()
return 1
