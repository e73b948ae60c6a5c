-- DELETE: remove a message from the history and publish the deleted event.
-- KEYS: history.
-- ARGV: the message's prefix up to its seq and comma, channel, published, the deleted event,
--       history size (the newest that many entries are the history).
-- Returns 1, or 0 when the history does not hold the message.
for _, ev in ipairs(redis.call('LRANGE', KEYS[1], -tonumber(ARGV[5]), -1)) do
  if string.sub(ev, 1, #ARGV[1]) == ARGV[1] then
    redis.call('LREM', KEYS[1], 1, ev)
    redis.call(PUBLISH, ARGV[2], 'b 0 ' .. ARGV[3] .. ' ' .. ARGV[4])
    return 1
  end
end
return 0
