-- ROOMS: recount the busiest rooms (dead instances drop out). Prepended with _common.lua.
-- KEYS: rooms.
-- ARGV: limit.
-- Returns room, members pairs, flattened.
local out = {}
for _, room in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  local prefix = 'roomhub:{' .. room .. '}:'
  local n = total(prefix, prefix .. 'instances')
  rank(KEYS[1], room, n)
  if n > 0 then
    table.insert(out, room)
    table.insert(out, n)
  end
end
return out
