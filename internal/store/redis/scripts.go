package redis

import (
	goredis "github.com/redis/go-redis/v9"
)

// Every script touches the keys of one broadcast only, all under the
// broadcast's hash tag, or the one key of event ids, so it runs on one slot
// of a Redis Cluster. Scripts answer a table whose first element is a status
// ("ok", "fenced", "notfound", ...) and whose rest is the payload, so that
// Go maps statuses to store errors in one place.
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

// untrack takes a seat (decoded) out of the broadcast's totals hash:
// tracked seats and the sum of their takenSec. A seat from before the
// totals were kept has no takenSec and was never in them.
const untrack = `
local function untrack(totals, seat)
  if seat.takenSec then
    redis.call('HINCRBY', totals, 'tracked', -1)
    redis.call('HINCRBY', totals, 'takenSum', -seat.takenSec)
  end
end
`

// freeSeat drops a seat (decoded) of user and gives its place back to its
// stage, if the stage is still there. KEYS: seats count hash, seat hash,
// expiry zset, the prefix of the per-stage seat sets, totals hash (passed
// in).
const freeSeat = untrack + `
local function freeSeat(counts, seats, expiry, on, totals, user, seat)
  redis.call('HDEL', seats, user)
  redis.call('ZREM', expiry, user)
  redis.call('SREM', on .. seat.stageArn, user)
  untrack(totals, seat)
  local n = tonumber(redis.call('HGET', counts, seat.stageArn) or '0')
  if n > 0 then redis.call('HINCRBY', counts, seat.stageArn, -1) end
end
`

// seatFuncs are the seat operations, as Lua functions over one broadcast's
// keys, in the order seatKeys gives them: open (seatable ARNs), counts (ARN
// → seats), rank (ARN → "capacity createdMicros"), seats (user → seat
// JSON), expiry (users by ExpiresAt micros), stages (ARN → record), the
// prefix of the per-stage seat sets (prefix..ARN: the stage's users), which
// let a stage's seats be found without reading the broadcast's, and totals
// (tracked seats and the sum of their takenSec, Unix seconds), which sum
// the viewers' watch time without reading the seats.
const seatFuncs = freeSeat + `
-- reserve: the viewer's seat if its stage still takes viewers (renewed),
-- else a seat on the asked-for stage (want, or '' for any) or the fullest
-- seatable one with room: store.Fuller, never beyond capacity. A seat on a
-- stage that no longer takes viewers is freed once there is another, and
-- answered fourth (for its session to close).
local function reserve(user, want, pid, takenAt, expRfc, expMicros, bid, takenSec)
  local cur = redis.call('HGET', KEYS[4], user)
  local old
  if cur then
    old = cjson.decode(cur)
    if redis.call('SISMEMBER', KEYS[1], old.stageArn) == 1 then
      old.expiresAt = expRfc
      cur = cjson.encode(old)
      redis.call('HSET', KEYS[4], user, cur)
      redis.call('ZADD', KEYS[5], expMicros, user)
      return {'ok', cur, redis.call('HGET', KEYS[2], old.stageArn) or '0'}
    end
  end
  local open
  if want == '' then
    open = redis.call('SMEMBERS', KEYS[1])
  elseif redis.call('SISMEMBER', KEYS[1], want) == 1 then
    open = {want}
  else
    open = {}
  end
  local best, bestN, bestCreated
  if #open > 0 then
    -- Two reads for all the stages, not two per stage: a join's cost is
    -- then mostly the loop below.
    local counts = redis.call('HMGET', KEYS[2], unpack(open))
    local ranks = redis.call('HMGET', KEYS[3], unpack(open))
    for i, arn in ipairs(open) do
      local n = tonumber(counts[i] or '0')
      local cap, created = string.match(ranks[i] or '0 0', '^(%d+) (%-?%d+)$')
      cap, created = tonumber(cap), tonumber(created)
      if n < cap and (best == nil or n > bestN or (n == bestN and (created < bestCreated or (created == bestCreated and arn < best)))) then
        best, bestN, bestCreated = arn, n, created
      end
    end
  end
  if not best then
    if want ~= '' then
      if redis.call('HEXISTS', KEYS[6], want) == 0 then return {'notfound'} end
      if redis.call('SISMEMBER', KEYS[1], want) == 0 then return {'noteligible'} end
      return {'full'}
    end
    if #open == 0 then return {'notlive'} end
    return {'full'}
  end
  if old then freeSeat(KEYS[2], KEYS[4], KEYS[5], KEYS[7], KEYS[8], user, old) end
  local n = redis.call('HINCRBY', KEYS[2], best, 1)
  redis.call('SADD', KEYS[7] .. best, user)
  redis.call('HINCRBY', KEYS[8], 'tracked', 1)
  redis.call('HINCRBY', KEYS[8], 'takenSum', takenSec)
  local seat = cjson.encode({broadcastId = bid, userId = user, stageArn = best, participantId = pid, takenAt = takenAt, expiresAt = expRfc, takenSec = tonumber(takenSec)})
  redis.call('HSET', KEYS[4], user, seat)
  redis.call('ZADD', KEYS[5], expMicros, user)
  return {'ok', seat, tostring(n), cur or ''}
end

-- renew: the seat's lease, if its owner is the one named ('' for any).
local function renew(user, pid, stage, expRfc, expMicros)
  local cur = redis.call('HGET', KEYS[4], user)
  if not cur then return {'notfound'} end
  local seat = cjson.decode(cur)
  if (pid ~= '' and seat.participantId ~= pid) or (stage ~= '' and seat.stageArn ~= stage) then
    return {'notowner'}
  end
  seat.expiresAt = expRfc
  cur = cjson.encode(seat)
  redis.call('HSET', KEYS[4], user, cur)
  redis.call('ZADD', KEYS[5], expMicros, user)
  return {'ok', cur}
end

-- release: the seat, freed.
local function release(user)
  local cur = redis.call('HGET', KEYS[4], user)
  if not cur then return {'notfound'} end
  freeSeat(KEYS[2], KEYS[4], KEYS[5], KEYS[7], KEYS[8], user, cjson.decode(cur))
  return {'ok', cur}
end
`

var (
	// KEYS: lease, token counter. ARGV: holder, ttl ms.
	acquireLease = goredis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token')
if cur[1] and cur[1] ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'wanted', 1)
  return {'held', cur[1], cur[2], redis.call('PTTL', KEYS[1])}
end
local token = cur[2]
if not cur[1] then
  token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'ok', ARGV[1], tostring(token), tonumber(ARGV[2])}
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

	// KEYS: lease, broadcast. ARGV: fence, json.
	createBroadcast = goredis.NewScript(fenceCheck + `
if fenced() then return {'fenced'} end
local cur = redis.call('GET', KEYS[2])
if cur then return {'exists', cur} end
redis.call('SET', KEYS[2], ARGV[3])
return {'ok'}
`)

	// KEYS: lease, broadcast. ARGV: fence, json.
	putBroadcast = goredis.NewScript(fenceCheck + `
if redis.call('EXISTS', KEYS[2]) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
redis.call('SET', KEYS[2], ARGV[3])
return {'ok'}
`)

	// KEYS: lease, broadcast, stages, seats, then the broadcast's other
	// keys but its leases (open, rank, counts, expiry, hosts, replications,
	// demand, totals), and last the prefix of the per-stage seat sets. ARGV: fence.
	// Answers the ARNs of the stages dropped (for the stage index, on
	// another slot) and the seats freed.
	deleteBroadcast = goredis.NewScript(fenceCheck + `
if redis.call('EXISTS', KEYS[2]) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
local arns = redis.call('HKEYS', KEYS[3])
local seats = redis.call('HVALS', KEYS[4])
for _, arn in ipairs(arns) do redis.call('DEL', KEYS[#KEYS] .. arn) end
redis.call('DEL', unpack(KEYS, 2, #KEYS - 1))
return {'ok', arns, seats}
`)

	// KEYS: lease, stages, open, rank. ARGV: fence, arn, json, seatable
	// ("1" or "0"), rank ("capacity createdMicros").
	putStage = goredis.NewScript(fenceCheck + `
if fenced() then return {'fenced'} end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[6])
if ARGV[5] == '1' then redis.call('SADD', KEYS[3], ARGV[3]) else redis.call('SREM', KEYS[3], ARGV[3]) end
return {'ok'}
`)

	// KEYS: lease, stages, open. ARGV: fence, arn, seatable.
	setSeatable = goredis.NewScript(fenceCheck + `
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], ARGV[3]) else redis.call('SREM', KEYS[3], ARGV[3]) end
return {'ok'}
`)

	// KEYS: lease, stages, open, rank, counts, seats, expiry, the prefix of
	// the per-stage seat sets, totals. ARGV: fence, arn. Answers the freed
	// seats.
	// The stage's set names its seats: O(the stage's seats). Only seats
	// taken before the sets existed (a deployment upgraded with viewers
	// seated: its set is short of the count) need the whole broadcast read.
	deleteStage = goredis.NewScript(fenceCheck + untrack + `
local arn = ARGV[3]
if redis.call('HEXISTS', KEYS[2], arn) == 0 then return {'notfound'} end
if fenced() then return {'fenced'} end
redis.call('HDEL', KEYS[2], arn)
redis.call('HDEL', KEYS[4], arn)
redis.call('SREM', KEYS[3], arn)
local n = tonumber(redis.call('HGET', KEYS[5], arn) or '0')
redis.call('HDEL', KEYS[5], arn)
local on = KEYS[8] .. arn
local out = {'ok'}
local function free(user, cur, seat)
  redis.call('HDEL', KEYS[6], user)
  redis.call('ZREM', KEYS[7], user)
  untrack(KEYS[9], seat)
  table.insert(out, cur)
end
if n > 0 and redis.call('SCARD', on) >= n then
  for _, user in ipairs(redis.call('SMEMBERS', on)) do
    local cur = redis.call('HGET', KEYS[6], user)
    if cur then
      local seat = cjson.decode(cur)
      if seat.stageArn == arn then free(user, cur, seat) end
    end
  end
elseif n > 0 then
  local all = redis.call('HGETALL', KEYS[6])
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

	// The seat operations, one at a time. KEYS: seatKeys. ARGV: those of
	// the operation's function in seatFuncs.
	reserveSeat = goredis.NewScript(seatFuncs + `return reserve(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])`)
	renewSeat   = goredis.NewScript(seatFuncs + `return renew(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])`)
	releaseSeat = goredis.NewScript(seatFuncs + `return release(ARGV[1])`)

	// KEYS: lease, counts, seats, expiry, the prefix of the per-stage seat
	// sets, totals. ARGV: fence, most to free. Answers the freed seats.
	dropSeats = goredis.NewScript(fenceCheck + freeSeat + `
if fenced() then return {'fenced'} end
local out = {'ok'}
for _, user in ipairs(redis.call('ZRANGE', KEYS[4], 0, tonumber(ARGV[3]) - 1)) do
  local cur = redis.call('HGET', KEYS[3], user)
  redis.call('ZREM', KEYS[4], user)
  if cur then
    freeSeat(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], user, cjson.decode(cur))
    table.insert(out, cur)
  end
end
return out
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

	// Many seat operations of one broadcast in one round trip, in order,
	// each as it would run alone. KEYS: seatKeys. ARGV: the operations one
	// after another, each its name ('reserve', 'renew' or 'release') and
	// its function's arguments. Answers three values per operation: its
	// status, its seat (JSON, or ''), and the stage's seats ('' but for a
	// reserve).
	seatBatch = goredis.NewScript(seatFuncs + `
local out, i = {}, 1
while i <= #ARGV do
  local r
  if ARGV[i] == 'reserve' then
    r = reserve(ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8])
    i = i + 9
  elseif ARGV[i] == 'renew' then
    r = renew(ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5])
    i = i + 6
  else
    r = release(ARGV[i+1])
    i = i + 2
  end
  table.insert(out, r[1])
  table.insert(out, r[2] or '')
  table.insert(out, r[3] or '')
  table.insert(out, r[4] or '')
end
return out
`)

	// KEYS: counts, seats, expiry, the prefix of the per-stage seat sets,
	// totals. ARGV: now (micros), most to free. Answers the freed seats.
	expireSeats = goredis.NewScript(freeSeat + `
local out = {'ok'}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])) do
  local cur = redis.call('HGET', KEYS[2], user)
  redis.call('ZREM', KEYS[3], user)
  if cur then
    freeSeat(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], user, cjson.decode(cur))
    table.insert(out, cur)
  end
end
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
