-- REFRESH: keep one instance's members present, and let go of the members of an instance
-- that stopped refreshing its own. Prepended with _common.lua.
-- KEYS: instances, users, tokens, joined, rooms (not on a Redis Cluster node).
-- ARGV: prefix, room, instance, ttl, whole (1: replace what is there, 0: add), retention,
--       published, the leave and the join event's tails (after members), channel, then
--       token, name key, JSON name triples of this instance's members.
-- An instance refreshes every third of ``ttl``: one whose entries have not been refreshed
-- for two thirds of it has stopped (a crash, a cut-off network). Its entries would expire
-- at ``ttl`` and take its members' names with them, unseen by the members elsewhere; they
-- are removed here instead, and a leave event is published for each of its members. An
-- instance that comes back (after a stall, or a reconnect) and finds its entries gone from
-- a room Redis kept publishes a join event for each of its members.
-- Returns the number of members let go.
local function stopped(prefix, instances, me, ttl_ms)
  local gone = {}
  for _, id in ipairs(redis.call('SMEMBERS', instances)) do
    if id ~= me then
      local users, joined = prefix .. 'users:' .. id, prefix .. 'joined:' .. id
      local left = redis.call('PTTL', users)
      if left >= 0 and left < ttl_ms / 3 then
        for _, name in ipairs(redis.call('ZRANGE', joined, 0, -1)) do
          gone[#gone + 1] = name
        end
        redis.call('DEL', users, prefix .. 'tokens:' .. id, joined)
        redis.call('SREM', instances, id)
      end
    end
  end
  return gone
end
-- (Where Redis lost the room itself, its members all resume in a new epoch instead.)
local back = #ARGV > 10 and redis.call('EXISTS', KEYS[2]) == 0 and
  redis.call('EXISTS', ARGV[1] .. 'epoch') == 1
if ARGV[5] == '1' then redis.call('DEL', KEYS[2], KEYS[3], KEYS[4]) end
for i = 11, #ARGV, 3 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  redis.call('ZADD', KEYS[4], ARGV[i], ARGV[i + 2])
end
if #ARGV > 10 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
  redis.call('SADD', KEYS[1], ARGV[3])
  keep(ARGV[1], ARGV[6])
end
local gone = stopped(ARGV[1], KEYS[1], ARGV[3], tonumber(ARGV[4]) * 1000)
local n = total(ARGV[1], KEYS[1])
rank(KEYS[5], ARGV[2], n)
for i, name in ipairs(gone) do
  presence(ARGV[10], ARGV[7], 'leave', name, n + #gone - i, ARGV[8])
end
if back then
  local here = (#ARGV - 10) / 3
  for i = 11, #ARGV, 3 do
    presence(ARGV[10], ARGV[7], 'join', ARGV[i + 2], n - here + (i - 8) / 3, ARGV[9])
  end
end
return #gone
