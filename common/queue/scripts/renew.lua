-- renew: push lease deadlines to now + lease_ms, only for leases still held (ZADD XX never
-- resurrects a lease that was reclaimed or acked).
-- KEYS: 1 inflight.  ARGV: 1 lease_ms, then inflight members.
-- Returns how many are still held.
local deadline = math.floor(server_now_us() / 1000) + tonumber(ARGV[1])
local held = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
    held = held + 1
  end
end
return held
