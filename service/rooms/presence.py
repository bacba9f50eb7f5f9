"""Presence: who is in a room, across processes, replicas and colors (docs/protocol.md, "Presence").

Every connection of a room has one entry in the room's presence set (Redis: the sorted set
`wsapp:presence:<room>`, scored by when the entry expires; LocalHub: the same in memory). An entry
is `<user key>\\t<session>\\t<user JSON>`: the user key is `u<id>` for a connection with a ticket and
`a<sender>` for an anonymous one (its sender token, stable across its client's reconnects), and the
user JSON is what members are shown, `{"id":..,"name":..}` from the ticket or `null` (anonymous:
counted, never listed, and the sender token is never shown).

A user is present while it has an entry that has not expired:
- a process refreshes the entries of its open connections every PRESENCE_TTL_SECONDS / 3 to
  PRESENCE_TTL_SECONDS from now, so the entries of a process that died (killed, its node lost) expire
  within PRESENCE_TTL_SECONDS of its last refresh;
- a closed connection's entry is set to expire PRESENCE_GRACE_SECONDS from then, not deleted, so a
  client that reconnects within the grace (a release's drain closes with 1012 and the client comes
  straight back, on the other color) is present all along: no `leave`, no `join`.

Each operation (join, refresh, leave) is one atomic script that first removes the expired entries
and publishes a `leave` for each user who has no entry left, then does its own change and publishes a
`join` for each user who had none: every join and leave is published exactly once, by whichever
process touched the room first, in the room's channel (as its messages are). Processes sweep only
rooms in which they have members (their refresh): a room nobody is in needs no events, and its key
expires on its own.

Join and leave frames take no `seq` and are not kept in the history: they describe the room now, not
its conversation, so a resuming client asks for the current list (the `presence` snapshot every
connection that asks for presence gets after its welcome) rather than a replay of who came and went;
and they would otherwise cost every member a replayed frame per reconnect in a release.
"""

import json

from django.conf import settings

PRESENCE_QUERY = "presence"  # ?presence=1: this connection is sent presence frames
EVENT_STARTS = ('{"type":"join"', '{"type":"leave"')

# KEYS: the room's presence set, its channel. ARGV: op (join, refresh or leave), ttl ms, grace ms, the
# most entries a room keeps, the join frame's head, the leave frame's head, then the entries.
# Returns, for join: {JSON list of the users present, anonymous count}; else the number of entries.
PRESENCE_SCRIPT = """
local key, channel = KEYS[1], KEYS[2]
local op, ttl, grace, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local join_head, leave_head = ARGV[5], ARGV[6]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function user_of(entry)
  local a = string.find(entry, '\\t', 1, true)
  local b = string.find(entry, '\\t', a + 1, true)
  return string.sub(entry, 1, a - 1), string.sub(entry, b + 1)
end

local function event(head, shown, anonymous)
  redis.call('PUBLISH', channel, head .. shown .. ',"anonymous":' .. anonymous .. '}')
end

local gone = redis.call('ZRANGEBYSCORE', key, '-inf', now)
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', now) end
local users, anonymous, count = {}, 0, 0
for _, entry in ipairs(redis.call('ZRANGE', key, 0, -1)) do
  local user, shown = user_of(entry)
  if not users[user] then
    users[user] = shown
    if shown == 'null' then anonymous = anonymous + 1 end
  end
  count = count + 1
end
local left = {}
for _, entry in ipairs(gone) do
  local user, shown = user_of(entry)
  if not users[user] and not left[user] then
    left[user] = true
    event(leave_head, shown, anonymous)
  end
end

if op == 'leave' then
  for i = 7, #ARGV do redis.call('ZADD', key, 'XX', now + grace, ARGV[i]) end
else
  local joined = {}
  for i = 7, #ARGV do
    local entry = ARGV[i]
    -- Only commands the ACL already grants (redis/start.sh, APP_COMMANDS): NX tells a new entry.
    if count < cap and redis.call('ZADD', key, 'NX', now + ttl, entry) == 1 then
      count = count + 1
      local user, shown = user_of(entry)
      if not users[user] then
        users[user] = shown
        if shown == 'null' then anonymous = anonymous + 1 end
        joined[#joined + 1] = shown
      end
    else
      redis.call('ZADD', key, 'XX', now + ttl, entry)  -- refreshed; a new one over the bound is not kept
    end
  end
  for _, shown in ipairs(joined) do event(join_head, shown, anonymous) end
end
if count > 0 then redis.call('PEXPIRE', key, math.max(ttl, grace) + 1000) end
if op == 'join' then
  local list = {}
  for _, shown in pairs(users) do
    if shown ~= 'null' then list[#list + 1] = shown end
  end
  table.sort(list)
  return {'[' .. table.concat(list, ',') .. ']', anonymous}
end
return count
"""


def ttl_ms():
    return int(settings.PRESENCE_TTL_SECONDS * 1000)


def grace_ms():
    return int(settings.PRESENCE_GRACE_SECONDS * 1000)


def refresh_seconds():
    return settings.PRESENCE_TTL_SECONDS / 3


def entry(session, ticket, sender):
    """A connection's entry: who it is from its ticket (a user), else anonymous by its sender token."""
    if ticket is not None:
        return f"u{ticket.user}\t{session}\t{json.dumps({'id': ticket.user, 'name': ticket.name})}"
    return f"a{sender}\t{session}\tnull"


def user_of(member):
    user, _, rest = member.partition("\t")
    return user, rest.partition("\t")[2]


def heads(room):
    """The heads of the room's join and leave frames: the script appends the user and the count."""
    shown = json.dumps(room)
    return '{"type":"join","room":%s,"user":' % shown, '{"type":"leave","room":%s,"user":' % shown


def snapshot(room, users, anonymous):
    """The `presence` frame: `users` is the JSON list the script returns."""
    return '{"type":"presence","room":%s,"users":%s,"anonymous":%d}' % (json.dumps(room), users, anonymous)


def is_event(frame):
    return frame.startswith(EVENT_STARTS)


class PresenceSet:
    """The script's algorithm over one room's entries in memory (LocalHub): {entry: expires at, ms}."""

    def __init__(self):
        self.entries = {}

    def apply(self, room, op, members, now_ms, ttl=None):
        """(frames to publish, the join's (users JSON, anonymous) or None). `ttl` (ms) of a live entry:
        PRESENCE_TTL_SECONDS unless given (LocalHub's connections are all in its process: no expiry)."""
        ttl = ttl_ms() if ttl is None else ttl
        join_head, leave_head = heads(room)
        frames = []
        gone = [member for member, expires in self.entries.items() if expires <= now_ms]
        for member in gone:
            del self.entries[member]
        users = self._users()
        anonymous = sum(1 for shown in users.values() if shown == "null")
        left = {}
        for member in gone:
            user, shown = user_of(member)
            if user not in users:
                left.setdefault(user, shown)
        frames += [f'{leave_head}{shown},"anonymous":{anonymous}}}' for shown in left.values()]
        if op == "leave":
            for member in members:
                if member in self.entries:
                    self.entries[member] = now_ms + grace_ms()
        else:
            joined = []
            for member in members:
                known = member in self.entries
                if known or len(self.entries) < settings.PRESENCE_MAX_ENTRIES:
                    user, shown = user_of(member)
                    if not known and user not in users:
                        users[user] = shown
                        anonymous += shown == "null"
                        joined.append(shown)
                    self.entries[member] = now_ms + ttl
            frames += [f'{join_head}{shown},"anonymous":{anonymous}}}' for shown in joined]
        if op != "join":
            return frames, None
        listed = sorted(shown for shown in users.values() if shown != "null")
        return frames, ("[" + ",".join(listed) + "]", anonymous)

    def _users(self):
        users = {}
        for member in self.entries:
            user, shown = user_of(member)
            users.setdefault(user, shown)
        return users
