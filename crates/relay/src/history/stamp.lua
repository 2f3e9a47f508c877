-- Stamp: give a batch of room publishes of one namespace the namespace's next offsets, append
-- them to the history, keep them as their room's retained event when asked, and publish each to
-- every replica; one atomic step for the whole batch (see history/batch.rs for how it is filled).
--
-- KEYS[1] seq (INCR counter)        KEYS[2] stream (entries `<offset>-0`: r, e, d)
-- KEYS[3] epoch (string)            KEYS[4] retained (hash: o:<room>, e:<room>, d:<room>)
-- KEYS[5] ids (hash: publish id -> `<offset> <epoch>`)   KEYS[6] ids of the previous generation
-- ARGV[1] a fresh epoch, used only when KEYS[3] is missing (history lost or expired)
-- ARGV[2] MAXLEN (approximate)      ARGV[3] TTL in ms (idle namespaces lose their history)
-- ARGV[4] PUBLISH or SPUBLISH       ARGV[5] channel
-- Then 6 arguments per event, in the order to stamp them, from ARGV[6]:
--   room, event, data (MessagePack), '1' to retain, the encoded frame, publish id ('' = none)
-- Publishes each stamped event in the bus's stamped form, `\0<offset>\n<epoch>\n<frame>` (the
-- channel format is the bus's: bus/channel.rs, which decodes it).
-- Returns {epoch, {offset 1, dup 1, offset 2, dup 2, ...}}, one pair per event in argument
-- order; dup is 1 if the publish id was already stamped (nothing done for it), else 0.
-- Invariant: offsets of one epoch are 1, 2, 3, ... with no gap, given in argument order; the
-- stream, the retained hash and the channel see them in that order; a missing epoch key means
-- everything else of the namespace's history is gone too (it is deleted with it), so an old
-- offset can never be mistaken for a new one. Complexity: O(events) amortised (XADD with ~
-- trimming) + one publish per stamped event.
--
-- Idempotence: a publish id already stamped in the CURRENT epoch (by an earlier call or earlier
-- in this batch) returns its first offset and appends, retains and publishes nothing (a gateway
-- retrying a Stamp on another relay after the first one died before answering). Ids are
-- remembered in two generations of hashes: when the current one holds more than MAXLEN ids it
-- becomes the previous one (replacing it), so at least the last MAXLEN ids (and at most
-- 2 x MAXLEN) are kept, and they expire with the rest of the namespace's history (TTL). Each id
-- records its epoch, so an id of a lost history is never answered with a stale position.
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6])
  redis.call('SET', KEYS[3], epoch)
end
local maxlen = tonumber(ARGV[2])
local out = {}
for base = 6, #ARGV - 5, 6 do
  local room, event, data = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local id = ARGV[base + 5]
  local first = nil
  if id ~= '' then
    local seen = redis.call('HGET', KEYS[5], id)
    if not seen then seen = redis.call('HGET', KEYS[6], id) end
    if seen then
      local sp = string.find(seen, ' ', 1, true)
      if sp and string.sub(seen, sp + 1) == epoch then
        first = tonumber(string.sub(seen, 1, sp - 1))
      end
    end
  end
  if first then
    out[#out + 1] = first
    out[#out + 1] = 1
  else
    local offset = redis.call('INCR', KEYS[1])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, offset .. '-0',
               'r', room, 'e', event, 'd', data)
    if ARGV[base + 3] == '1' then
      redis.call('HSET', KEYS[4], 'o:' .. room, offset, 'e:' .. room, event, 'd:' .. room, data)
    end
    if id ~= '' then
      redis.call('HSET', KEYS[5], id, offset .. ' ' .. epoch)
      if redis.call('HLEN', KEYS[5]) > maxlen then
        redis.call('RENAME', KEYS[5], KEYS[6])
      end
    end
    redis.call(ARGV[4], ARGV[5], '\0' .. offset .. '\n' .. epoch .. '\n' .. ARGV[base + 4])
    out[#out + 1] = offset
    out[#out + 1] = 0
  end
end
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return {epoch, out}
