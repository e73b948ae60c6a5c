-- Functions shared by the scripts that use them (prepended to each; see scripts.py).
-- A room's keys share the prefix 'roomhub:{<room>}:'.
-- Counts the room's members over every instance listed in ``instances`` (dropping those that
-- hold none).
local function total(prefix, instances)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', instances)) do
    local here = redis.call('HLEN', prefix .. 'users:' .. id)
    if here == 0 then redis.call('SREM', instances, id) end
    n = n + here
  end
  return n
end
-- Ranks ``room`` by its members ``n`` in the room list ``rooms``: nil on a Redis Cluster
-- node, where no key spans the rooms' slots.
local function rank(rooms, room, n)
  if not rooms then return end
  if n > 0 then redis.call('ZADD', rooms, n, room) else redis.call('ZREM', rooms, room) end
end
-- Sets the room's keys to expire ``ttl`` seconds from now.
local function keep(prefix, ttl)
  for _, name in ipairs({'epoch', 'seq', 'history', 'instances'}) do
    redis.call('EXPIRE', prefix .. name, ttl)
  end
end
-- The JSON names of the members on every instance in ``instances``, at most ``limit``,
-- instance by instance, each instance's in the order they joined: ``joined:<instance>``
-- ranks them by join token, which rises on each instance (the users hash keeps no order
-- once Redis stores it as a hash table).
local function names(prefix, instances, limit)
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', instances)) do
    if #out >= limit then break end
    local stop = limit == math.huge and -1 or limit - #out - 1
    for _, who in ipairs(redis.call('ZRANGE', prefix .. 'joined:' .. id, 0, stop)) do
      out[#out + 1] = who
    end
  end
  return out
end
-- Publishes a ``kind`` ('join' or 'leave') event of JSON name ``name`` on ``channel``, with
-- the room's ``members`` and ``tail`` (what follows members), sent at ``published``.
local function presence(channel, published, kind, name, members, tail)
  redis.call(PUBLISH, channel, 'p 0 ' .. published .. ' {"type":"' .. kind .. '","user":' ..
    name .. ',"members":' .. members .. tail)
end
-- Tells every instance on the room's channel that the room has a new epoch ``epoch``, made
-- for the welcome on ``channel``: another instance whose members are still in the epoch Redis
-- lost catches the room up (payload.py).
local function notify(prefix, epoch, channel)
  redis.call(PUBLISH, string.sub(prefix, 1, -2), 'e 0 0 ' .. epoch .. ' ' .. channel)
end
-- Publishes the welcome of join ``token`` (0: a catch-up) to ``channel``; ``seen`` is the
-- epoch the joiner saw ('' if none), ``name`` the JSON name it got; the newest ``size``
-- entries of the history are the room's history (SAY trims it only now and then).
local function welcome(keys, token, room, members, since, seen, fresh, name, channel, limit,
                       size)
  local epoch = redis.call('GET', keys.epoch)
  if not epoch then
    epoch = fresh
    redis.call('SET', keys.epoch, epoch)
    notify(keys.prefix, epoch, channel)
  end
  local reset = 0
  if seen ~= '' and seen ~= epoch then
    reset, since = 1, -1
  end
  local online = names(keys.prefix, keys.instances, limit)
  local seq = tonumber(redis.call('GET', keys.seq) or '0')
  local out = {table.concat({'w', token, seq, members, reset, epoch, room}, ' '), name,
               '[' .. table.concat(online, ',') .. ']'}
  for _, ev in ipairs(redis.call('LRANGE', keys.history, -size, -1)) do
    if tonumber(string.match(ev, '^{"type":"message","seq":(%d+)')) > since then
      table.insert(out, ev)
    end
  end
  redis.call(PUBLISH, channel, table.concat(out, '\n'))
end
