-- LEAVE: free the joiner's name and publish the leave event. Prepended with _common.lua.
-- KEYS: instances, users, tokens, joined, rooms (not on a Redis Cluster node).
-- ARGV: prefix, room, token, ttl, event tail (after members), published, channel, retention.
-- Returns the members counted, or -1 when the token was not present.
local key = redis.call('HGET', KEYS[3], ARGV[3])
if not key then return -1 end
local name = redis.call('HGET', KEYS[2], key)
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[2], key)
if name then redis.call('ZREM', KEYS[4], name) end
local n = total(ARGV[1], KEYS[1])
rank(KEYS[5], ARGV[2], n)
keep(ARGV[1], ARGV[8])
if name then
  presence(ARGV[7], ARGV[6], 'leave', name, n, ARGV[5])
end
return n
