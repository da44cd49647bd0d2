-- Create a tenant hash only if it does not exist yet: the 409 gate and the write in one step.
-- KEYS[1] tenant hash; ARGV: field, value, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
