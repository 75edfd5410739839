-- read: the processor's next batch, and whether the stream lost events before they were read.
-- KEYS: 1 stream.  ARGV: 1 group, 2 consumer, 3 count, 4 reclaim idle (ms), 5 forget idle (ms).
-- Returns {status, entries}; entries are {id, {field, value, ...}}: first those reclaimed from consumers
-- idle longer than ARGV[4] (a processor that died holding them), then new ones.
-- status 0: nothing lost. 1: the group did not exist, so the stream is new: Redis lost its data (or this is
-- the first start); the group is created at "0", so whatever was added since is still read. 2: entries
-- were trimmed (XADD MAXLEN) before the group read them, or while a dead processor held them.
-- Why 2 can be told: ack.lua trims only below the oldest pending entry or the last delivered one, so the
-- stream's first entry is never past the group's last-delivered id unless MAXLEN cut undelivered entries.

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function after(a, b)
  local a_ms, a_seq = id_parts(a)
  local b_ms, b_seq = id_parts(b)
  return a_ms > b_ms or (a_ms == b_ms and a_seq > b_seq)
end

local status = 0
local last = nil
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, delivered
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] elseif group[i] == 'last-delivered-id' then delivered = group[i + 1] end
    end
    if name == ARGV[1] then last = delivered end
  end
end
if last == nil then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  status = 1
elseif last ~= '0-0' then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first == 1 and after(first[1][1], last) then status = 2 end
end

-- Consumers are named per process (a Lambda container, a dev stack's scheduler): forget the ones idle for
-- ARGV[5] that hold nothing, so the group's list does not grow with every process that ever ran.
if status == 0 then
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local name, pending, idle
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' then name = consumer[i + 1]
      elseif consumer[i] == 'pending' then pending = consumer[i + 1]
      elseif consumer[i] == 'idle' then idle = consumer[i + 1] end
    end
    if pending == 0 and idle > tonumber(ARGV[5]) and name ~= ARGV[2] then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    end
  end
end

local entries = {}
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0', 'COUNT', ARGV[3])
for _, entry in ipairs(claimed[2]) do
  if entry and entry[2] then table.insert(entries, entry) else status = math.max(status, 2) end  -- 6.2: trimmed = nil
end
if claimed[3] and #claimed[3] > 0 then status = math.max(status, 2) end  -- 7.0: trimmed ids listed apart
local room = tonumber(ARGV[3]) - #entries
if room > 0 then
  local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', room, 'STREAMS', KEYS[1], '>')
  if fresh then
    for _, entry in ipairs(fresh[1][2]) do table.insert(entries, entry) end
  end
end
return {status, entries}
