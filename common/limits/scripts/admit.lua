-- Admit one request, all or nothing: several GCRA token buckets and, optionally, a cached allowance
-- (what is left of a church's plan). Nothing is charged unless everything fits. One round trip.
--
-- KEYS[1..n]  the buckets; KEYS[n+1] the allowance hash {r = remaining, w = weight, u = renews at (epoch s)}
-- ARGV[1]     n
-- ARGV[2]     1: draw on the allowance, 0: buckets only
-- ARGV[3]     units, ARGV[4] weighted units: the draw is units + weighted units * w
-- ARGV[5]     1: if the allowance is not cached, cache ARGV[6] remaining, ARGV[7] weight (0: there is no
--             allowance at all), ARGV[8] renews at, for ARGV[9] ms; 0: report a miss instead
-- ARGV[10..]  per bucket: emission interval (ms), burst (tokens), cost (tokens)
--
-- Returns
--   {0, remaining after, weight, renews at}           admitted: every bucket and the allowance charged
--   {1}                                               the allowance is not cached: read it, call again with it
--   {2}                                               there is no allowance (weight 0)
--   {3, remaining, weight, renews at}                 the draw is larger than what remains
--   {4, bucket index (1-based), retry ms, tokens left}  a bucket is short: the one with the longest wait
-- Time is Redis's own clock.
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local remaining, weight, renews, need = 0, 0, 0, 0
local akey = KEYS[n + 1]
if ARGV[2] == '1' then
    local cached = redis.call('HMGET', akey, 'r', 'w', 'u')
    if cached[1] and cached[2] then
        remaining, weight, renews = tonumber(cached[1]), tonumber(cached[2]), tonumber(cached[3] or 0)
    elseif ARGV[5] == '1' then
        remaining, weight, renews = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
        redis.call('HSET', akey, 'r', ARGV[6], 'w', ARGV[7], 'u', ARGV[8])
        redis.call('PEXPIRE', akey, ARGV[9])
    else
        return {1}
    end
    if weight == 0 then
        return {2}
    end
    need = tonumber(ARGV[3]) + tonumber(ARGV[4]) * weight
    if need > remaining then
        return {3, remaining, weight, renews}
    end
end

local worst, worst_ms, worst_left = 0, 0, 0
local tats = {}
for i = 1, n do
    local base = 10 + (i - 1) * 3
    local emission, burst, cost = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    local new_tat = tat + cost * emission
    local allow_at = new_tat - burst * emission
    if allow_at > now then
        local wait = math.ceil(allow_at - now)
        if wait > worst_ms then
            worst, worst_ms = i, wait
            worst_left = math.floor((burst * emission - (tat - now)) / emission)
        end
    end
    tats[i] = new_tat
end
if worst > 0 then
    return {4, worst, worst_ms, worst_left}
end
for i = 1, n do
    redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil(tats[i] - now) + 1000)
end
if need > 0 then
    remaining = redis.call('HINCRBY', akey, 'r', -need)
end
return {0, remaining, weight, renews}
