-- ROOMS: recount the busiest rooms (dead instances drop out). Prepended with _common.lua.
-- KEYS: rooms.
-- ARGV: limit.
-- Returns room, members pairs, flattened: the rooms ranked above the limit-th room's count,
-- and the first ``limit`` by name of those with that count (a listing breaks ties by name,
-- where ZREVRANGE would take the last names), at most 2 * limit - 1 rooms.
local limit = tonumber(ARGV[1])
local rooms = {}
local last = redis.call('ZREVRANGE', KEYS[1], limit - 1, limit - 1, 'WITHSCORES')
if #last == 0 then
  rooms = redis.call('ZRANGE', KEYS[1], 0, -1)
elseif limit > 0 then
  rooms = redis.call('ZRANGE', KEYS[1], '(' .. last[2], '+inf', 'BYSCORE')
  local tied = redis.call('ZRANGE', KEYS[1], last[2], last[2], 'BYSCORE', 'LIMIT', 0, limit)
  for _, room in ipairs(tied) do table.insert(rooms, room) end
end
local out = {}
for _, room in ipairs(rooms) do
  local prefix = 'roomhub:{' .. room .. '}:'
  local n = total(prefix, prefix .. 'instances')
  rank(KEYS[1], room, n)
  if n > 0 then
    table.insert(out, room)
    table.insert(out, n)
  end
end
return out
