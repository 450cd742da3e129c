-- WATCH: add a waiter's channel to a live job, so that its end wakes that waiter. Answers the
-- status (false if there is no such job).
--
-- KEYS: the job's key
-- ARGV: channel
local job = KEYS[1]
local channel = ARGV[1]
local state = redis.call('HMGET', job, 'status', 'reply')
local status, reply = state[1], state[2] or ''
if LIVE[status] and not string.find(' ' .. reply .. ' ', ' ' .. channel .. ' ', 1, true) then
  redis.call('HSET', job, 'reply', reply .. ' ' .. channel)
end
return status
