-- SAY: sequence, keep and publish messages (several, of any rooms, per call: Redis spends
-- about as much on a script call as on the commands in it).
-- KEYS: seq and history of each message.
-- ARGV: channel, event tail (after the seq) and published of each message, then the history
--       size and the retention.
-- Only a key this script creates gets its expiry here: a message comes from a member, so the
-- presence refresh of the member's instance renews the room's keys (``keep``).
-- The history is trimmed back to its size only once it holds SLACK more entries (an LTRIM per
-- message cost about a quarter of the script); every reader takes only its newest ``size``.
-- Returns the seq of each message.
local SLACK = 32
local size, ttl = tonumber(ARGV[#ARGV - 1]), ARGV[#ARGV]
local out = {}
for m = 1, #KEYS / 2 do
  local seq = redis.call('INCR', KEYS[2 * m - 1])
  if seq == 1 then redis.call('EXPIRE', KEYS[2 * m - 1], ttl) end
  local text = tostring(seq)
  local ev = '{"type":"message","seq":' .. text .. ARGV[3 * m - 1]
  local n = redis.call('RPUSH', KEYS[2 * m], ev)
  if n == 1 then
    redis.call('EXPIRE', KEYS[2 * m], ttl)
  elseif n > size + SLACK then
    redis.call('LTRIM', KEYS[2 * m], -size, -1)
  end
  redis.call(PUBLISH, ARGV[3 * m - 2], 'm ' .. text .. ' ' .. ARGV[3 * m] .. ' ' .. ev)
  out[m] = seq
end
return out
