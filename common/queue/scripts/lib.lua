-- lib.lua: helpers every queue script shares. Not a script on its own: the loader prepends it to
-- each script's source (Redis 6.2 has no FUNCTION libraries), so every helper is a `local`.
--
-- Conventions
--   prefix      ARGV[1] of scripts that build keys: "{p}" (the hash tag). Per-queue keys (ready lists,
--               sender buckets) are built here from it. That is Cluster-safe: they carry the same hash
--               tag, so they live in the same slot as the KEYS the script was given. They cannot be
--               passed in KEYS because which ones a script touches is only known while it runs.
--   queue name  "<lane>:<channel>:<church>:<sender>" (sender last, may contain ':').
--   sender id   "<channel>|<sender>": one sender's token bucket and its field in the limits hash are
--               per channel (a number's SMS and MMS rates differ), built from the queue name served.
--   msg state   HASH msg: id -> "<tok>:<queue name>", tok = 'r' (ready), 'd' (delayed) or the lease
--               sequence number (inflight, then the inflight ZSET holds "<seq>:<id>").
--   time        always Redis TIME (the callers' clocks may disagree). Effects replication (the
--               default since Redis 5) makes writes after TIME safe to replicate.

local LANES = {'conv', 'bulk'}
local CHANNELS = {'sms', 'mms', 'mail'}

local function server_now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Lua's tostring() prints numbers with 14 significant digits: epoch microseconds (16 digits) and
-- big counters must be formatted explicitly whenever we build a string from them. (Numbers passed
-- straight to redis.call are formatted with 17 digits by Redis itself, so those are exact.)
local function int(x)
  return string.format('%.0f', x)
end

local function parse_queue(q)
  return string.match(q, '^([^:]+):([^:]+):([^:]+):(.+)$')
end

local function parse_state(state)
  return string.match(state, '^([^:]+):(.+)$')
end

local function ready_key(prefix, q)
  return prefix .. ':q:ready:' .. q
end

-- The same name as common/queue/keys.py sender_id(): "<channel>|<sender>".
local function sender_id(channel, sender)
  return channel .. '|' .. sender
end

-- KEYS[first .. first+5] are the rings in the fixed order (conv sms, conv mms, conv mail, bulk sms,
-- bulk mms, bulk mail); returns "<lane>:<channel>" -> key.
local function ring_table(first)
  local rings = {}
  local i = first
  for _, lane in ipairs(LANES) do
    for _, channel in ipairs(CHANNELS) do
      rings[lane .. ':' .. channel] = KEYS[i]
      i = i + 1
    end
  end
  return rings
end

local function ring_of(rings, q)
  local lane, channel = parse_queue(q)
  return rings[lane .. ':' .. channel]
end

-- Push up to `n` wake tokens (at most `cap` kept) for consumers blocked in BLPOP; the list expires
-- when nobody consumes it, so an idle queue leaves nothing behind.
local function wake(key, n, cap, ttl_ms)
  if n <= 0 then return end
  if n > cap then n = cap end
  local tokens = {}
  for i = 1, n do tokens[i] = '1' end
  redis.call('LPUSH', key, unpack(tokens))
  redis.call('LTRIM', key, 0, cap - 1)
  redis.call('PEXPIRE', key, ttl_ms)
end

-- delayed -> ready for ids due by now. A promoted id goes to the BACK of its ready list (it joins
-- the queue at its due time like a new message) and its queue enters the ring as eligible since the
-- due time (NX: a queue already waiting keeps its place).
local function promote_due(prefix, rings, msg, delayed, now_us, limit)
  local now_ms = math.floor(now_us / 1000)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, limit)
  local moved = 0
  for i = 1, #due, 2 do
    local id, due_ms = due[i], tonumber(due[i + 1])
    redis.call('ZREM', delayed, id)
    local state = redis.call('HGET', msg, id)
    if state then
      local tok, q = parse_state(state)
      if tok == 'd' then
        redis.call('RPUSH', ready_key(prefix, q), id)
        redis.call('HSET', msg, id, 'r:' .. q)
        redis.call('ZADD', ring_of(rings, q), 'NX', due_ms * 1000, q)
        moved = moved + 1
      end
    end
  end
  return moved
end

-- inflight -> ready for leases whose deadline has passed (the consumer died or stalled). The id goes
-- to the FRONT of its ready list: it has waited longest. Its queue is put at the front of the ring
-- too: scored by the lease deadline (in the past), LT so a queue that has waited even longer keeps
-- its place. Processing the latest deadline first leaves the oldest lease frontmost in each list.
-- A member whose id no longer carries this lease sequence (removed) is just dropped.
local function reclaim_expired(prefix, rings, msg, inflight, now_us, limit)
  local now_ms = math.floor(now_us / 1000)
  local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, limit)
  local moved = 0
  for i = #expired - 1, 1, -2 do
    local member, deadline_ms = expired[i], tonumber(expired[i + 1])
    redis.call('ZREM', inflight, member)
    local seq, id = string.match(member, '^(%d+):(.*)$')
    local state = id and redis.call('HGET', msg, id)
    if state then
      local tok, q = parse_state(state)
      if tok == seq then
        redis.call('LPUSH', ready_key(prefix, q), id)
        redis.call('HSET', msg, id, 'r:' .. q)
        redis.call('ZADD', ring_of(rings, q), 'LT', deadline_ms * 1000, q)
        moved = moved + 1
      end
    end
  end
  return moved
end

-- Token buckets as GCRA (generic cell rate algorithm): the state is one number, the "theoretical
-- arrival time" (tat, epoch us) of the next unit. With emission interval T = 1e6/rate us and
-- tolerance tau = (burst-1)*T, n units may go at `now` iff max(tat,now) + (n-1)*T - now <= tau.
-- Taking n sets tat = max(tat,now) + n*T. With burst 1 two units are never closer than T, so a
-- sender at 10/s never has more than 10 in any 1 s window. tat is rounded UP to whole us (never
-- faster than the limit). The key expires exactly when its state becomes the same as a fresh one
-- (tat <= now), so idle senders leave nothing behind.
local function bucket_load(key, rate, burst)
  local T = 1000000 / rate
  return {key = key, T = T, tau = (burst - 1) * T, tat = tonumber(redis.call('GET', key)) or 0, dirty = false}
end

-- How many may go now; when none, also the epoch us when one may.
local function bucket_room(b, now)
  local tat = b.tat
  if tat < now then tat = now end
  local room = b.tau - (tat - now)
  if room < 0 then return 0, tat - b.tau end
  return math.floor(room / b.T) + 1, now
end

local function bucket_take(b, now, n)
  local tat = b.tat
  if tat < now then tat = now end
  b.tat = math.ceil(tat + n * b.T)
  b.dirty = true
end

-- Epoch us when the next unit may go (may be in the past: tokens available).
local function bucket_next(b)
  return b.tat - b.tau
end

local function bucket_save(b, now)
  if b.dirty and b.tat > now then
    redis.call('SET', b.key, int(b.tat), 'PX', math.ceil((b.tat - now) / 1000) + 1)
  end
end
