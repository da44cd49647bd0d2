-- One device's ping batch, atomically: rate limit, consent gate, then the enter / exit / dwell
-- transitions for every ping in ts order. Two requests for one device, on any instances, are
-- serialised here, so an event is never fired twice.
--
-- KEYS[1] device state (hash, TTL 24 h): last_ts, cust, z:<zone_id> = "<entered_ts>|<dwelled 0/1>",
--   last_exit = "<ts>|<zone_id>" (for zone-to-zone flows; nothing older than the state's TTL),
--   linked = the customer whose device link is confirmed written (confirm_link.lua)
--   rt, ra = the rate-limit bucket's tokens and time, while the device has location consent
-- KEYS[2] device consent record (hash): loc, mkt, at, src
-- KEYS[3] rate-limit bucket of a device without location consent (hash, short TTL): tokens, at
--   (such a device keeps no state, so its bucket lives apart)
-- ARGV[1] msgpack map:
--   now (ms), state_ttl_s, rate_per_s, burst, consent_ttl_s,
--   consent = {loc = 0/1, mkt = 0/1/-1, src = str} or absent,
--   customer = str or absent,
--   dwell = {zone_id = dwell_s, ...} for every zone named in pings,
--   pings = {{index, ts, {inside zone ids}, {near zone ids}}, ...} sorted by ts
-- Returns msgpack: {"rate", retry_after_ms} | {"consent"} |
--   {"ok", events = {{type, zone_id, ts, index}...}, stale = {index...}, mkt = 0/1, new_customer = 0/1,
--    flows = {{from_zone, to_zone, seconds_between, enter_ts}...}}
local req = cmsgpack.unpack(ARGV[1])
local now = req.now

-- Token bucket: {tokens, at} as stored (or absent) -> tokens now, or false past the limit.
local function bucket_tokens(stored_tokens, stored_at)
  local tokens = tonumber(stored_tokens) or req.burst
  local at = tonumber(stored_at) or now
  tokens = math.min(req.burst, tokens + math.max(0, now - at) * req.rate_per_s / 1000)
  if tokens < 1 then
    return false, math.ceil((1 - tokens) * 1000 / req.rate_per_s)
  end
  return tokens
end

-- Consent: the record, with what the request brings over it.
local consent = redis.call('HMGET', KEYS[2], 'loc', 'mkt')
local location_on_record = consent[1] == '1'
local location = location_on_record
local marketing = (consent[2] == '1') and 1 or 0
if req.consent then
  location = req.consent.loc == 1
  if req.consent.mkt ~= -1 then marketing = req.consent.mkt end
end

-- A consent object in the request is recorded (with its time, as proof) once the request is
-- within its rate: a refused request writes nothing.
local function record_consent()
  if not req.consent then return end
  local fields = {'loc', req.consent.loc, 'at', now, 'src', req.consent.src}
  if req.consent.mkt ~= -1 then
    fields[#fields + 1] = 'mkt'
    fields[#fields + 1] = req.consent.mkt
  end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('EXPIRE', KEYS[2], req.consent_ttl_s)
end

if not location then
  local bucket = redis.call('HMGET', KEYS[3], 'tokens', 'at')
  local tokens, retry_after_ms = bucket_tokens(bucket[1], bucket[2])
  if not tokens then return cmsgpack.pack({'rate', retry_after_ms}) end
  redis.call('HSET', KEYS[3], 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[3], math.ceil(req.burst / req.rate_per_s * 1000) + 1000)
  record_consent()
  -- Without location consent nothing about the device's whereabouts may stay.
  redis.call('DEL', KEYS[1])
  return cmsgpack.pack({'consent'})
end

-- Current state, its bucket with it.
local flat = redis.call('HGETALL', KEYS[1])
local stored_tokens, stored_at = nil, nil
local last_ts = -1
local previous_customer = false
local linked_customer = false
local last_exit_ts, last_exit_zone = nil, nil
local FLOW_WINDOW_MS = 3600000
local inside = {}   -- zone_id -> {entered_ts, dwelled}
for i = 1, #flat, 2 do
  local name, value = flat[i], flat[i + 1]
  if name == 'last_ts' then
    last_ts = tonumber(value)
  elseif name == 'cust' then
    previous_customer = value
  elseif name == 'linked' then
    linked_customer = value
  elseif name == 'rt' then
    stored_tokens = value
  elseif name == 'ra' then
    stored_at = value
  elseif name == 'last_exit' then
    local sep = string.find(value, '|', 1, true)
    last_exit_ts, last_exit_zone = tonumber(string.sub(value, 1, sep - 1)), string.sub(value, sep + 1)
  elseif string.sub(name, 1, 2) == 'z:' then
    local sep = string.find(value, '|', 1, true)
    inside[string.sub(name, 3)] = {tonumber(string.sub(value, 1, sep - 1)), string.sub(value, sep + 1)}
  end
end

if not location_on_record then
  -- Consent given by this very request: until now the device's bucket was the one apart.
  local bucket = redis.call('HMGET', KEYS[3], 'tokens', 'at')
  stored_tokens, stored_at = bucket[1], bucket[2]
end
local tokens, retry_after_ms = bucket_tokens(stored_tokens, stored_at)
if not tokens then return cmsgpack.pack({'rate', retry_after_ms}) end
record_consent()

local events, stale, flows = {}, {}, {}
local changed, removed = {}, {}

local function sorted_keys(map)
  local list = {}
  for k in pairs(map) do list[#list + 1] = k end
  table.sort(list)
  return list
end

for _, ping in ipairs(req.pings) do
  local index, ts, inside_now, near_now = ping[1], ping[2], ping[3], ping[4]
  if ts <= last_ts then
    stale[#stale + 1] = index
  else
    last_ts = ts
    local is_inside, is_near = {}, {}
    for _, z in ipairs(inside_now) do is_inside[z] = true; is_near[z] = true end
    for _, z in ipairs(near_now) do is_near[z] = true end
    -- Exits: inside before, now beyond the exit margin (or the zone is gone from the index).
    for _, z in ipairs(sorted_keys(inside)) do
      if not is_near[z] then
        events[#events + 1] = {'exit', z, ts, index}
        last_exit_ts, last_exit_zone = ts, z
        inside[z] = nil
        changed[z] = nil
        removed[z] = true
      end
    end
    -- Enters.
    for _, z in ipairs(sorted_keys(is_inside)) do
      if inside[z] == nil then
        events[#events + 1] = {'enter', z, ts, index}
        if last_exit_zone and last_exit_zone ~= z and ts - last_exit_ts <= FLOW_WINDOW_MS then
          flows[#flows + 1] = {last_exit_zone, z, (ts - last_exit_ts) / 1000, ts}
        end
        inside[z] = {ts, '0'}
        changed[z] = true
        removed[z] = nil
      end
    end
    -- Dwells: once per visit, on the first ping at least dwell_s after the enter.
    for _, z in ipairs(sorted_keys(inside)) do
      local visit = inside[z]
      local dwell_s = req.dwell[z]
      if visit[2] == '0' and is_inside[z] and dwell_s and ts - visit[1] >= dwell_s * 1000 then
        events[#events + 1] = {'dwell', z, ts, index}
        visit[2] = '1'
        changed[z] = true
      end
    end
  end
end

local writes = {'last_ts', tostring(last_ts), 'rt', tostring(tokens - 1), 'ra', tostring(now)}
if last_exit_zone then
  writes[#writes + 1] = 'last_exit'
  writes[#writes + 1] = string.format('%d|%s', last_exit_ts, last_exit_zone)
end
for z in pairs(changed) do
  writes[#writes + 1] = 'z:' .. z
  writes[#writes + 1] = string.format('%d|%s', inside[z][1], inside[z][2])
end
-- new_customer: the service is to write the customer's link to this device, until it confirms
-- that it did (a link lost to a failed write is written again by the next ping).
local new_customer = 0
if req.customer and req.customer ~= previous_customer then
  writes[#writes + 1] = 'cust'
  writes[#writes + 1] = req.customer
  new_customer = 1
elseif req.customer and req.customer ~= linked_customer then
  new_customer = 1
end
redis.call('HSET', KEYS[1], unpack(writes))
local gone = {}
for z in pairs(removed) do gone[#gone + 1] = 'z:' .. z end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
redis.call('EXPIRE', KEYS[1], req.state_ttl_s)
return cmsgpack.pack({'ok', events, stale, marketing, new_customer, flows})
