-- Redeem an issued offer exactly once. KEYS[1] the issued offer (hash).
-- ARGV: redeemed_at_ms, store_id. Returns {'ok'} | {'gone'} | {'again', first_at, first_store}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local first = redis.call('HMGET', KEYS[1], 'redeemed_at', 'redeemed_store')
if first[1] then return {'again', first[1], first[2] or ''} end
redis.call('HSET', KEYS[1], 'redeemed_at', ARGV[1], 'redeemed_store', ARGV[2])
return {'ok'}
