-- JOIN: give the joiner a free name, count it present, publish its welcome on the instance
-- channel, then the join event on the room channel. Prepended with _common.lua.
-- KEYS: seq, history, instances, users, tokens, epoch, joined, rooms (not on a Redis Cluster
--       node).
-- ARGV: prefix, room, instance, token, ttl, event tail (after members), published, channel,
--       since, epoch the joiner saw, a fresh epoch, instance channel, online limit,
--       retention, history size, then the candidate names in order of preference as
--       quadruples: name key, JSON name, first and last n (0, 0: the name itself; else the
--       names with the suffixes -first .. -last). The last quadruple's name is taken when
--       every candidate is.
-- Returns the members counted.
local ids = redis.call('SMEMBERS', KEYS[3])
local function taken(key)
  if redis.call('HEXISTS', KEYS[4], key) == 1 then return true end
  for _, id in ipairs(ids) do
    if redis.call('HEXISTS', ARGV[1] .. 'users:' .. id, key) == 1 then return true end
  end
  return false
end
local chosen, name = ARGV[#ARGV - 3], ARGV[#ARGV - 2]
local found = false
for i = 16, #ARGV, 4 do
  for n = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]) do
    local key, json = ARGV[i], ARGV[i + 1]
    if n > 0 then
      key = key .. '-' .. n
      json = string.sub(json, 1, -2) .. '-' .. n .. '"'
    end
    if not taken(key) then
      chosen, name, found = key, json, true
      break
    end
  end
  if found then break end
end
redis.call('HSET', KEYS[4], chosen, name)
redis.call('HSET', KEYS[5], ARGV[4], chosen)
redis.call('ZADD', KEYS[7], ARGV[4], name)
redis.call('EXPIRE', KEYS[4], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[5])
redis.call('EXPIRE', KEYS[7], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[3])
local n = total(ARGV[1], KEYS[3])
rank(KEYS[8], ARGV[2], n)
local keys = {prefix = ARGV[1], seq = KEYS[1], history = KEYS[2], epoch = KEYS[6],
              instances = KEYS[3]}
welcome(keys, ARGV[4], ARGV[2], n, tonumber(ARGV[9]), ARGV[10], ARGV[11], name, ARGV[12],
        tonumber(ARGV[13]), tonumber(ARGV[15]))
keep(ARGV[1], ARGV[14])
presence(ARGV[8], ARGV[7], 'join', name, n, ARGV[6])
return n
