-- REFRESH: keep one instance's members present. Prepended with _common.lua.
-- KEYS: instances, users, tokens, joined, rooms (not on a Redis Cluster node).
-- ARGV: prefix, room, instance, ttl, whole (1: replace what is there, 0: add), retention,
--       then token, name key, JSON name triples of this instance's members.
if ARGV[5] == '1' then redis.call('DEL', KEYS[2], KEYS[3], KEYS[4]) end
for i = 7, #ARGV, 3 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  redis.call('ZADD', KEYS[4], ARGV[i], ARGV[i + 2])
end
if #ARGV > 6 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
  redis.call('SADD', KEYS[1], ARGV[3])
  keep(ARGV[1], ARGV[6])
end
rank(KEYS[5], ARGV[2], total(ARGV[1], KEYS[1]))
