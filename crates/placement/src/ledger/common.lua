-- common.lua: helpers prepended to every ledger script (redis.rs concatenates them at compile
-- time); not a script by itself.
--
-- Key layout. P is the cluster's prefix `{sy:<cluster>}`: every key carries that one hash tag,
-- so all of them live in one slot and the scripts run unchanged on Redis Cluster (scripts
-- build per-node keys from P; they are in the same slot as the declared KEYS).
--
--   P:nodes            zset  node id -> last_seen_ms          (liveness index, for reap)
--   P:node:<id>        hash  url weight capacity namespaces connections
--                            draining_admin draining_report last_seen_ms
--   P:node:<id>:resv   set   the node's live reservation ids   (SCARD = the node's pending)
--   P:ns:<namespace>   zset  node id -> (connections + pending) / weight
--                            holds only assignable nodes: registered, not draining, not full
--                            (stale ones are removed lazily by assign, rescore and reap)
--   P:resv             zset  reservation id -> expires_at_ms
--   P:resv:node        hash  reservation id -> node id
--   P:fence            string, the lease's fencing counter (see lease/*.lua)
--
-- Invariant kept by every script: a reservation id is in P:resv, P:resv:node and its node's
-- set together or in none of them; a node is in a P:ns zset only if it was assignable when it
-- was last rescored, with the score of that moment.
--
-- Clock: Redis TIME, never the caller's, so replicas with skewed clocks agree.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as exact decimal strings (Lua numbers are doubles; tostring would use %.14g).
local function int(n)
  return string.format('%d', n)
end

local function node_key(P, id)
  return P .. ':node:' .. id
end

-- Namespaces are stored joined by "\n" (the Rust side refuses names containing one).
local function split_ns(s)
  local out = {}
  for ns in string.gmatch(s, '[^\n]+') do
    out[#out + 1] = ns
  end
  return out
end

-- Puts the node into each of its namespaces' candidate zsets with its current score, or takes
-- it out when it is not assignable. O(namespaces * log nodes).
local function rescore(P, id, now, liveness)
  local nk = node_key(P, id)
  local f = redis.call('HMGET', nk, 'weight', 'capacity', 'namespaces', 'connections',
    'draining_admin', 'draining_report', 'last_seen_ms')
  if not f[1] then
    return
  end
  local weight = tonumber(f[1])
  local capacity = tonumber(f[2])
  local load = tonumber(f[4]) + redis.call('SCARD', nk .. ':resv')
  local assignable = f[5] == '0' and f[6] == '0'
    and (capacity == 0 or load < capacity)
    and now - tonumber(f[7]) <= liveness
  local score = string.format('%.17g', load / weight)
  for _, ns in ipairs(split_ns(f[3])) do
    if assignable then
      redis.call('ZADD', P .. ':ns:' .. ns, score, id)
    else
      redis.call('ZREM', P .. ':ns:' .. ns, id)
    end
  end
end

-- Forgets one reservation everywhere; returns the node it was on (or false).
local function drop_reservation(P, rid)
  local id = redis.call('HGET', P .. ':resv:node', rid)
  redis.call('HDEL', P .. ':resv:node', rid)
  redis.call('ZREM', P .. ':resv', rid)
  if id then
    redis.call('SREM', node_key(P, id) .. ':resv', rid)
  end
  return id
end

-- Drops up to `limit` expired reservations and rescores their nodes. Bounded so that one call
-- stays cheap; callers run it on every write, so expiries are drained faster than assign can
-- create reservations. O(limit * log n).
local function purge_expired(P, now, liveness, limit)
  local rids = redis.call('ZRANGEBYSCORE', P .. ':resv', '-inf', int(now), 'LIMIT', 0, limit)
  local touched, order = {}, {}
  for _, rid in ipairs(rids) do
    local id = drop_reservation(P, rid)
    if id and not touched[id] then
      touched[id] = true
      order[#order + 1] = id
    end
  end
  for _, id in ipairs(order) do
    rescore(P, id, now, liveness)
  end
  return #rids
end

-- Removes the node and everything that points at it. O(namespaces * log nodes + its pending).
local function remove_node(P, id)
  local nk = node_key(P, id)
  local nss = redis.call('HGET', nk, 'namespaces')
  if nss then
    for _, ns in ipairs(split_ns(nss)) do
      redis.call('ZREM', P .. ':ns:' .. ns, id)
    end
  end
  for _, rid in ipairs(redis.call('SMEMBERS', nk .. ':resv')) do
    redis.call('HDEL', P .. ':resv:node', rid)
    redis.call('ZREM', P .. ':resv', rid)
  end
  redis.call('DEL', nk, nk .. ':resv')
  redis.call('ZREM', P .. ':nodes', id)
end

-- The node as the admin API sees it, or false when unknown:
-- {id, url, weight, capacity, namespaces, connections, pending, draining_admin,
--  draining_report, last_report_age_ms}
local function view(P, id, now)
  local nk = node_key(P, id)
  local f = redis.call('HMGET', nk, 'url', 'weight', 'capacity', 'namespaces', 'connections',
    'draining_admin', 'draining_report', 'last_seen_ms')
  if not f[1] then
    return false
  end
  local age = now - tonumber(f[8])
  if age < 0 then
    age = 0
  end
  return { id, f[1], tonumber(f[2]), tonumber(f[3]), f[4], tonumber(f[5]),
    redis.call('SCARD', nk .. ':resv'), tonumber(f[6]), tonumber(f[7]), age }
end

