-- ack: the processor committed these entries' recomputes; forget them, and free what nobody needs any more.
-- KEYS: 1 stream.  ARGV: 1 group, 2... entry ids.
-- Trims below the oldest entry still pending (read, not acked: another processor's batch, or a dead one's
-- waiting to be reclaimed), else below the last delivered entry, which stays as the mark read.lua checks
-- against. So memory is the unread backlog plus what is in flight; XADD's MAXLEN ~ is only the cap for a
-- processor that stopped. Returns how many were acked (0 if Redis lost the stream or group meanwhile:
-- read.lua tells the processor).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local delivered = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] elseif group[i] == 'last-delivered-id' then last = group[i + 1] end
  end
  if name == ARGV[1] then delivered = last end
end
if delivered == nil then return 0 end
local acked = 0
if #ARGV > 1 then
  acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
end
local floor = delivered
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
if summary[1] > 0 then floor = summary[2] end
if floor ~= '0-0' then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
end
return acked
