#!lua name=servertrack
--[[
ServerTrack's rollup merges, run inside Redis (loaded by servertrack.store.redis_store).

Keys of one server (they share the hash tag {<name>}, so one call never spans slots):
  st:{<name>}:m  string, the minute ring: 61 cells of 64 bytes, cell k at offset 64*k holds the
                 minute bucket b with b % 61 == k (a zero stamp means empty)
  st:{<name>}:h  hash: fields "0".."24" hold the hour cells (b % 25), "s" the server's meta,
                 "w:<writer>" the last batch number applied per writer
  st:{<name>}:i  hash: field <writer> holds that writer's health record (written when it changes)
The change counter st:{#changes}:n goes up by one after each merge, so readers know when a
cached answer may have changed.
Cell (little endian, 64 bytes): stamp u32, samples u32, cpu_count u32, ram_count u32,
  cpu_sum f64, cpu_min f64, cpu_max f64, ram_sum f64, ram_min f64, ram_max f64.
Meta "s" (32 bytes): last_seen f64, seq f64, seq_ts f64, newest minute u32, newest hour u32.
Guard "w:<writer>" (16 bytes): last batch number applied f64, hour it was written f64.

A key of the wrong type or a field of the wrong size (written by something else, or damaged)
costs only its own server: st_merge and st_health check every key and field they read before
they write anything, and answer that server with an error reply 'CORRUPT <key>: <why>' in its
place (the other servers of the call are merged as usual).

Redis 7.0 does not let a library reach struct, math, string, tonumber or unpack while it loads,
so they are bound on the first call.
]]

local VERSION = '4'

local CELL = '<I4I4I4I4dddddd'
local CELL_SIZE = 64
local MINUTE_SLOTS = 61
local HOUR_SLOTS = 25
local META = '<dddI4I4'
local GUARD = '<dd'
local CONTROL = '<ddddddd'
local HEALTH_HEAD = '<ddd'
local HEALTH_HEAD_SIZE = 24
local META_SIZE = 32
local GUARD_SIZE = 16
local EMPTY_RING = nil

local spack, sunpack, ssub, srep, floor, tonum, tunpack, tconcat

local function bind()
  spack, sunpack = struct.pack, struct.unpack
  ssub, srep = string.sub, string.rep
  floor, tonum = math.floor, tonumber
  tunpack, tconcat = unpack, table.concat
  EMPTY_RING = srep('\0', CELL_SIZE * MINUTE_SLOTS)
end

-- Stops the merge of one server: st_merge answers it with this error (see the header).
local function corrupt(key, why)
  error({err = 'CORRUPT ' .. key .. ': ' .. why})
end

-- The reply of redis.pcall, or corrupt() when it is an error (a key of the wrong type).
local function checked(key, reply)
  if type(reply) == 'table' and reply.err then corrupt(key, reply.err) end
  return reply
end

-- Adds the cell at `pos` of `buf` into `old` when both hold the same bucket. Returns the cell
-- to store (nil when `old` holds a newer bucket: the new one has left the ring), the new cell's
-- stamp and its sample count. PERF: reading the new cell in place spares a 64-byte string.
local function combine(buf, pos, old)
  local s1, n1, cc1, rc1, cs1, cmin1, cmax1, rs1, rmin1, rmax1 = sunpack(CELL, buf, pos)
  if old and #old >= CELL_SIZE then
    local s0, n0, cc0, rc0, cs0, cmin0, cmax0, rs0, rmin0, rmax0 = sunpack(CELL, old)
    if s0 == s1 then
      if cmin0 < cmin1 then cmin1 = cmin0 end
      if cmax0 > cmax1 then cmax1 = cmax0 end
      if rmin0 < rmin1 then rmin1 = rmin0 end
      if rmax0 > rmax1 then rmax1 = rmax0 end
      return spack(CELL, s1, n0 + n1, cc0 + cc1, rc0 + rc1, cs0 + cs1, cmin1, cmax1,
        rs0 + rs1, rmin1, rmax1), s1, n1
    end
    if s0 > s1 then
      return nil, s1, n1
    end
  end
  return ssub(buf, pos, pos + CELL_SIZE - 1), s1, n1
end

-- Milliseconds from `now` until the end of `bucket` (of `width` seconds) plus `keep` buckets.
local function ttl_ms(bucket, width, keep, now)
  local ms = floor(((bucket + keep) * width - now) * 1000)
  if ms < 1000 then ms = 1000 end
  return ms
end

-- Drops writer guards and health records not written for more than 25 hours. It runs after the
-- merge wrote, so it never fails: a damaged field is left for its own writer to meet, and a
-- health key of the wrong type is left alone.
local function prune_writers(hkey, ikey, hour)
  local fields = redis.call('HGETALL', hkey)
  local old = {}
  for i = 1, #fields, 2 do
    local field, value = fields[i], fields[i + 1]
    if ssub(field, 1, 2) == 'w:' and #value == GUARD_SIZE then
      local _, written = sunpack(GUARD, value)
      if written < hour - 25 then old[#old + 1] = field end
    end
  end
  if #old > 0 then redis.call('HDEL', hkey, tunpack(old)) end
  fields = redis.pcall('HGETALL', ikey)
  if fields.err then return end
  old = {}
  for i = 1, #fields, 2 do
    local value = fields[i + 1]
    if #value >= HEALTH_HEAD_SIZE then
      local _, written = sunpack(HEALTH_HEAD, value)
      if written < hour - 25 then old[#old + 1] = fields[i] end
    end
  end
  if #old > 0 then redis.call('HDEL', ikey, tunpack(old)) end
end

-- The health record `writer` holds in `ikey` (false when none), read before anything is written.
local function held_health(ikey, writer)
  return checked(ikey, redis.pcall('HGET', ikey, writer))
end

-- Stores a writer's health record unless a newer batch already wrote one (`held`, from
-- held_health; a damaged one is replaced); keeps the key's TTL equal to the hour key's.
local function store_health(hkey, ikey, writer, number, hour, now, record, held)
  if held and #held >= HEALTH_HEAD_SIZE then
    local before = sunpack(HEALTH_HEAD, held)
    if before > number then return 0 end
  end
  redis.call('HSET', ikey, writer, spack(HEALTH_HEAD, number, hour, now) .. record)
  local ttl = redis.call('PTTL', hkey)
  if ttl > 0 then redis.call('PEXPIRE', ikey, ttl) end
  return 1
end

--[[
st_merge: apply one writer's folded batches to several servers, each exactly once.
KEYS: m, h, i of each server.  ARGV: writer, now, then per server: control, minute cells,
  hour cells, health record. Control (7 f64): first, last, flags, health batch number, then
  the head of the samples folded: last_seen, seq (-1 = none), seq_ts.
  [first, last]: the range of the writer's batch numbers folded into the call.
  flags: 1 = answer with the whole minute ring (to seed the writer's summary), 2 = also write
  the guard when nothing is applied (so that a WAIT covers the earlier apply), 4 = store the
  health record (kept per writer unless a higher batch number already wrote one).
Answers one reply per server. When nothing is applied (every batch of the call was applied
before, or some were: the caller re-folds those above) it is the last batch number applied, an
integer (with flag 1: [that number, last_seen f64 followed by the ring]). When applied, a
string: hour samples refused because the hour slot holds a newer hour (u32), last_seen (f64),
then the minute cells as merged (with flag 1, the whole ring, unless this call created it).
A server whose keys cannot be merged is answered 'CORRUPT <key>: <why>' (an error reply in its
place) and nothing of it is written.
A server's keys share a hash tag; in a cluster all servers of one call share a slot.
]]
local function merge_one(mkey, hkey, ikey, writer, wfield, now, hour_now, args, a)
  local first, last, flags, health_number, seen, new_seq, new_seq_ts = sunpack(CONTROL, args[a])
  local mcells, hcells = args[a + 1], args[a + 2]

  -- Everything read is checked before anything is written (see the header).
  local nh = #hcells / CELL_SIZE
  local fields = {wfield, 's'}
  for k = 0, nh - 1 do
    local stamp = sunpack('<I4', hcells, k * CELL_SIZE + 1)
    fields[k + 3] = stamp % HOUR_SLOTS
  end
  local got
  if nh == 1 then  -- the common case, without unpack()
    got = checked(hkey, redis.pcall('HMGET', hkey, wfield, 's', fields[3]))
  else
    got = checked(hkey, redis.pcall('HMGET', hkey, tunpack(fields)))
  end
  if got[1] and #got[1] ~= GUARD_SIZE then
    corrupt(hkey, 'field ' .. wfield .. ' is ' .. #got[1] .. ' bytes, not ' .. GUARD_SIZE)
  end
  if got[2] and #got[2] ~= META_SIZE then
    corrupt(hkey, 'field s is ' .. #got[2] .. ' bytes, not ' .. META_SIZE)
  end
  local held = false
  if flags % 8 >= 4 then held = held_health(ikey, writer) end
  if got[1] then
    local applied = sunpack(GUARD, got[1])
    if first <= applied then
      local ring = false
      if flags % 2 == 1 then ring = checked(mkey, redis.pcall('GET', mkey)) end
      if flags % 4 >= 2 then
        redis.call('HSET', hkey, wfield, got[1])
      end
      if flags % 8 >= 4 then
        store_health(hkey, ikey, writer, health_number, hour_now, now, args[a + 3], held)
      end
      if flags % 2 == 1 then
        local seen = -1
        if got[2] then seen = sunpack(META, got[2]) end
        return {applied, spack('<d', seen) .. (ring or '')}
      end
      return applied
    end
  end

  local last_seen, seq, seq_ts, newest_m, newest_h = -1, -1, -1, 0, 0
  if got[2] then
    last_seen, seq, seq_ts, newest_m, newest_h = sunpack(META, got[2])
  end
  if seen > last_seen then last_seen = seen end
  if new_seq >= 0 and new_seq_ts >= seq_ts then
    seq, seq_ts = new_seq, new_seq_ts
  end

  -- hour cells, the guard and the meta: one HSET (a damaged hour cell counts as empty)
  local hset = {hkey}
  local stale = 0
  local top_h = newest_h
  for k = 0, nh - 1 do
    local merged, stamp, samples = combine(hcells, k * CELL_SIZE + 1, got[k + 3])
    if merged then
      if stamp > top_h then top_h = stamp end
      hset[#hset + 1] = fields[k + 3]
      hset[#hset + 1] = merged
    else
      stale = stale + samples
    end
  end

  -- minute cells: read and written in place in the ring (the first read checks its type,
  -- before the first write)
  local nm = #mcells / CELL_SIZE
  local out = {}
  local top_m = newest_m
  local created = false
  for k = 0, nm - 1 do
    local pos = k * CELL_SIZE + 1
    local stamp = sunpack('<I4', mcells, pos)
    local offset = (stamp % MINUTE_SLOTS) * CELL_SIZE
    local old = checked(mkey, redis.pcall('GETRANGE', mkey, offset, offset + CELL_SIZE - 1))
    local merged = combine(mcells, pos, old)
    if old == '' then
      created = true
      local ring = ssub(EMPTY_RING, 1, offset) .. merged .. ssub(EMPTY_RING, offset + CELL_SIZE + 1)
      redis.call('SET', mkey, ring)
    elseif merged then
      redis.call('SETRANGE', mkey, offset, merged)
    end
    if merged then
      if stamp > top_m then top_m = stamp end
      out[#out + 1] = merged
    end
  end
  if top_m > newest_m or created then
    redis.call('PEXPIRE', mkey, ttl_ms(top_m, 60, 61, now))
  end

  local guard = spack(GUARD, last, hour_now)
  local meta = spack(META, last_seen, seq, seq_ts, top_m, top_h)
  local added
  if #hset == 3 then  -- the common case, without unpack()
    added = redis.call('HSET', hkey, hset[2], hset[3], wfield, guard, 's', meta)
  else
    hset[#hset + 1] = wfield
    hset[#hset + 1] = guard
    hset[#hset + 1] = 's'
    hset[#hset + 1] = meta
    added = redis.call('HSET', tunpack(hset))
  end
  if top_h > newest_h or added > 0 then
    local ttl = ttl_ms(top_h, 3600, 25, now)
    redis.call('PEXPIRE', hkey, ttl)
    redis.call('PEXPIRE', ikey, ttl)
    if top_h > newest_h and newest_h > 0 then prune_writers(hkey, ikey, hour_now) end
  end
  if flags % 8 >= 4 then
    store_health(hkey, ikey, writer, health_number, hour_now, now, args[a + 3], held)
  end

  local reply = spack('<I4d', stale, last_seen)
  if flags % 2 == 1 and not created then
    local ring = redis.call('GET', mkey)
    if ring then return reply .. ring end
  end
  return reply .. tconcat(out)
end

-- A failed server's place in an answer: its CORRUPT error, or any other error (which the checks
-- above should leave no room for) named after the server's keys (`key` with its last letter
-- replaced by '*'). Lua's pcall hands an error table raised in a Function over as its text.
local function failed(key, err)
  if type(err) == 'table' and err.err then err = err.err end
  err = tostring(err)
  if ssub(err, 1, 8) ~= 'CORRUPT ' then err = 'CORRUPT ' .. ssub(key, 1, -2) .. '*: ' .. err end
  return {err = err}
end

local function merge(keys, args)
  if spack == nil then bind() end
  local writer, now = args[1], tonum(args[2])
  local wfield = 'w:' .. writer
  local hour_now = floor(now / 3600)
  local out = {}
  for s = 0, #keys / 3 - 1 do
    local mkey = keys[3 * s + 1]
    local ok, answer = pcall(merge_one, mkey, keys[3 * s + 2], keys[3 * s + 3], writer, wfield,
      now, hour_now, args, 3 + 4 * s)
    if ok then out[s + 1] = answer else out[s + 1] = failed(mkey, answer) end
  end
  return out
end

--[[
st_health: a writer's health record for a server that had no samples in the call.
KEYS: h, i.  ARGV: writer, batch number, now, record.  Nothing is written for a server without
data (no hour key): it has nothing to show.  Answers 1 when written, else 0 (or CORRUPT when
the health key is not a hash).
]]
local function health(keys, args)
  if spack == nil then bind() end
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  local now = tonum(args[3])
  local ok, held = pcall(held_health, keys[2], args[1])
  if not ok then return failed(keys[2], held) end
  return store_health(keys[1], keys[2], args[1], tonum(args[2]), floor(now / 3600), now, args[4],
    held)
end

--[[
st_touch: one index shard. KEYS: index sorted set, summary hash.
ARGV: ttl ms, n, n names to index (score 0, ordered by name), then name/record pairs.
]]
local function touch(keys, args)
  if spack == nil then bind() end
  local n = tonum(args[2])
  local zadd = {keys[1]}
  for k = 3, n + 2 do
    zadd[#zadd + 1] = 0
    zadd[#zadd + 1] = args[k]
  end
  if n > 0 then redis.call('ZADD', tunpack(zadd)) end
  if #args > n + 2 then
    redis.call('HSET', keys[2], tunpack(args, n + 3))
  end
  redis.call('PEXPIRE', keys[1], args[1])
  redis.call('PEXPIRE', keys[2], args[1])
  return n
end

--[[
st_prune: drop index entries whose server fell silent. KEYS: index, summary.
ARGV: oldest last_seen kept, names.  A name goes when its summary record is missing or older.
]]
local function prune(keys, args)
  if spack == nil then bind() end
  local oldest = tonum(args[1])
  local gone = {}
  for k = 2, #args do
    local record = redis.call('HGET', keys[2], args[k])
    if not record or sunpack('<d', record) < oldest then gone[#gone + 1] = args[k] end
  end
  if #gone > 0 then
    redis.call('ZREM', keys[1], tunpack(gone))
    redis.call('HDEL', keys[2], tunpack(gone))
  end
  return #gone
end

--[[
st_changed: one more change for readers to notice. KEYS: the change counter. ARGV: ttl ms.
Answers the new count.
]]
local function changed(keys, args)
  local count = redis.call('INCR', keys[1])
  redis.call('PEXPIRE', keys[1], args[1])
  return count
end

redis.register_function('st_merge', merge)
redis.register_function('st_changed', changed)
redis.register_function('st_health', health)
redis.register_function('st_touch', touch)
redis.register_function('st_prune', prune)
redis.register_function{
  function_name = 'st_version',
  callback = function() return VERSION end,
  flags = {'no-writes'},
}
