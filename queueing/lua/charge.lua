-- CHARGE: the attempts of recovered entries at this stage, counting first the one each made in
-- a batch of new entries that NOTE admitted and that did not finish (its note is still in the
-- stream's started hash: see start.lua). A note is removed as it is counted, so an attempt is
-- counted once however often its entry is recovered. Answers each job's attempts at this stage
-- (0 for a job whose record is gone).
--
-- KEYS: the stream's started hash, then per entry: its job's key
-- ARGV: stage, then per entry: its id
local started, attempts_field = KEYS[1], 'a:' .. ARGV[1]
local answers = {}
for i = 2, #KEYS do
  local job = KEYS[i]
  local noted = redis.call('HDEL', started, ARGV[i]) == 1
  if noted and redis.call('EXISTS', job) == 1 then
    answers[i - 1] = redis.call('HINCRBY', job, attempts_field, 1)
  else
    answers[i - 1] = tonumber(redis.call('HGET', job, attempts_field)) or 0
  end
end
return answers
