-- EMIT: one step of a streaming stage for the items of a batch still streaming: per item, a
-- chunk on the job's chunk stream, and (the item's last step) the job's end, its terminal
-- `end` entry and the ack of its input entry. Fenced like FINISH: an entry no longer pending
-- on this consumer (another claimed it) gets nothing written. Safe to repeat after a lost
-- reply: a chunk already on the stream (same run, same or later seq) is not written again,
-- nor a restart or an `end` after one.
--
-- Chunk stream entries (field k): chunk (seq, a: attempt, e: input entry id, data: JSON) |
-- restart (a, e: the run that starts over: readers drop what earlier runs wrote) | end
-- (status, and error unless done). A run is one attempt on one input entry: the attempt
-- number alone repeats once a dead letter is requeued (its attempts count from 1 again, on a
-- new entry). A run's first write is a restart when the stream's last entry is another run's,
-- or when there is none but the job ran before (attempt > 1, or requeued: the stream expired
-- meanwhile). The stream lives `ttl` seconds after its last write while the job runs; an end
-- written here gives it the job's record's TTL. (A job that ends elsewhere: dead-lettered,
-- expired, cancelled while queued, gets no end, and keeps the running TTL.)
--
-- Answers per item: 'ok'; 'fenced' (another consumer holds it now); 'ended' (no longer
-- pending, and its job ended by this very step, at `now`: the retry of a step whose reply was
-- lost); or the status of a job no longer live (cancelled while it streamed, say): its entry
-- is acked and its stream ended; stop running it.
--
-- KEYS: stream, stats, then per item: job key, chunk stream key
-- ARGV: group, consumer, now, ttl, stage, lowest entry id, highest entry id, number of items,
--   then per item: entry id, job id, first ('1': this attempt's first write), seq ('' no
--   chunk), data, end ('' | 'done' | 'failed'), value (the result, or the reason), timing
local stream, stats = KEYS[1], KEYS[2]
local group, consumer, now, ttl, stage = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local lowest, highest, n_items = ARGV[6], ARGV[7], tonumber(ARGV[8])

local is_held = fence(stream, group, consumer, lowest, highest, n_items)

-- The last entry of a chunk stream as a table of its fields (empty if there is none).
local function last_entry(chunks)
  local found = redis.call('XREVRANGE', chunks, '+', '-', 'COUNT', 1)
  local fields = {}
  if #found > 0 then
    local raw = found[1][2]
    for f = 1, #raw, 2 do fields[raw[f]] = raw[f + 1] end
  end
  return fields
end

local function end_stream(chunks, last, status, error, keep)
  if last.k ~= 'end' then
    if status == 'done' then
      redis.call('XADD', chunks, '*', 'k', 'end', 'status', status)
    else
      redis.call('XADD', chunks, '*', 'k', 'end', 'status', status, 'error', error)
    end
  end
  redis.call('EXPIRE', chunks, keep)
end

local answers, acked = {}, {}
local tally = {done = 0, failed = 0, skip = 0, fenced = 0}
local at = 9
for i = 1, n_items do
  local job, chunks = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local entry, job_id, first, seq, data, finish, value, timing =
    ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5],
    ARGV[at + 6], ARGV[at + 7]
  at = at + 8
  local held = is_held(entry)
  local ended = not held and finish ~= '' and redis.call('HMGET', job, 'status', 'finished_at')
  if ended and ended[1] == finish and ended[2] == now then
    answers[i] = 'ended'
  elseif not held then
    answers[i] = 'fenced'
    tally.fenced = tally.fenced + 1
  else
    local state = job_state(job)
    local keep = state[7] or ttl
    local last = last_entry(chunks)
    if not LIVE[state[1]] then
      -- Ended meanwhile (cancelled): stop streaming it.
      answers[i] = state[1] or 'missing'
      acked[#acked + 1] = entry
      tally.skip = tally.skip + 1
      if state[1] then end_stream(chunks, last, state[1], state[1], keep) end
    else
      answers[i] = 'ok'
      local run = redis.call('HMGET', job, 'a:' .. stage, 'requeued')
      local attempt = run[1] or '1'
      local this_run = last.a == attempt and last.e == entry
      if first == '1' and not this_run and (last.k or attempt ~= '1' or run[2]) then
        redis.call('XADD', chunks, '*', 'k', 'restart', 'a', attempt, 'e', entry)
        last, this_run = {k = 'restart', a = attempt, e = entry}, true
      end
      if seq ~= '' and not (last.k == 'chunk' and this_run
          and tonumber(last.seq) >= tonumber(seq)) then
        redis.call('XADD', chunks, '*', 'k', 'chunk', 'seq', seq, 'a', attempt, 'e', entry,
          'data', data)
      end
      if finish ~= '' then
        end_job(job, job_id, state, finish, value, now, ttl, stage, timing)
        end_stream(chunks, last, finish, value, keep)
        acked[#acked + 1] = entry
        tally[finish] = tally[finish] + 1
      elseif seq ~= '' or first == '1' then
        redis.call('EXPIRE', chunks, ttl)
      end
    end
  end
end
settle(stream, group, acked, stats, stage, tally)
return answers
