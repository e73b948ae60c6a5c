-- PRESENCE: the JSON names of the room's members on every instance, instance by instance,
-- each instance's in join order. Prepended with _common.lua.
-- KEYS: instances.
-- ARGV: prefix.
return names(ARGV[1], KEYS[1], math.huge)
