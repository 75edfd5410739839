-- retry_later: inflight -> delayed (scored by due epoch ms), for leases still held; wakes consumers
-- so one sleeping past the new due time re-reads next_ready_ms. Due ids are promoted by promote_due
-- and by every dequeue.
-- KEYS: 1 inflight, 2 msg, 3 delayed, 4 wake.  ARGV: 1 wake tokens, 2 wake ttl ms, then pairs (member, due_ms).
-- Returns how many moved.
local moved = 0
for i = 3, #ARGV, 2 do
  local member, due = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local id = string.match(member, '^%d+:(.*)$')
    local state = redis.call('HGET', KEYS[2], id)
    if state then  -- always, while the member was in inflight; checked rather than assumed
      local _, q = parse_state(state)
      redis.call('HSET', KEYS[2], id, 'd:' .. q)
      redis.call('ZADD', KEYS[3], due, id)
      moved = moved + 1
    end
  end
end
wake(KEYS[4], moved, tonumber(ARGV[1]), tonumber(ARGV[2]))
return moved
