package redis

import (
	goredis "github.com/redis/go-redis/v9"
)

// Every script touches the keys of one hash tag only: a broadcast's, one
// of its seat groups' (groups.go), a quota's or the event ids', so it runs
// on one slot of a Redis Cluster. Scripts answer a table whose first
// element is a status ("ok", "fenced", "notfound", ...) and whose rest is
// the payload, so that Go maps statuses to store errors in one place.
//
// Fenced writes take the lease key as KEYS[1] and the fence as ARGV[1]
// (holder, "" for none) and ARGV[2] (token).
const fenceCheck = `
local function fenced()
  if ARGV[1] == '' then return false end
  local h = redis.call('HMGET', KEYS[1], 'holder', 'token')
  return h[1] ~= ARGV[1] or h[2] ~= ARGV[2]
end
`

// floorCheck is fenceCheck for a seat group on another slot than the
// broadcast's lease (groups.go): KEYS[1] is the group's fence floors (lease
// name → the highest token written with), ARGV[1] and ARGV[2] the fence,
// and the last ARGV the lease's name. A write is refused once a later
// grant of the lease has written to the group, or told it of its grant
// (raiseFloor, when granted); the Go side checks first that the lease is
// still held.
const floorCheck = `
local function fenced()
  if ARGV[1] == '' then return false end
  local name, t = ARGV[#ARGV], tonumber(ARGV[2])
  local f = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  if t < f then return true end
  if t > f then redis.call('HSET', KEYS[1], name, ARGV[2]) end
  return false
end
`

// fencedSeatScript is a fenced script over one seat group's keys (KEYS[2]
// on), in two builds: fenced by the lease itself, on the broadcast's slot
// (group 0), or by the group's floors (any other group).
type fencedSeatScript struct{ lease, floor *goredis.Script }

func newFencedSeatScript(body string) fencedSeatScript {
	return fencedSeatScript{
		lease: goredis.NewScript(fenceCheck + seatLib + body),
		floor: goredis.NewScript(floorCheck + seatLib + body),
	}
}

// seatLib is what every script over a broadcast's seats shares. Such a
// script takes the broadcast's seat keys (seatKeys, in Go) from KEYS[o+1]
// on, o being the keys before them (a fenced write's lease): open
// (seatable ARNs), counts (ARN → seats), rank (ARN → "capacity
// createdMicros"), seats (user → seat JSON), expiry (users by ExpiresAt
// micros), stages (ARN → record), on (the prefix of the per-stage seat
// sets: on..ARN holds the stage's users, so that a stage's seats are found
// without reading the broadcast's), totals (tracked seats and the sum of
// their takenSec, Unix seconds, so that watch time is summed without
// reading the seats; and 'room' = 1 once room is kept), room (the stages
// that take viewers and have room, by -seats then roomMember: ZRANGE 0 0
// is store.Fuller's first, so that a join is O(log stages)), away (a seat
// group's users whose seat is in another group: user → that group; see
// groups.go).
const seatLib = `
local function seatKeys(o)
  return {open = KEYS[o+1], counts = KEYS[o+2], rank = KEYS[o+3], seats = KEYS[o+4], expiry = KEYS[o+5],
    stages = KEYS[o+6], on = KEYS[o+7], totals = KEYS[o+8], room = KEYS[o+9], away = KEYS[o+10]}
end

-- roomMember orders stages of equal seats oldest first, then by ARN: the
-- creation time (micros, from the rank; before 1970 counts as 1970) in 17
-- digits, then the ARN, which starts at the 18th character.
local function roomMember(rank, arn)
  local created = string.match(rank, ' (%-?%d+)$') or '0'
  if string.sub(created, 1, 1) == '-' then created = '0' end
  return string.rep('0', 17 - #created) .. created .. arn
end

-- fits says whether a stage takes viewers and has room, from its records,
-- and answers its seats.
local function fits(K, arn, rank)
  if redis.call('SISMEMBER', K.open, arn) == 0 then return false, 0 end
  local cap = tonumber(string.match(rank or '0 0', '^(%d+) ') or '0')
  local n = tonumber(redis.call('HGET', K.counts, arn) or '0')
  return n < cap, n
end

-- index puts a stage in room, or takes it out, from its records.
local function index(K, arn)
  local rank = redis.call('HGET', K.rank, arn)
  if not rank then return end
  local m = roomMember(rank, arn)
  local ok, n = fits(K, arn, rank)
  if ok then
    redis.call('ZADD', K.room, -n, m)
  else
    redis.call('ZREM', K.room, m)
  end
end

-- reindex puts every stage that takes viewers in room from its records:
-- O(stages), so never on a join but the broadcast's first.
local function reindex(K)
  for _, arn in ipairs(redis.call('SMEMBERS', K.open)) do index(K, arn) end
end

-- untrack takes a seat (decoded) out of the totals. A seat from before the
-- totals were kept has no takenSec and was never in them.
local function untrack(K, seat)
  if seat.takenSec then
    redis.call('HINCRBY', K.totals, 'tracked', -1)
    redis.call('HINCRBY', K.totals, 'takenSum', -seat.takenSec)
  end
end

-- freeSeat drops a seat (decoded) of user and gives its place back to its
-- stage, if the stage is still there.
local function freeSeat(K, user, seat)
  redis.call('HDEL', K.seats, user)
  redis.call('ZREM', K.expiry, user)
  redis.call('SREM', K.on .. seat.stageArn, user)
  untrack(K, seat)
  local n = tonumber(redis.call('HGET', K.counts, seat.stageArn) or '0')
  if n > 0 then redis.call('HINCRBY', K.counts, seat.stageArn, -1) end
  index(K, seat.stageArn)
end

-- freeAll frees the seats of users (those that have one) and answers them
-- after 'ok'.
local function freeAll(K, users)
  local out = {'ok'}
  for _, user in ipairs(users) do
    local cur = redis.call('HGET', K.seats, user)
    if cur then
      freeSeat(K, user, cjson.decode(cur))
      table.insert(out, cur)
    else
      redis.call('ZREM', K.expiry, user)
    end
  end
  return out
end

-- dropGroup deletes a seat group's keys and answers 'ok', the ARNs of its
-- stages and its seats.
local function dropGroup(K)
  local arns = redis.call('HKEYS', K.stages)
  local seats = redis.call('HVALS', K.seats)
  for _, arn in ipairs(arns) do redis.call('DEL', K.on .. arn) end
  redis.call('DEL', K.open, K.counts, K.rank, K.seats, K.expiry, K.stages, K.totals, K.room, K.away)
  return {'ok', arns, seats}
end
`

// seatFuncs are the seat operations, as Lua functions over the seat keys
// from KEYS[1].
const seatFuncs = seatLib + `
local K = seatKeys(0)

-- fullest is store.Fuller's first stage with room, from room; a broadcast
-- whose room was never kept (its records are older) gets it built first.
-- An entry that does not fit is put right and passed over, so that a
-- wrong index can cost time but never a seat beyond capacity. A stage
-- missing from room (an instance of an earlier version freed a seat
-- without keeping it, during a rolling upgrade) is put back by the next
-- expiry sweep, not here: a join told full at capacity stays O(log stages).
local function fullest()
  if redis.call('HGET', K.totals, 'room') ~= '1' then
    reindex(K)
    redis.call('HSET', K.totals, 'room', '1')
  end
  while true do
    local top = redis.call('ZRANGE', K.room, 0, 0)
    if #top == 0 then return nil end
    local arn = string.sub(top[1], 18)
    if fits(K, arn, redis.call('HGET', K.rank, arn)) then return arn end
    redis.call('ZREM', K.room, top[1])
    index(K, arn)
  end
end

-- reserve: the viewer's seat if its stage still takes viewers (renewed),
-- else a seat on the asked-for stage (want, or '' for any) or the fullest
-- seatable one with room: store.Fuller, never beyond capacity. A seat on a
-- stage that no longer takes viewers is freed once there is another, and
-- answered fourth (for its session to close); an answer without a seat
-- answers it fourth as well. With seat groups (mode not ''), want '-' is
-- a stage in another group, and mode 'home' (this is the user's home
-- group) answers 'away' and the group of a seat kept in another group;
-- mode 'keep' (the group a claim names) only renews or moves a seat the
-- user has here, answering 'gone' when there is none.
local function reserve(user, want, pid, takenAt, expRfc, expMicros, bid, takenSec, mode)
  local cur = redis.call('HGET', K.seats, user)
  local old
  if cur then
    old = cjson.decode(cur)
    if redis.call('SISMEMBER', K.open, old.stageArn) == 1 then
      old.expiresAt = expRfc
      cur = cjson.encode(old)
      redis.call('HSET', K.seats, user, cur)
      redis.call('ZADD', K.expiry, expMicros, user)
      return {'ok', cur, redis.call('HGET', K.counts, old.stageArn) or '0'}
    end
  elseif mode == 'home' then
    local g = redis.call('HGET', K.away, user)
    if g then return {'away', g} end
  elseif mode == 'keep' then
    return {'gone'}
  end
  local best
  if want == '-' then
    return {'elsewhere', '', '', cur or ''}
  elseif want == '' then
    best = fullest()
    if not best then
      if redis.call('SCARD', K.open) == 0 then return {'notlive', '', '', cur or ''} end
      return {'full', '', '', cur or ''}
    end
  elseif fits(K, want, redis.call('HGET', K.rank, want)) then
    best = want
  else
    if redis.call('HEXISTS', K.stages, want) == 0 then return {'notfound', '', '', cur or ''} end
    if redis.call('SISMEMBER', K.open, want) == 0 then return {'noteligible', '', '', cur or ''} end
    return {'full', '', '', cur or ''}
  end
  if old then freeSeat(K, user, old) end
  local n = redis.call('HINCRBY', K.counts, best, 1)
  index(K, best)
  redis.call('SADD', K.on .. best, user)
  redis.call('HINCRBY', K.totals, 'tracked', 1)
  redis.call('HINCRBY', K.totals, 'takenSum', takenSec)
  local seat = cjson.encode({broadcastId = bid, userId = user, stageArn = best, participantId = pid, takenAt = takenAt, expiresAt = expRfc, takenSec = tonumber(takenSec)})
  redis.call('HSET', K.seats, user, seat)
  redis.call('ZADD', K.expiry, expMicros, user)
  return {'ok', seat, tostring(n), cur or ''}
end

-- renew: the seat's lease, if its owner is the one named ('' for any).
-- Mode 'home' answers 'away' and the group of a seat kept in another.
local function renew(user, pid, stage, expRfc, expMicros, mode)
  local cur = redis.call('HGET', K.seats, user)
  if not cur then
    local g = mode == 'home' and redis.call('HGET', K.away, user)
    if g then return {'away', g} end
    return {'notfound'}
  end
  local seat = cjson.decode(cur)
  if (pid ~= '' and seat.participantId ~= pid) or (stage ~= '' and seat.stageArn ~= stage) then
    return {'notowner'}
  end
  seat.expiresAt = expRfc
  cur = cjson.encode(seat)
  redis.call('HSET', K.seats, user, cur)
  redis.call('ZADD', K.expiry, expMicros, user)
  return {'ok', cur}
end

-- release: the seat, freed, if it is on stage ('' for any). Mode 'home'
-- forgets a seat kept in another group and answers 'away' and the group.
local function release(user, mode, stage)
  local cur = redis.call('HGET', K.seats, user)
  if not cur then
    local g = mode == 'home' and redis.call('HGET', K.away, user)
    if g then
      redis.call('HDEL', K.away, user)
      return {'away', g}
    end
    return {'notfound'}
  end
  local seat = cjson.decode(cur)
  if stage ~= '' and seat.stageArn ~= stage then return {'notowner'} end
  freeSeat(K, user, seat)
  return {'ok', cur}
end

-- claim, in the user's home group, records that the user's seat is now the
-- one at ('group takenAtNanos', or '' for a seat in this group), where it
-- was the one claimed as from ('' for one in this group, or none). It
-- answers 'away' and the claim if a join made at the same time claimed
-- another seat in another group first, 'home' and the seat if this group
-- has a seat for the user on a stage that takes viewers; a seat here on a
-- stage that does not is freed and answered fourth.
local function claim(user, at, from)
  local claimed = redis.call('HGET', K.away, user)
  if claimed and claimed ~= from and string.match(claimed, '^[^ ]*') ~= string.match(at, '^[^ ]*') then
    return {'away', claimed}
  end
  if at == '' then
    redis.call('HDEL', K.away, user)
    return {'ok'}
  end
  local cur = redis.call('HGET', K.seats, user)
  if cur then
    local seat = cjson.decode(cur)
    if redis.call('SISMEMBER', K.open, seat.stageArn) == 1 then return {'home', cur} end
    freeSeat(K, user, seat)
  end
  redis.call('HSET', K.away, user, at)
  return {'ok', '', '', cur or ''}
end

-- unclaim forgets the claim of a seat (its exact value), once the seat is
-- freed: a newer seat of the user's in the same group keeps its claim.
local function unclaim(user, value)
  if redis.call('HGET', K.away, user) == value then redis.call('HDEL', K.away, user) end
  return {'ok'}
end
`

var (
	// KEYS: lease, token counter. ARGV: holder, ttl ms. Answers the
	// holder, the token, the ms left and '1' if the grant is new.
	acquireLease = goredis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token')
if cur[1] and cur[1] ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'wanted', 1)
  return {'held', cur[1], cur[2], redis.call('PTTL', KEYS[1])}
end
local token, new = cur[2], '0'
if not cur[1] then
  token = redis.call('INCR', KEYS[2])
  new = '1'
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'ok', ARGV[1], tostring(token), tonumber(ARGV[2]), new}
`)

	// KEYS: a seat group's fence floors. ARGV: lease name, token. A new
	// grant of the lease tells the groups on other slots, so that the
	// writes of the grant before it are refused there from now on.
	raiseFloor = goredis.NewScript(`
local f = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > f then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return {'ok'}
`)

	// KEYS: lease. ARGV: holder, token. Answers whether another holder
	// asked for the lease meanwhile.
	releaseLease = goredis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token', 'wanted')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return {'ok', cur[3] or '0'}
end
return {'ok', '0'}
`)

	// KEYS: lease, broadcast, seat groups. ARGV: fence, json, seat groups.
	createBroadcast = goredis.NewScript(fenceCheck + `
if fenced() then return {'fenced'} end
local cur = redis.call('GET', KEYS[2])
if cur then return {'exists', cur} end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4])
return {'ok'}
`)

	// KEYS: lease, broadcast. ARGV: fence, json.
	putBroadcast = goredis.NewScript(fenceCheck + `
if redis.call('EXISTS', KEYS[2]) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
redis.call('SET', KEYS[2], ARGV[3])
return {'ok'}
`)

	// KEYS: lease, broadcast, hosts, replications, demand, seat groups,
	// then the seat keys. ARGV: fence. Deletes every key of the broadcast
	// on its slot but its leases. Answers the ARNs of the stages dropped
	// (for the stage index, on another slot) and the seats freed (few: an
	// end frees its seats with dropSeats first).
	deleteBroadcast = goredis.NewScript(fenceCheck + seatLib + `
if redis.call('EXISTS', KEYS[2]) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return dropGroup(seatKeys(6))
`)

	// KEYS: floors, then the seat keys. ARGV: fence, lease name. Deletes
	// a seat group on a slot of its own (groups.go) but its floors, and
	// answers as deleteBroadcast.
	deleteGroup = newFencedSeatScript(`
if fenced() then return {'fenced'} end
return dropGroup(seatKeys(1))
`)

	// KEYS: lease (or floors), then the seat keys. ARGV: fence, arn,
	// json, seatable ("1" or "0"), rank ("capacity createdMicros"), lease
	// name.
	putStage = newFencedSeatScript(`
if fenced() then return {'fenced'} end
local K = seatKeys(1)
local arn = ARGV[3]
local old = redis.call('HGET', K.rank, arn)
if old and old ~= ARGV[6] then redis.call('ZREM', K.room, roomMember(old, arn)) end
redis.call('HSET', K.stages, arn, ARGV[4])
redis.call('HSET', K.rank, arn, ARGV[6])
if ARGV[5] == '1' then redis.call('SADD', K.open, arn) else redis.call('SREM', K.open, arn) end
index(K, arn)
return {'ok'}
`)

	// KEYS: lease (or floors), then the seat keys. ARGV: fence, arn,
	// seatable, lease name.
	setSeatable = newFencedSeatScript(`
local K = seatKeys(1)
local arn = ARGV[3]
if redis.call('HEXISTS', K.stages, arn) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
if ARGV[4] == '1' then redis.call('SADD', K.open, arn) else redis.call('SREM', K.open, arn) end
index(K, arn)
return {'ok'}
`)

	// KEYS: lease (or floors), then the seat keys. ARGV: fence, arn,
	// lease name. Answers the freed seats. The stage's set names its
	// seats: O(the stage's seats). Only seats taken before the sets
	// existed (a deployment upgraded with viewers seated: its set is short
	// of the count) need the whole group read.
	deleteStage = newFencedSeatScript(`
local K = seatKeys(1)
local arn = ARGV[3]
if redis.call('HEXISTS', K.stages, arn) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
local rank = redis.call('HGET', K.rank, arn)
if rank then redis.call('ZREM', K.room, roomMember(rank, arn)) end
redis.call('HDEL', K.stages, arn)
redis.call('HDEL', K.rank, arn)
redis.call('SREM', K.open, arn)
local n = tonumber(redis.call('HGET', K.counts, arn) or '0')
redis.call('HDEL', K.counts, arn)
local on = K.on .. arn
local out = {'ok'}
local function free(user, cur, seat)
  redis.call('HDEL', K.seats, user)
  redis.call('ZREM', K.expiry, user)
  untrack(K, seat)
  table.insert(out, cur)
end
if n > 0 and redis.call('SCARD', on) >= n then
  for _, user in ipairs(redis.call('SMEMBERS', on)) do
    local cur = redis.call('HGET', K.seats, user)
    if cur then
      local seat = cjson.decode(cur)
      if seat.stageArn == arn then free(user, cur, seat) end
    end
  end
elseif n > 0 then
  local all = redis.call('HGETALL', K.seats)
  for i = 1, #all, 2 do
    local seat = cjson.decode(all[i+1])
    if seat.stageArn == arn then free(all[i], all[i+1], seat) end
  end
end
redis.call('DEL', on)
return out
`)

	// KEYS: lease, hash. ARGV: fence, field, value.
	fencedHSet = goredis.NewScript(fenceCheck + `
if fenced() then return {'fenced'} end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return {'ok'}
`)

	// KEYS: lease, hash. ARGV: fence, field.
	fencedHDel = goredis.NewScript(fenceCheck + `
if fenced() then return {'fenced'} end
if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return {'notfound'} end
return {'ok'}
`)

	// KEYS: lease (or floors), then the seat keys. ARGV: fence, most to
	// free, lease name.
	// Answers the freed seats.
	dropSeats = newFencedSeatScript(`
if fenced() then return {'fenced'} end
local K = seatKeys(1)
return freeAll(K, redis.call('ZRANGE', K.expiry, 0, tonumber(ARGV[3]) - 1))
`)

	// KEYS: counts, totals. Answers the seats (the stages' counts), the
	// seats tracked in the totals and the sum of their takenSec.
	seatTotals = goredis.NewScript(`
local seats = 0
for _, n in ipairs(redis.call('HVALS', KEYS[1])) do seats = seats + tonumber(n) end
local t = redis.call('HMGET', KEYS[2], 'tracked', 'takenSum')
return {'ok', tostring(seats), t[1] or '0', t[2] or '0'}
`)

	// KEYS: the rate's key. ARGV: emission interval (µs), burst. GCRA on
	// Redis's clock, so that every instance agrees: answers how long
	// (µs) the caller waits for its turn, which it has taken.
	quotaTurn = goredis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
local nxt = tat + interval
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
return {'ok', string.format('%d', wait)}
`)

	// Many seat operations of one seat group in one round trip, in order,
	// each as it would run alone. KEYS: seatKeys. ARGV: the operations one
	// after another, each its name (one of seatFuncs's) and its function's
	// arguments. Answers four values per operation: its status, its seat
	// (JSON, a group for 'away', or ''), the stage's seats ('' but for a
	// reserve), and the seat a reserve replaced or found on a stage that
	// takes no viewers (JSON, or '').
	seatBatch = goredis.NewScript(seatFuncs + `
local out, i = {}, 1
while i <= #ARGV do
  local r
  local op = ARGV[i]
  if op == 'reserve' then
    r = reserve(ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8], ARGV[i+9])
    i = i + 10
  elseif op == 'renew' then
    r = renew(ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6])
    i = i + 7
  elseif op == 'release' then
    r = release(ARGV[i+1], ARGV[i+2], ARGV[i+3])
    i = i + 4
  elseif op == 'claim' then
    r = claim(ARGV[i+1], ARGV[i+2], ARGV[i+3])
    i = i + 4
  elseif op == 'unclaim' then
    r = unclaim(ARGV[i+1], ARGV[i+2])
    i = i + 3
  else
    return redis.error_reply('unknown seat operation ' .. op)
  end
  table.insert(out, r[1])
  table.insert(out, r[2] or '')
  table.insert(out, r[3] or '')
  table.insert(out, r[4] or '')
end
return out
`)

	// KEYS: the seat keys. ARGV: now (micros), most to free. Answers the
	// freed seats. The sweep also puts right the index of stages with room
	// (fullest says why).
	expireSeats = goredis.NewScript(seatLib + `
local K = seatKeys(0)
local out = freeAll(K, redis.call('ZRANGEBYSCORE', K.expiry, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2]))
if redis.call('HGET', K.totals, 'room') == '1' then reindex(K) end
return out
`)

	// KEYS: events (event ids by expiry, in ms of Redis's clock). ARGV:
	// id, ttl (ms), limit. Answers "new" or "seen". Redis's clock, not
	// the caller's, so that instances whose clocks differ agree on expiry.
	firstSeen = goredis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'seen'} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
-- Past the limit, the ids closest to expiry go, even the one just added.
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1) end
return {'new'}
`)
)
