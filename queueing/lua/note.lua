-- NOTE: a batch of new entries of one stream begins to run. Instead of START's two writes per
-- job, one HSET notes the entries in the stream's started hash (field: entry id), where they
-- stay until FINISH acks them: should the worker die first, CHARGE counts the attempt when
-- they are recovered (see start.lua). Answers per job 'run' (it is live: run it), or the
-- status that forbids running it ('cancelled', 'expired', 'done', 'failed'; 'missing' if the
-- record is gone). Only the entries to run are noted.
--
-- KEYS: the stream's started hash, then the jobs' keys
-- ARGV: per job: its entry id
local started = KEYS[1]
local answers, fields = {}, {}
for i = 2, #KEYS do
  local status = redis.call('HGET', KEYS[i], 'status')
  if LIVE[status] then
    answers[i - 1] = 'run'
    fields[#fields + 1] = ARGV[i - 1]
    fields[#fields + 1] = '1'
  else
    answers[i - 1] = status or 'missing'
  end
end
for first = 1, #fields, 1000 do
  redis.call('HSET', started, unpack(fields, first, math.min(first + 999, #fields)))
end
return answers
