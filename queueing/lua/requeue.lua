-- REQUEUE: put a dead-lettered job back on the stage it died in, as if it had just been queued
-- there: its entry is added to the stage's stream again (with its deadline and format), its
-- record is live again (queued, that stage's attempts reset, no TTL, no error), and the dead
-- letter is deleted. From there the job runs and ends once, as any other.
--
-- The listeners of its waiters' channels remember the failure they were told of; a 'queued'
-- notice makes them forget it, so that a wait that starts now waits for the new end.
--
-- A job with a webhook goes back into its partition's pending set: its next end is delivered
-- too, even if the notifier misses that end's notice.
--
-- KEYS: dead-letter stream, stage stream, job key, stats, the partition's pending webhooks
-- ARGV: dead letter id, job id, stage, now
-- Answers {'requeued', new entry id}, {'gone'} (no such dead letter, or it names another job),
--   {'missing'} (the job's record has expired), or {'ended', status, stage} (the job is not
--   a failure of this stage now: requeued already, or ended otherwise).
local dead, stream, job, stats, webhooks = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local dead_id, job_id, stage, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local found = redis.call('XRANGE', dead, dead_id, dead_id)
if #found == 0 then return {'gone'} end
local fields, raw = {}, found[1][2]
for i = 1, #raw, 2 do fields[raw[i]] = raw[i + 1] end
if fields.job ~= job_id or fields.data == nil then return {'gone'} end

local state = redis.call('HMGET', job, 'status', 'final_stage', 'reply', 'pipeline', 'created_at',
  'webhook', 'lane')
if not state[1] then return {'missing'} end
if state[1] ~= 'failed' or state[2] ~= stage then return {'ended', state[1], state[2] or ''} end

local entry = add_entry(stream, job_id, fields.data, now, fields.dl or '', fields.fmt or '')
redis.call('HDEL', job, 'error', 'finished_at', 'final_stage', 'a:' .. stage)
redis.call('HSET', job, 'status', 'queued', 'stage', stage, 'entry', entry)
-- (a streamed job's next run restarts its chunk stream even if that stream has expired)
redis.call('HINCRBY', job, 'requeued', 1)
redis.call('PERSIST', job)
if state[6] and state[6] ~= '' then redis.call('SADD', webhooks, job_id) end
redis.call('XDEL', dead, dead_id)
count(stats, stage, 'requeued', 1)

local reply = state[3]
if reply and reply ~= '' then
  -- (the notice format of end_job, for a live job: no times, timings or value)
  local head = table.concat({job_id, 'queued', stage, state[4] or '', state[5] or '', '', '',
    0, 0, state[7] or 'normal'}, ' ') .. '\n'
  for channel in string.gmatch(reply, '%S+') do queue_notice(channel, head, '', '') end
  flush_notices()
end
return {'requeued', entry}
