-- Resolve a micro-batch of events' identifiers to profile ids, merging and linking atomically.
--
-- ARGV[1] namespace   ARGV[2] retry window (days)   ARGV[3] supernode limit
-- ARGV[4] rules JSON {type: [unique 0/1, cap]}, ARGV[5] custom rule JSON [unique, cap]
-- ARGV[6] the batch JSON: [[event id, raw partition, raw offset, [ids], [blocked ids],
--         [invalid ids], source, fingerprint, bucket, {id: sealed value}], ...], identifiers
--         as "type:value" (value: a blind index with field encryption, and the sealed value
--         is what the graph keeps for the read API; "1" without),
--         strongest first; blocked (junk) and invalid (failed validation) identifiers never
--         link profiles; fingerprint: a signed 64-bit hash of (source, event id), in decimal
-- ARGV[7] today (days since the epoch)
-- ARGV[8] "1" to replay history (deploy/rebuild.py): no retry window (held outcomes kept)
--         (each event was accepted once already), and an event that creates a profile
--         takes the profile id it had (the entry's 12th item) when that id is free, so a
--         rebuilt namespace names its profiles as history does.
-- ARGV[9] (replay) the namespace whose counter issues new profile ids, when not this one
--         (a split replays into a scratch namespace; its new profiles join the live one).
-- Each event entry may end with a consent time: the event's receipt in epoch ms when it
-- grants a consent, else 0 (see "suppressed" below).
--
-- One call per micro-batch (the caller splits big batches into chunks so that Redis answers
-- other clients between chunks); the events are resolved in order, each as before on its own.
--
-- Keys (all under the namespace; not Redis Cluster safe, see docs/architecture.md):
--   i:<type:value>  SET of profile ids holding the identifier
--   p:<pid>:g       HASH of the profile's identity graph (see identity/graph.lua):
--                   "=<type:value>" its identifiers (-> sealed value or 1), "#<type>" counts,
--                   "!<type>" unique values
--   graph:v2        set once no profile is left in the older three-key layout
--   alias           HASH merged pid -> survivor
--   seq             profile id counter (lower = older)
--   ev:held:<partition>  HASH raw offset -> outcome, until the processor has published the
--                   outcome's records (then it deletes the entry): a redelivered offset
--                   replays it
--   ev:w:<day>:<bucket>  SET of the fingerprints of the events first resolved that day: an
--                   event id seen in the retry window is a duplicate (a client retry, or a
--                   redelivery of an offset whose records were published). 64-bit integers
--                   in sets of a few hundred are Redis intsets, 8 bytes per event.
--   rf:<pid>:<x>:<rule>  refusals already recorded
--   suppressed      HASH sha1(type:value) -> when the identifier's person was erased (epoch
--                   ms): the identifier links nothing and builds no profile, until an event
--                   received after that time grants a consent with it (the person came back)
--   suppressed:events  counter of events dropped because all their identifiers were suppressed
--   order           counter of resolved events: each outcome's seq is its place in the one
--                   order of resolution across workers (a rebuild replays in it)
-- Returns a JSON array with one outcome per event: {pid, created, dup, merges, refusals, seq}.

local ns = ARGV[1]
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local rules = cjson.decode(ARGV[4])
local custom = cjson.decode(ARGV[5])
local batch = cjson.decode(ARGV[6])
local today = tonumber(ARGV[7])
local replay = ARGV[8] == '1'
local seq_key = (ARGV[9] and ARGV[9] ~= '') and (ARGV[9] .. ':seq') or (ns .. ':seq')

-- A split keeps people apart with a mark, a unique value its own ("!split/<id>" = side) in
-- each side's graph: two profiles with different marks never merge (rule "split"). A replay
-- takes the marks to give from the hash "apart": "p:<pid>" (the profile, when created) or
-- "i:<type:value>" (whatever profile the identifier joins) -> "split/<id>=<side>".
local marks = {}
if replay then
  local flat = redis.call('HGETALL', ns .. ':apart')
  for j = 1, #flat, 2 do
    local t, v = string.match(flat[j + 1], '^(.-)=(.*)$')
    marks[flat[j]] = {t, v}
  end
end

local function k(...) return ns .. ':' .. table.concat({...}, ':') end
local alias_key = k('alias')
local legacy = graph_legacy(ns)

local function rule_of(t)
  local r = rules[t] or custom
  return r[1] == 1, r[2]
end

local function type_of(id) return string.match(id, '^([^:]+):') end
local function value_of(id) return string.sub(id, #type_of(id) + 2) end

local function resolve(pid) return follow_alias(alias_key, pid) end

-- A profile's graph, moved to the one-hash layout first if it was stored before it.
local function graph(pid)
  if legacy then graph_upgrade(ns, pid) end
  return graph_read(ns, pid)
end

-- The window's days, as key prefixes made once per call (each event looks in every day).
local day_prefixes = {}
for day = today - window + 1, today do
  table.insert(day_prefixes, ns .. ':ev:w:' .. day .. ':')
end

local function seen(fingerprint, bucket)
  for _, prefix in ipairs(day_prefixes) do
    if redis.call('SISMEMBER', prefix .. bucket, fingerprint) == 1 then return true end
  end
  return false
end

-- The erased persons' identifiers, checked only once anyone was erased.
local suppressing = redis.call('EXISTS', k('suppressed')) == 1

-- Remove suppressed identifiers from a list; a consent granted after the erasure lifts them.
local function unsuppressed(list, consent_ms, dropped)
  local kept = {}
  for _, id in ipairs(list) do
    local field = redis.sha1hex(id)
    local since = redis.call('HGET', k('suppressed'), field)
    if since and consent_ms > tonumber(since) then
      redis.call('HDEL', k('suppressed'), field)
      since = nil
    end
    if since then table.insert(dropped, id) else table.insert(kept, id) end
  end
  return kept
end

-- The profile id a replayed event had, when no profile, alias or graph holds it yet.
local function hinted(hint, uq)
  if not hint or hint == '' or not tonumber(hint) then return nil end
  local mark = marks['p:' .. hint]
  -- the event carries the other side's mark: the id is not this event's to take
  if mark and uq[mark[1]] and uq[mark[1]] ~= mark[2] then return nil end
  if redis.call('HEXISTS', alias_key, hint) == 1 then return nil end
  if redis.call('EXISTS', graph_key(ns, hint)) == 1 then return nil end
  if tonumber(redis.call('GET', seq_key) or '0') < tonumber(hint) then
    redis.call('SET', seq_key, hint)
  end
  if mark then redis.call('HSET', graph_key(ns, hint), '!' .. mark[1], mark[2]) end
  return hint
end

local resolution = 0

local held_key_of = keys_under(ns .. ':ev:held:')

local function resolve_event(event_id, part, off, ids, blocked, invalid, source, fp, bucket, sealed, consent_ms, hint)
  local held_key = held_key_of(part)
  -- A redelivered offset whose records were not yet published (or, replaying, whose fold
  -- did not finish: a rebuild killed in a step): the same outcome again, with its merges.
  local held = redis.call('HGET', held_key, off)
  if held then
    local m = cjson.decode(held)
    if m.event == event_id and m.source == source then return held end
  end
  if not replay then
    -- Message ids are unique per source, not across sources: the fingerprint covers both.
    -- Seen before in the window: a client's retry, or a redelivery of an offset already
    -- published.
    if seen(fp, bucket) then
      return cjson.encode({pid = '', created = 0, dup = 1, merges = {}, refusals = {}})
    end
  end

  local dropped = {}
  if suppressing then
    local given = #ids + #blocked + #invalid
    ids = unsuppressed(ids, consent_ms, dropped)
    blocked = unsuppressed(blocked, consent_ms, dropped)
    invalid = unsuppressed(invalid, consent_ms, dropped)
    if #dropped > 0 and #dropped == given then
      -- Only an erased person's identifiers: no profile, no history; counted, not kept.
      local out = cjson.encode({
        pid = '', created = 0, dup = 0, suppressed = dropped, merges = {}, refusals = {},
        event = event_id, source = source,
      })
      if not replay then
        redis.call('HSET', held_key, off, out)
        redis.call('INCR', k('suppressed', 'events'))
      end
      return out
    end
  end

  local refusals, merges = {}, {}
  local function remember(pid, entry)
    -- the profile's own ledger, for explain: which merges built it, which were refused
    entry.event = event_id
    redis.call('RPUSH', k('p', pid, 'log'), cjson.encode(entry))
  end

  local function refuse(pid, other, id, rule)
    local mark = k('rf', pid, other or id, rule)
    if redis.call('SET', mark, '1', 'NX', 'EX', 2592000) then
      local entry = {pid = pid, other = other or cjson.null, id = id, rule = rule}
      table.insert(refusals, entry)
      remember(pid, {decision = 'refused', rule = rule, other = entry.other, id = id})
      -- The other profile's explain tells it too: either one is what an operator looks up.
      if other then
        remember(other, {decision = 'refused', rule = rule, other = pid, id = id})
      end
    end
  end

  local function finish(pid, created)
    if pid then
      for _, id in ipairs(blocked) do refuse(pid, nil, id, 'blocklist') end
      for _, id in ipairs(invalid) do refuse(pid, nil, id, 'invalid') end
    end
    local out = cjson.encode({
      pid = pid or '', created = created, dup = 0, merges = merges, refusals = refusals,
      event = event_id, source = source, stripped = dropped, seq = resolution,
    })
    if replay then
      -- History knows this event under an id the replay did not make (its profile was
      -- found by the event's identifiers, met in another order): that id names this
      -- profile, as a merge would have made it, so reads and history's aliases agree.
      if pid and hint and hint ~= '' and hint ~= pid and tonumber(hint)
          and redis.call('HEXISTS', alias_key, hint) == 0
          and redis.call('EXISTS', graph_key(ns, hint)) == 0 then
        redis.call('HSET', alias_key, hint, pid)
      end
      redis.call('HSET', held_key, off, out)
      return out
    end
    redis.call('HSET', held_key, off, out)
    local day_key = k('ev', 'w', today, bucket)
    redis.call('SADD', day_key, fp)
    if redis.call('TTL', day_key) < 0 then redis.call('EXPIRE', day_key, (window + 1) * 86400) end
    return out
  end

  -- 1. candidates: the profiles the usable identifiers point at, strongest identifier first
  -- An identifier held by two profiles that could not merge (a family's phone) is shared:
  -- it proves nothing about which of them an event is about, so it never picks a profile.
  -- It is still linked below, so that its holders are counted towards the supernode limit.
  local supernode, linked = {}, 0
  local cands, via, owner_of = {}, {}, {}
  for _, id in ipairs(ids) do
    local holders = redis.call('SMEMBERS', k('i', id))
    if #holders > limit then
      supernode[id] = true
    elseif #holders > 1 then
      -- shared: not a candidate, and not counted as linked (so the slow path links it)
    elseif #holders == 1 then
      local s = resolve(holders[1])
      owner_of[id] = s
      if not via[s] then via[s] = id; table.insert(cands, s) end
      linked = linked + 1
    end
  end

  -- The common case: every identifier already belongs to one and the same profile, so
  -- nothing can merge, link or conflict.
  if #cands == 1 and linked == #ids then return finish(cands[1], 0) end

  -- 2. merge every candidate compatible with the group into the oldest
  local group_uq, group_cnt = {}, {}
  local function absorb(pid)
    local _, u, c = graph(pid)
    for t, v in pairs(u) do group_uq[t] = v end
    for t, n in pairs(c) do group_cnt[t] = (group_cnt[t] or 0) + n end
  end

  local function conflict(pid)
    local _, u, c = graph(pid)
    for t, v in pairs(u) do
      if group_uq[t] and group_uq[t] ~= v then
        if string.sub(t, 1, 6) == 'split/' then return 'split' end
        return 'unique_conflict'
      end
    end
    for t, n in pairs(c) do
      local _, cap = rule_of(t)
      if (group_cnt[t] or 0) + n > cap then return 'cap' end
    end
    return nil
  end

  -- The event's own unique identifiers take part: a candidate holding another member id
  -- is a different person, even when a weaker identifier (a shared device) points at it.
  for _, id in ipairs(ids) do
    local t = type_of(id)
    if rule_of(t) and not group_uq[t] then group_uq[t] = value_of(id) end
    local mark = marks['i:' .. id]
    if mark and not group_uq[mark[1]] then group_uq[mark[1]] = mark[2] end
  end

  local pid, created = nil, 0
  local group, pending = {}, {}
  for _, cand in ipairs(cands) do
    local why = conflict(cand)
    if why then
      table.insert(pending, {cand, why})
    else
      table.insert(group, cand)
      absorb(cand)
    end
  end
  -- A new profile needs an identifier it can hold: one over the supernode limit (a store's
  -- shared iPad) identifies nobody, so an event with nothing else resolves to no profile,
  -- like one with junk only, instead of a new empty profile per event that nothing can
  -- ever join.
  local holdable = false
  for _, id in ipairs(ids) do
    if not supernode[id] then holdable = true end
  end
  if #group > 0 then
    table.sort(group, function(a, b) return tonumber(a) < tonumber(b) end)
    pid = group[1]
  elseif holdable then
    pid = replay and hinted(hint, group_uq) or tostring(redis.call('INCR', seq_key))
    created = 1
  end
  -- Profiles kept apart by a split: their identifiers are not linked to this one either
  -- (an event carrying both sides' identifiers makes none of them shared).
  local apart = {}
  if pid then
    for _, p in ipairs(pending) do
      refuse(pid, p[1], via[p[1]], p[2])
      if p[2] == 'split' then apart[p[1]] = true end
    end
  end

  local function merge(gone, into)
    local gone_ids, gone_uq = graph(gone)
    local into_key, gone_key = graph_key(ns, into), graph_key(ns, gone)
    for _, id in ipairs(gone_ids) do
      redis.call('SREM', k('i', id), gone)
      redis.call('SADD', k('i', id), into)
      local held = redis.call('HGET', gone_key, '=' .. id) or '1'
      if redis.call('HSETNX', into_key, '=' .. id, held) == 1 then
        redis.call('HINCRBY', into_key, '#' .. type_of(id), 1)
      end
    end
    for t, v in pairs(gone_uq) do redis.call('HSETNX', into_key, '!' .. t, v) end
    for _, line in ipairs(redis.call('LRANGE', k('p', gone, 'log'), 0, -1)) do
      redis.call('RPUSH', k('p', into, 'log'), line)
    end
    redis.call('DEL', graph_key(ns, gone), k('p', gone, 'log'))
    redis.call('HSET', alias_key, gone, into)
    -- the bridge: the identifier that brought in the profile not found by the event's strongest
    local bridge = via[gone]
    if gone == cands[1] then bridge = via[into] end
    table.insert(merges, {survivor = into, merged = gone, id = bridge})
    remember(into, {decision = 'merged', rule = 'shared_identifier', other = gone, id = bridge})
  end

  if pid then
    for n = 2, #group do merge(group[n], pid) end

    -- 3. link the event's identifiers to the profile, within the rules
    if legacy then graph_upgrade(ns, pid) end
    local g = graph_key(ns, pid)
    for _, id in ipairs(ids) do
      local t = type_of(id)
      local mark = marks['i:' .. id]
      local marked = mark and redis.call('HGET', g, '!' .. mark[1])
      if supernode[id] then
        refuse(pid, nil, id, 'supernode')
      elseif mark and marked and marked ~= mark[2] then
        refuse(pid, nil, id, 'split')
      elseif owner_of[id] and apart[owner_of[id]] then
        refuse(pid, owner_of[id], id, 'split')
      elseif redis.call('HEXISTS', g, '=' .. id) == 0 then
        local unique, cap = rule_of(t)
        local held = redis.call('HGET', g, '!' .. t)
        local count = tonumber(redis.call('HGET', g, '#' .. t) or '0')
        if unique and held and held ~= value_of(id) then
          refuse(pid, nil, id, 'unique_conflict')
        elseif count >= cap then
          refuse(pid, nil, id, 'cap')
        else
          redis.call('SADD', k('i', id), pid)
          redis.call('HSET', g, '=' .. id, sealed[id] or '1')
          redis.call('HINCRBY', g, '#' .. t, 1)
          if unique then redis.call('HSET', g, '!' .. t, value_of(id)) end
          if mark then redis.call('HSET', g, '!' .. mark[1], mark[2]) end
        end
      end
    end
  end
  return finish(pid, created)
end

-- The order of resolution, across every worker (scripts run one at a time): a rebuild from
-- history replays events in it.
local order = 0
if not replay then order = redis.call('INCRBY', k('order'), #batch) - #batch end

local outs = {}
for n, e in ipairs(batch) do
  if not replay then resolution = order + n end
  outs[n] = resolve_event(
    e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9], e[10] or {}, tonumber(e[11] or 0),
    e[12]
  )
end
return '[' .. table.concat(outs, ',') .. ']'
