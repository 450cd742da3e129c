-- TOUCH (the heartbeat): reset the idle time of the entries still pending on this consumer,
-- so a slow batch is not taken for a dead one. Entries another consumer claimed meanwhile are
-- left alone. Answers how many were touched.
--
-- KEYS: stream
-- ARGV: group, consumer, lowest entry id, highest entry id, entry ids...
local stream = KEYS[1]
local group, consumer, lowest, highest = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local mine = {}
for _, p in ipairs(redis.call('XPENDING', stream, group, lowest, highest, #ARGV + 1000, consumer)) do
  if wanted[p[1]] then mine[#mine + 1] = p[1] end
end
for first = 1, #mine, 1000 do
  local args = {stream, group, consumer, 0, unpack(mine, first, math.min(first + 999, #mine))}
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return #mine
