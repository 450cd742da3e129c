-- RUNNING: mark 'running' the jobs of a batch of new entries that has run long enough for it to
-- show (NOTE, which admitted them, does not write them: see start.lua); a job no longer queued
-- is left as it is.
--
-- KEYS: the jobs' keys
-- ARGV: when the batch began
for _, job in ipairs(KEYS) do
  if redis.call('HGET', job, 'status') == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'started_at', ARGV[1])
  end
end
return #KEYS
