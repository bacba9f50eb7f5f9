"""The Lua scripts of the Redis room hub: one per operation, each atomic (docs/protocol.md).

Keys of a room R (rooms.names): `wsapp:seq:R` its last seq; `wsapp:epoch:R` its epoch; the Stream
`wsapp:history:R` of kept frames, entry ids `<seq>-0`; `wsapp:sent:R` (hash) and `wsapp:sentt:R`
(sorted set by time) the message ids published or fenced, per sender. Pub/sub channel `wsapp:room:R`.

**Epoch.** A room's history has an identity, its epoch, that changes whenever its continuity cannot
be proven: the epoch key records the epoch and the replication id (`master_replid`) of the Redis
that wrote it. That id changes when a replica is promoted and when a primary restarts, both of which
may have lost the last writes (replication and the append-only file are asynchronous). A script that
finds no epoch key, or (when it checks) one written under another replication id, starts a new
epoch; the seq goes on from what this Redis has. The publish script always checks, so within one
epoch a seq never names two different messages: a failover that lost 8-10 hands out 8 again only
under a new epoch. A handshake's read checks only for a room's first member in a process
(BACKLOG_SCRIPT). An epoch also ends with its seq key: a script that finds the seq key gone
(expired, deleted) starts a new epoch and the seq key at 0, so a counter never starts again under
its old epoch. A new epoch is a new history: the frames the old one kept are dropped (members who
had them keep them; a replay holds only frames of the current epoch). A room's first handshake gives
it both keys, so its first message follows on from the welcome's `seq` 0 in the same epoch.

**Sent ids.** A message id is kept per room and per sender (`<sender>:<id>`) for ROOM_IDS_SECONDS,
at most ROOM_IDS_MAX per room, whatever the history keeps. Its value is `<epoch> <seq>` once
published, or `!<attempt>` once an attempt was fenced: a publish whose reply was lost is settled by
FENCE_SCRIPT, after which that attempt can never publish (Redis runs scripts one at a time, so either
the publish ran first and the fence reports it, or the fence ran first and the publish refuses).

**Memory budget** (docs/security.md, "Redis memory"). Redis runs with `noeviction`, so nothing of a
room's seq, epoch or ids and nothing of the control path is ever evicted; room history is what yields
instead. PUBLISH_SCRIPT counts the room's messages in the current second (`wsapp:rate:R`, refused over
the limit before anything is written) and records the room's last publish in `wsapp:rooms`;
BACKLOG_SCRIPT counts the rooms an address creates per window (`wsapp:created:<address>`) and creates
none while used_memory is over its share of maxmemory; TRIM_SCRIPT, while used_memory is over its
share, deletes the history of the rooms that published least recently and their message ids older
than ROOM_IDS_PRESSURE_SECONDS (seq and epoch stay).
"""

# The seq key outlives the epoch key by this many seconds, so an expiry never leaves an epoch without it.
EPOCH_SLACK = 1

# Shared by every script. trim_below drops the oldest entries whose field number i (2: t, 6: b) is
# below floor; with keep_newest the newest entry stays whatever its value, otherwise a history with
# nothing left is deleted. Every history entry is {"t", ms, "f", frame, "b", offset}: Redis's clock when
# it was added, the frame, and how many frame bytes the room's history had taken in before it (so the
# bytes kept are the newest entry's end minus the oldest entry's offset).
PRELUDE = """
local EPOCH_SLACK = """ + str(EPOCH_SLACK) + """
local function trim_below(history, i, floor, keep_newest)
  local first = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][i] or '0') >= floor then return end
  local start, count, last = '-', 2, nil
  while true do
    local batch = redis.call('XRANGE', history, start, '+', 'COUNT', count)
    if #batch == 0 then
      if keep_newest then redis.call('XTRIM', history, 'MINID', last) else redis.call('DEL', history) end
      return
    end
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][i] or '0') >= floor then redis.call('XTRIM', history, 'MINID', entry[1]) return end
    end
    last = batch[#batch][1]
    start = '(' .. last
    count = math.min(count * 2, 64)
  end
end
local function trim(history, cutoff) trim_below(history, 2, cutoff, false) end
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
-- The room's epoch: a new one unless its key was written under this Redis's replication id and its
-- seq key is there. A new epoch is a new history: its seq goes on from the seq key (or from 0 if that
-- is gone), and what the old one kept is dropped, so every kept frame is of the current epoch.
-- Returns the epoch and the seq; both keys' expiry is refreshed (GETEX: one call each).
local function room_epoch(seq_key, key, history, ttl)
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  local record = redis.call('GETEX', key, 'EX', ttl)
  local seq = redis.call('GETEX', seq_key, 'EX', ttl + EPOCH_SLACK)
  if record and seq then
    local epoch, written = string.match(record, '^(%w+):(%x+)$')
    if written == replid then return epoch, tonumber(seq) end
  end
  local epoch = string.format('%s%x%05x', string.sub(replid, 1, 8), tonumber(clock[1]), tonumber(clock[2]))
  redis.call('SET', key, epoch .. ':' .. replid, 'EX', ttl)
  redis.call('DEL', history)
  if not seq then
    seq = 0
    redis.call('SET', seq_key, seq, 'EX', ttl + EPOCH_SLACK)
  end
  return epoch, tonumber(seq)
end
local function memory()
  local info = redis.call('INFO', 'memory')
  return tonumber(string.match(info, 'used_memory:(%d+)')), tonumber(string.match(info, 'maxmemory:(%d+)'))
end
local function answer(known)
  local epoch, seq = string.match(known, '^(%w+) (%d+)$')
  return {2, epoch, tonumber(seq)}
end
"""

# KEYS: seq, history, channel, epoch, sent, sentt, rate, rooms index.
# ARGV: frame head, frame tail, history max, history seconds, history bytes, sender:id, attempt,
# ids seconds, ids max, room messages per second (0: no limit), room.
# Returns {1, epoch, seq} once published; {2, epoch, seq} if that sender's id was published already
# (nothing published now); {0} if this attempt was fenced (FENCE_SCRIPT): it never publishes; {3} if
# the room is over its messages per second (nothing written but the count: send it again later).
# The byte bound is kept in the same step as XADD: the oldest entries go until the frames kept take at
# most ROOM_HISTORY_BYTES (the newest always stays).
PUBLISH_SCRIPT = PRELUDE + """
local ttl = tonumber(ARGV[4])
local known = redis.call('HGET', KEYS[5], ARGV[6])
if known then
  if known == '!' .. ARGV[7] then return {0} end
  if string.sub(known, 1, 1) ~= '!' then return answer(known) end
end
local rate = tonumber(ARGV[10])
if rate > 0 then
  local count = redis.call('INCR', KEYS[7])
  if count == 1 then redis.call('PEXPIRE', KEYS[7], 1000) end
  if count > rate then return {3} end
end
local epoch = room_epoch(KEYS[1], KEYS[4], KEYS[2], ttl)
local seq = redis.call('INCR', KEYS[1])  -- keeps the expiry room_epoch set
local frame = ARGV[1] .. epoch .. '","seq":' .. seq .. ARGV[2]
local offset = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then offset = tonumber(last[1][2][6] or '0') + #last[1][2][4] end
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 't', now, 'f', frame, 'b', offset)
if type(added) == 'table' and added.err then
  -- The history is ahead of the counter (its key was deleted): it belongs to an older counter.
  redis.call('DEL', KEYS[2])
  offset = 0
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 't', now, 'f', frame, 'b', offset)
end
trim(KEYS[2], now - ttl * 1000)
trim_below(KEYS[2], 6, offset + #frame - tonumber(ARGV[5]), true)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[8], now, ARGV[11])
local ids_ttl = tonumber(ARGV[8])
redis.call('HSET', KEYS[5], ARGV[6], epoch .. ' ' .. seq)
redis.call('ZADD', KEYS[6], now, ARGV[6])
local old = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now - ids_ttl * 1000, 'LIMIT', 0, 64)
local excess = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[9])
if excess > 0 then old = redis.call('ZRANGE', KEYS[6], 0, math.min(excess, 64) - 1) end
if #old > 0 then
  redis.call('HDEL', KEYS[5], unpack(old))
  redis.call('ZREM', KEYS[6], unpack(old))
end
redis.call('EXPIRE', KEYS[5], ids_ttl)
redis.call('EXPIRE', KEYS[6], ids_ttl)
redis.call('PUBLISH', KEYS[3], frame)
return {1, epoch, seq}
"""

# KEYS: sent, sentt. ARGV: sender:id, attempt, ids seconds.
# Settles an attempt whose reply was lost: {2, epoch, seq} if the id is published (by it or an earlier
# attempt), else {0}, and the attempt is fenced: PUBLISH_SCRIPT with it refuses from now on.
FENCE_SCRIPT = PRELUDE + """
local known = redis.call('HGET', KEYS[1], ARGV[1])
if known and string.sub(known, 1, 1) ~= '!' then return answer(known) end
redis.call('HSET', KEYS[1], ARGV[1], '!' .. ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {0}
"""

# KEYS: seq, history, epoch, created (of the client's address). ARGV: since ('' for none), history
# seconds, page size, the client's epoch ('' for none), rooms an address may create per window (0: no
# limit), the window in seconds, the share of maxmemory above which no room is created, check ('1':
# check the epoch and refresh the keys, as PUBLISH_SCRIPT does; '': only read).
# Returns {'', 0, 0, reason} without writing anything if the room does not exist and may not be created
# (reason 'room_limit' or 'redis_full').
# Returns {epoch, seq, oldest kept seq (0: none), the first page of frames with seq > since...}: of all
# kept frames when since is ahead of seq or the client's epoch is not the room's. Atomic with
# PUBLISH_SCRIPT, so the frames end at seq. Gives a room without an epoch or a seq key one (its seq goes
# on from 0 under it), whatever check says.
# Without check the epoch is read, not checked against `INFO replication` (the dearest call here): a
# read hands out no seq, and what this Redis has is a prefix of what was written under that epoch
# (replication and the append-only file apply writes in order), so the epoch and the frames up to seq
# are right for the client; the next publish or reconcile starts the new epoch (rooms.redishub).
BACKLOG_SCRIPT = PRELUDE + """
local ttl = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then  -- this handshake creates the room
  local used, max = memory()
  if max > 0 and used > max * tonumber(ARGV[7]) then return {'', 0, 0, 'redis_full'} end
  local limit = tonumber(ARGV[5])
  if limit > 0 then
    if tonumber(redis.call('GET', KEYS[4]) or '0') >= limit then return {'', 0, 0, 'room_limit'} end
    if redis.call('INCR', KEYS[4]) == 1 then redis.call('EXPIRE', KEYS[4], ARGV[6]) end
  end
end
local record, count = unpack(redis.call('MGET', KEYS[3], KEYS[1]))
local epoch, seq
if ARGV[8] == '' and record and count then
  epoch, seq = string.match(record, '^(%w+):%x+$'), tonumber(count)
end
if not epoch then epoch, seq = room_epoch(KEYS[1], KEYS[3], KEYS[2], ttl) end
if ARGV[1] == '' then return {epoch, seq, 0} end
trim(KEYS[2], now - ttl * 1000)
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #first == 0 or tonumber(string.match(last[1][1], '^%d+')) > seq then return {epoch, seq, 0} end
local after = tonumber(ARGV[1])
if after > seq or (ARGV[4] ~= '' and ARGV[4] ~= epoch) then after = 0 end
local result = {epoch, seq, tonumber(string.match(first[1][1], '^%d+'))}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', ARGV[3])) do
  result[#result + 1] = entry[2][4]
end
return result
"""

# KEYS: seq, epoch, then the same for the next room... ARGV: history seconds.
# Keeps the seq and epoch keys of rooms with members alive (rooms.redishub._keep_alive), the epoch key
# never past its seq key. A key that is gone stays gone: the next script makes a new epoch.
KEEP_ALIVE_SCRIPT = """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  redis.call('EXPIRE', KEYS[i], ttl + """ + str(EPOCH_SLACK) + """)
  redis.call('EXPIRE', KEYS[i + 1], ttl)
end
return #KEYS / 2
"""

# KEYS: rooms index. ARGV: history key prefix, share of maxmemory to trim down to, history seconds,
# rooms per batch, sent and sentt key prefixes, ids seconds kept under pressure.
# Forgets index entries older than the history, then, while used_memory is over the share, deletes the
# history of the rooms that published least recently, a batch at a time, and their message ids older
# than the seconds kept under pressure. A room's seq and epoch stay, so nothing is renumbered; a client
# resuming past the deleted frames gets a resync, and a resend within those seconds still publishes
# once. Returns {used_memory, maxmemory, rooms trimmed}.
TRIM_SCRIPT = PRELUDE + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]) * 1000)
local used, max = memory()
local floor, trimmed, ids_floor = max * tonumber(ARGV[2]), 0, now - tonumber(ARGV[7]) * 1000
while max > 0 and used > floor do
  local rooms = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)
  if #rooms == 0 then break end
  for _, room in ipairs(rooms) do
    redis.call('DEL', ARGV[1] .. room)
    local sent, sentt = ARGV[5] .. room, ARGV[6] .. room
    while true do
      local old = redis.call('ZRANGEBYSCORE', sentt, '-inf', ids_floor, 'LIMIT', 0, 1000)
      if #old == 0 then break end
      redis.call('HDEL', sent, unpack(old))
      redis.call('ZREM', sentt, unpack(old))
    end
  end
  redis.call('ZREM', KEYS[1], unpack(rooms))
  trimmed = trimmed + #rooms
  used = memory()
end
return {used, max, trimmed}
"""
