-- dequeue: lease up to max_items messages, conversational lane first, round-robin across queues
-- (one queue = one church's messages from one sender on one channel), within sender and account
-- token buckets. One call, one round trip, however many messages.
--
-- KEYS: 1-6 rings (conv sms, conv mms, conv mail, bulk sms, bulk mms, bulk mail), 7 msg, 8 delayed,
--       9 inflight, 10 limits, 11 seq, 12-14 account buckets (sms, mms, mail)
-- ARGV: 1 prefix, 2 max_items, 3 lease_ms, 4 default sender rate, 5 default sender burst,
--       6-8 account rates (sms, mms, mail), 9-11 account bursts, 12 visit limit,
--       13 housekeeping limit, 14 discard limit
-- Returns {now_ms, next_ready_ms or -1, lease seq or '', then per served queue: name, n, n ids}.
--
-- Sender buckets are per (channel, sender): "<channel>|<sender>" names both the bucket key and the
-- rate's field in the limits hash, so one number's MMS (say 1/s) and SMS (10/s) are limited apart and
-- a parked MMS queue never spends or waits on the number's SMS tokens.
--
-- How a batch is chosen
--   Each (lane, channel) has a ring: a ZSET of queue names scored by "eligible since" (epoch us).
--   The lowest score goes next. A served queue is re-scored to the later of "now" and its sender's
--   next token, so it goes BEHIND every queue that has been waiting: round-robin. A church with a
--   20,000-message backlog therefore gets one message per round like everyone else; a church that
--   enqueues one message waits at most one round (one message per queue ahead of it).
--   The three rings of a lane are merged by score. Rings are per channel, not per lane, so that an
--   account bucket with no tokens (say, MMS) parks its whole ring at once by skipping it, instead of
--   re-scoring every MMS queue one by one while SMS queues wait behind them.
--
--   Within one call "now" is fixed, so a virtual clock advances 1 us per visit: the queue just
--   served gets the current clock value and sorts behind queues served earlier in this call. The
--   clock only orders the ring; bucket arithmetic always uses the real server time.
--
--   A queue whose sender has no token is parked: re-scored to when its next token is due. It never
--   blocks queues behind it, and it is not looked at again until it could be served.
--
--   One message per visit keeps the rotation exact. When the served queue is the only eligible one
--   (nothing else could be taken now), taking one and coming straight back to it would be the same
--   rotation, so it takes as many as its tokens and the batch allow in one go.
local prefix = ARGV[1]
local max_items = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local default_rate, default_burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local visit_limit = tonumber(ARGV[12])
local housekeeping = tonumber(ARGV[13])
local discard_limit = tonumber(ARGV[14])
local rings = ring_table(1)
local msg, delayed, inflight, limits, seq_key = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]

local now = server_now_us()
local now_ms = math.floor(now / 1000)

-- Housekeeping first, bounded: the queue keeps moving with consumers alone (no scheduler tick
-- needed for due retries or for leases of a consumer that died).
promote_due(prefix, rings, msg, delayed, now, housekeeping)
reclaim_expired(prefix, rings, msg, inflight, now, housekeeping)

local accounts = {}
for c = 1, 3 do
  accounts[c] = bucket_load(KEYS[11 + c], tonumber(ARGV[5 + c]), tonumber(ARGV[8 + c]))
end
local senders = {}          -- sender id ("<channel>|<sender>") -> its bucket, loaded once per call
local function sender_bucket(channel, sender)
  local id = sender_id(channel, sender)
  local b = senders[id]
  if not b then
    local rate, burst = default_rate, default_burst
    local spec = redis.call('HGET', limits, id)
    if spec then
      local r, n = string.match(spec, '^(%S+) (%S+)$')
      rate, burst = tonumber(r) or rate, tonumber(n) or burst
    end
    b = bucket_load(prefix .. ':q:bucket:' .. id, rate, burst)
    senders[id] = b
  end
  return b
end

local function peek(ring)
  local h = redis.call('ZRANGE', ring, 0, 1, 'WITHSCORES')
  return {q1 = h[1], s1 = tonumber(h[2]), q2 = h[3], s2 = tonumber(h[4])}
end

local INF = math.huge
local next_at = INF        -- epoch us when more could be taken
local out = {}             -- reply body after the 3 header fields
local taken, visits, discards = 0, 0, 0
local seq = nil            -- lease sequence, allocated at the first take
local clock = now
local cut_short = false    -- stopped by max_items or visit_limit: work may be left that is ready now
local blocked = {}         -- channel index -> account has no token (cannot change within the call)

for lane = 1, 2 do
  local heads = {}         -- channel index -> cached peek of its ring (dropped when we change that ring)
  while true do
    if taken >= max_items or visits >= visit_limit or discards >= discard_limit then
      cut_short = true
      break
    end
    -- The eligible head with the lowest score among this lane's rings whose account has a token.
    local best, best_score = nil, nil
    for c = 1, 3 do
      if not blocked[c] then
        local ring = KEYS[(lane - 1) * 3 + c]
        heads[c] = heads[c] or peek(ring)
        local h = heads[c]
        if h.q1 then
          if h.s1 > clock then
            if h.s1 < next_at then next_at = h.s1 end
          else
            local room, at = bucket_room(accounts[c], now)
            if room == 0 then
              blocked[c] = true
              if at < next_at then next_at = at end
            elseif best == nil or h.s1 < best_score then
              best, best_score = c, h.s1
            end
          end
        end
      end
    end
    if best == nil then break end

    visits = visits + 1
    clock = clock + 1
    local ring = KEYS[(lane - 1) * 3 + best]
    local h = heads[best]
    heads[best] = nil
    local q = h.q1
    local _, channel, _, sender = parse_queue(q)
    local sb = sender_bucket(channel, sender)
    local room, at = bucket_room(sb, now)
    if room == 0 then
      redis.call('ZADD', ring, math.max(at, clock), q)  -- parked until its sender has a token
    else
      local want = 1
      local alone = h.q2 == nil or h.s2 > clock
      for c = 1, 3 do
        local other = heads[c]
        if alone and c ~= best and not blocked[c] and other and other.q1 and other.s1 <= clock then
          alone = false
        end
      end
      if alone then
        local account_room = bucket_room(accounts[best], now)
        want = math.min(max_items - taken, room, account_room)
      end
      local key = ready_key(prefix, q)
      local expect = 'r:' .. q
      local got = {}
      while #got < want and discards < discard_limit do
        local ids = redis.call('LPOP', key, want - #got)
        if not ids then break end
        for _, id in ipairs(ids) do
          -- Only an id whose state says "ready in this queue" counts; anything else is a tombstone
          -- left by remove (or by a remove + re-enqueue elsewhere) and is dropped here.
          if redis.call('HGET', msg, id) == expect then
            got[#got + 1] = id
          else
            discards = discards + 1
          end
        end
      end
      if #got > 0 then
        if seq == nil then seq = int(redis.call('INCR', seq_key)) end
        bucket_take(sb, now, #got)
        bucket_take(accounts[best], now, #got)
        local deadline = now_ms + lease_ms
        out[#out + 1] = q
        out[#out + 1] = #got
        for _, id in ipairs(got) do
          redis.call('ZADD', inflight, deadline, seq .. ':' .. id)
          redis.call('HSET', msg, id, seq .. ':' .. q)
          out[#out + 1] = id
        end
        taken = taken + #got
      end
      if redis.call('EXISTS', key) == 0 then
        redis.call('ZREM', ring, q)  -- empty lists vanish; so does their ring entry
      else
        redis.call('ZADD', ring, math.max(clock, bucket_next(sb)), q)
      end
    end
  end
  if cut_short then break end
end

for _, b in pairs(senders) do bucket_save(b, now) end
for c = 1, 3 do bucket_save(accounts[c], now) end

if not cut_short then
  -- Nothing more is takeable now; also wake for the first due delayed id or expiring lease.
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if d[2] and tonumber(d[2]) * 1000 < next_at then next_at = tonumber(d[2]) * 1000 end
  local f = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  if f[2] and tonumber(f[2]) * 1000 < next_at then next_at = tonumber(f[2]) * 1000 end
end

local reply = {now_ms, -1, seq or ''}
if cut_short then
  reply[2] = now_ms
elseif next_at < INF then
  reply[2] = math.max(now_ms, math.ceil(next_at / 1000))
end
for i = 1, #out do reply[3 + i] = out[i] end
return reply
