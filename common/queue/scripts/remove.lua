-- remove: forget ids wherever they are (cancelled). Returns how many were held.
-- KEYS: 1-6 rings, 7 msg, 8 delayed, 9 inflight.  ARGV: 1 prefix, 2 eager limit, then message ids.
-- Delayed and inflight entries go at once (O(log n)). An id in a ready list goes at once only when
-- the list is short (at most `eager limit` entries): LREM scans the list, and cancelling a
-- 20,000-message broadcast one LREM per id would be 20,000 scans of 20,000 entries. In a longer list
-- removal is LAZY: only the msg state goes, the list keeps a tombstone, and dequeue drops it when
-- popped (a popped id counts only if its state says "ready in this queue").
local prefix, eager = ARGV[1], tonumber(ARGV[2])
local rings = ring_table(1)
local msg, delayed, inflight = KEYS[7], KEYS[8], KEYS[9]
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local state = redis.call('HGET', msg, id)
  if state then
    local tok, q = parse_state(state)
    if tok == 'd' then
      redis.call('ZREM', delayed, id)
    elseif tok == 'r' then
      local key = ready_key(prefix, q)
      if redis.call('LLEN', key) <= eager then
        redis.call('LREM', key, 0, id)
        if redis.call('EXISTS', key) == 0 then redis.call('ZREM', ring_of(rings, q), q) end
      end
    else
      redis.call('ZREM', inflight, tok .. ':' .. id)
    end
    redis.call('HDEL', msg, id)
    removed = removed + 1
  end
end
return removed
