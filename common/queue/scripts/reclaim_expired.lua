-- reclaim_expired: inflight -> front of ready for up to `limit` leases past their deadline.
-- KEYS: 1-6 rings, 7 msg, 8 inflight, 9 wake.  ARGV: 1 prefix, 2 limit, 3 wake tokens, 4 wake ttl ms.
-- Returns how many moved.
local moved = reclaim_expired(ARGV[1], ring_table(1), KEYS[7], KEYS[8], server_now_us(), tonumber(ARGV[2]))
wake(KEYS[9], moved, tonumber(ARGV[3]), tonumber(ARGV[4]))
return moved
