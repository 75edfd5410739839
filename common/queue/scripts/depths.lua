-- depths: sizes for monitoring. O(number of non-empty ready queues): it walks the rings (every
-- non-empty ready list is in exactly one ring). Monitoring calls only; not on a hot path.
-- KEYS: 1-6 rings, 7 delayed, 8 inflight.  ARGV: 1 prefix.
-- Returns {ready conv, ready bulk, delayed, inflight, distinct churches with ready work}.
local ready = {0, 0}
local churches, n_churches = {}, 0
for lane = 1, 2 do
  for c = 1, 3 do
    local queues = redis.call('ZRANGE', KEYS[(lane - 1) * 3 + c], 0, -1)
    for _, q in ipairs(queues) do
      ready[lane] = ready[lane] + redis.call('LLEN', ready_key(ARGV[1], q))
      local _, _, church = parse_queue(q)
      if not churches[church] then
        churches[church] = true
        n_churches = n_churches + 1
      end
    end
  end
end
return {ready[1], ready[2], redis.call('ZCARD', KEYS[7]), redis.call('ZCARD', KEYS[8]), n_churches}
