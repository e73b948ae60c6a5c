-- PRESENCE: the JSON names of the room's members on every instance.
-- KEYS: instances.
-- ARGV: prefix.
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, who in ipairs(redis.call('HVALS', ARGV[1] .. 'users:' .. id)) do
    out[#out + 1] = who
  end
end
return out
