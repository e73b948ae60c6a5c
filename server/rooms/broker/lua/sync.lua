-- SYNC: publish a catch-up welcome (token 0) with the whole history. Prepended with
-- _common.lua.
-- KEYS: seq, history, instances, epoch, rooms (not on a Redis Cluster node).
-- ARGV: prefix, room, instance channel, a fresh epoch, online limit, retention,
--       history size.
-- Returns the members counted.
local n = total(ARGV[1], KEYS[3])
rank(KEYS[5], ARGV[2], n)
local keys = {prefix = ARGV[1], seq = KEYS[1], history = KEYS[2], epoch = KEYS[4],
              instances = KEYS[3]}
welcome(keys, '0', ARGV[2], n, -1, '', ARGV[4], '""', ARGV[3], tonumber(ARGV[5]),
        tonumber(ARGV[7]))
keep(ARGV[1], ARGV[6])
return n
