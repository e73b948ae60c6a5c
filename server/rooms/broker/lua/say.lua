-- SAY: sequence, keep and publish messages (several, of any rooms, per call: Redis spends
-- about as much on a script call as on the commands in it).
-- KEYS: seq and history of each message.
-- ARGV: channel, event tail (after the seq) and published of each message, then the history
--       size, the retention and (the server API's publish only) a fresh epoch.
-- Only a key this script creates gets its expiry here: a message comes from a member, so the
-- presence refresh of the member's instance renews the room's keys (``keep``).
-- The history is trimmed back to its size only once it holds SLACK more entries (an LTRIM per
-- message cost about a quarter of the script); every reader takes only its newest ``size``.
-- A seq this script creates (1) in a room with no epoch key means Redis lost the room's keys
-- (a flush, an eviction, a failover to a replica that was behind) while its members stayed:
-- the message is undone and answered 0 (lost), so its broker refuses it and runs the room's
-- catch-up, which makes a new epoch. With a fresh epoch given (a publish into a room nobody
-- joined yet) the epoch is made here instead, and announced on the room's channel (members
-- on other instances may still be in the epoch Redis lost: their brokers catch the room up).
-- Returns the seq of each message, 0 for a lost one.
local SLACK = 32
local count = #KEYS / 2
local size, ttl = tonumber(ARGV[3 * count + 1]), ARGV[3 * count + 2]
local fresh = ARGV[3 * count + 3]
local out = {}
for m = 1, count do
  local seq = redis.call('INCR', KEYS[2 * m - 1])
  if seq == 1 then
    local epoch = string.sub(KEYS[2 * m - 1], 1, -4) .. 'epoch'
    if redis.call('EXISTS', epoch) == 1 then
      redis.call('EXPIRE', KEYS[2 * m - 1], ttl)
    elseif fresh then
      redis.call('SET', epoch, fresh, 'EX', ttl)
      redis.call(PUBLISH, ARGV[3 * m - 2], 'e 0 0 ' .. fresh)
      redis.call('EXPIRE', KEYS[2 * m - 1], ttl)
    else
      redis.call('DEL', KEYS[2 * m - 1])
      seq = 0
    end
  end
  if seq > 0 then
    local text = tostring(seq)
    local ev = '{"type":"message","seq":' .. text .. ARGV[3 * m - 1]
    local n = redis.call('RPUSH', KEYS[2 * m], ev)
    if n == 1 then
      redis.call('EXPIRE', KEYS[2 * m], ttl)
    elseif n > size + SLACK then
      redis.call('LTRIM', KEYS[2 * m], -size, -1)
    end
    redis.call(PUBLISH, ARGV[3 * m - 2], 'm ' .. text .. ' ' .. ARGV[3 * m] .. ' ' .. ev)
  end
  out[m] = seq
end
return out
