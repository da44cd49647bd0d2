-- Take one unit of an offer's budget if any is left. KEYS[1] issued count; ARGV[1] budget.
local issued = tonumber(redis.call('GET', KEYS[1]) or '0')
if issued >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
return 1
