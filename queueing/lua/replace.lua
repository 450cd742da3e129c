-- REPLACE: set a hash field only if it still holds what the caller read (compare and set),
-- so that two writers that read, merged and wrote at once cannot lose one's update. Answers
-- 1 (written) or 0 (it changed since: read again).
--
-- KEYS: the hash
-- ARGV: field, whether it was there when read ('1' / '0'), its value then, the new value
local hash = KEYS[1]
local field, was_there, before, value = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4]
local now = redis.call('HGET', hash, field)
if (now ~= false) ~= was_there or (was_there and now ~= before) then return 0 end
redis.call('HSET', hash, field, value)
return 1
