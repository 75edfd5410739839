-- One GCRA token bucket take, atomic: the "theoretical arrival time" (TAT) is the only state.
-- KEYS[1]  the bucket
-- ARGV[1]  emission interval in ms (period / limit), ARGV[2] burst (tokens), ARGV[3] cost (tokens)
-- Returns {allowed (1|0), retry_after_ms, remaining tokens, next_token_ms}: next_token_ms is the wait until
-- one more token is there (0 while one is left), so a caller can remember an empty bucket locally.
-- Time is Redis's own clock.
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * emission
local allow_at = new_tat - burst * emission
if allow_at > now then
    local next_ms = math.max(0, math.ceil(tat + emission - burst * emission - now))
    return {0, math.ceil(allow_at - now), math.floor((burst * emission - (tat - now)) / emission), next_ms}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
local next_ms = math.max(0, math.ceil(new_tat + emission - burst * emission - now))
return {1, 0, math.floor((burst * emission - (new_tat - now)) / emission), next_ms}
