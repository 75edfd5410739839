-- enqueue: add messages, each at most once (the msg hash is the dedup set), and wake consumers.
-- KEYS: 1-6 rings, 7 msg, 8 delayed, 9 limits, 10 wake
-- ARGV: 1 prefix, 2 wake tokens, 3 wake ttl ms, 4 L = number of sender limits,
--       then L pairs (sender id "<channel>|<sender>", "<rate> <burst>"), then triples
--       (id, queue name, due epoch ms or '')
-- Returns how many ids were new.
local prefix = ARGV[1]
local rings = ring_table(1)
local msg, delayed, limits, wake_key = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local n_limits = tonumber(ARGV[4])
local first_item = 5 + 2 * n_limits

for i = 5, first_item - 1, 2 do
  redis.call('HSET', limits, ARGV[i], ARGV[i + 1])
end

local now = server_now_us()
local now_ms = math.floor(now / 1000)
-- A queue that enters its ring is "eligible since" now. Queues first seen in this call get now+1us,
-- now+2us, ... so they are served in the order they arrived (equal scores would be ordered by name).
local clock = now
local ringed = {}
local added = 0
for i = first_item, #ARGV, 3 do
  local id, q, due = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local later = due ~= nil and due > now_ms
  -- HSETNX is the dedup: an id already held anywhere (ready, delayed, inflight) is left alone, so
  -- reconcile may re-enqueue from PostgreSQL as often as it likes.
  if redis.call('HSETNX', msg, id, (later and 'd:' or 'r:') .. q) == 1 then
    added = added + 1
    if later then
      redis.call('ZADD', delayed, due, id)
    else
      redis.call('RPUSH', ready_key(prefix, q), id)
      if not ringed[q] then
        ringed[q] = true
        clock = clock + 1
        -- NX: a queue already in the ring keeps its place (its backlog does not earn a new turn).
        redis.call('ZADD', ring_of(rings, q), 'NX', clock, q)
      end
    end
  end
end

wake(wake_key, added, tonumber(ARGV[2]), tonumber(ARGV[3]))
return added
