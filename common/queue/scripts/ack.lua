-- ack: the consumer is done with these leases; forget the messages entirely.
-- KEYS: 1 inflight, 2 msg.  ARGV: inflight members ("<seq>:<id>").
-- A member no longer in inflight (reclaimed, possibly leased again to someone else, or removed) is
-- skipped: the old holder must not delete the new holder's lease. While "<seq>:<id>" is in inflight
-- the msg state of id is "<seq>:..." (every script keeps the two together), so HDEL is safe.
-- Returns how many were acked.
local acked = 0
for i = 1, #ARGV do
  local member = ARGV[i]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local id = string.match(member, '^%d+:(.*)$')
    redis.call('HDEL', KEYS[2], id)
    acked = acked + 1
  end
end
return acked
