-- Replay: every event after an offset, if the history still holds all of them.
--
-- KEYS[1] seq  KEYS[2] stream  KEYS[3] epoch  KEYS[4] retained
-- ARGV[1] the client's epoch  ARGV[2] the client's offset  ARGV[3] most events to return
-- ARGV[4] a fresh epoch, used when none exists (history lost)  ARGV[5] TTL in ms
-- Returns {recovered (1/0), epoch, head, {id, r, e, d, id, r, e, d, ...}}.
-- Invariant: recovered = 1 only if the epoch matches and the stream holds every offset in
-- (after, head] (offsets have no gaps, so it suffices that the oldest kept one is <= after+1).
-- Complexity: O(log n + returned events).
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[5])
end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
if epoch ~= ARGV[1] then return {0, epoch, head, {}} end
local after = tonumber(ARGV[2])
if after > head then return {0, epoch, head, {}} end
if after == head then return {1, epoch, head, {}} end
if head - after > tonumber(ARGV[3]) then return {0, epoch, head, {}} end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first == 0 then return {0, epoch, head, {}} end
local oldest = tonumber(string.match(first[1][1], '^(%d+)'))
if oldest > after + 1 then return {0, epoch, head, {}} end
local entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', head .. '-0')
local flat = {}
for _, entry in ipairs(entries) do
  local f = entry[2]
  local r, e, d = '', '', ''
  for i = 1, #f, 2 do
    if f[i] == 'r' then r = f[i + 1] elseif f[i] == 'e' then e = f[i + 1]
    elseif f[i] == 'd' then d = f[i + 1] end
  end
  flat[#flat + 1] = entry[1]
  flat[#flat + 1] = r
  flat[#flat + 1] = e
  flat[#flat + 1] = d
end
return {1, epoch, head, flat}
