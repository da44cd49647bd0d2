-- Count an offer against every cap of its holder at once, or refuse it. The holder is the
-- customer when the ping named one, else the device; all keys carry the holder's hash tag.
-- KEYS[1] caps of this device (hash): day, day_n, zone:<zone_id> = last issue ms
-- KEYS[2] issue times per offer of the holder (hash): <offer_id> = "ms,ms,..."
-- KEYS[3] ids of the offers issued to the holder (sorted set by expiry)
-- ARGV: now_ms, day, max_per_day, zone_id, cooldown_ms, offer_id, max_per_customer,
--       window_ms, instance_id, expires_at_ms, record_ttl_s
-- Returns 'ok' | 'day' | 'cooldown' | 'customer'
local now = tonumber(ARGV[1])
local day, max_per_day = ARGV[2], tonumber(ARGV[3])
local zone_field, cooldown_ms = 'zone:' .. ARGV[4], tonumber(ARGV[5])
local offer_id, max_per_customer = ARGV[6], tonumber(ARGV[7])
local window_ms = tonumber(ARGV[8])

local state = redis.call('HMGET', KEYS[1], 'day', 'day_n', zone_field)
local issued_today = 0
if state[1] == day then issued_today = tonumber(state[2]) or 0 end
if issued_today >= max_per_day then return 'day' end
local last = tonumber(state[3])
if last and now - last < cooldown_ms then return 'cooldown' end

local recent = {}
local history = redis.call('HGET', KEYS[2], offer_id)
if history then
  for ts in string.gmatch(history, '[^,]+') do
    if now - tonumber(ts) < window_ms then recent[#recent + 1] = ts end
  end
end
if #recent >= max_per_customer then return 'customer' end
recent[#recent + 1] = tostring(now)

redis.call('HSET', KEYS[1], 'day', day, 'day_n', issued_today + 1, zone_field, now)
redis.call('HSET', KEYS[2], offer_id, table.concat(recent, ','))
redis.call('ZADD', KEYS[3], tonumber(ARGV[10]), ARGV[9])
local ttl = tonumber(ARGV[11])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return 'ok'
