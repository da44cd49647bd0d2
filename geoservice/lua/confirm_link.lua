-- The customer's link to this device is written (customers.link_device): the fence script stops
-- asking for it. Only on a device state that still exists: a state deleted meanwhile (consent
-- withdrawn, expired) is not brought back by this.
--
-- KEYS[1] device state (hash)
-- ARGV[1] customer id
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'linked', ARGV[1])
end
return 0
