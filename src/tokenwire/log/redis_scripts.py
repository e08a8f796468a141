"""Key layout and server-side Lua scripts of the Redis stream log.

Every state change of a stream is one script, run with ``EVALSHA`` (redis-py's
``register_script`` falls back to ``SCRIPT LOAD`` after a server restart). Redis
runs a script atomically: no other command runs while it does ("Scripting with
Lua", https://redis.io/docs/latest/develop/interact/programmability/eval-intro/),
so numbering, the single terminal event, the cancel flag and the reader counts
never race between processes.

Scripts reply with a status code first: ``1`` done, ``0`` refused (stream not
running, already cancelled, lease not expired …), ``-1`` no such stream,
``-2`` stream expired (its tombstone key still exists).

Some scripts build key names from a prefix passed in ``ARGV`` (the conversation's
active-stream key, the process keys). That is fine on a single Redis server or a
primary with replicas, but not on Redis Cluster, where every key must be declared.
"""

from __future__ import annotations

__all__ = [
    "APPEND",
    "CANCEL",
    "CHANGES_MAXLEN",
    "CREATE",
    "HEARTBEAT",
    "JOIN",
    "LEAVE",
    "READERS",
    "SWEEP",
    "Keys",
]


CHANGES_MAXLEN = 2_000
"""About how many entries the changes stream keeps (``XADD … MAXLEN ~``, which keeps
at least this many). More than a tail takes per call (``redis_tail._TAIL_COUNT``):
a tail that fell behind the trimming gets a full batch, and then reads every
stream it follows again."""


class Keys:
    """Names of every key, under one prefix (default ``tw:``).

    Args:
        prefix: prepended to every key and channel name.
    """

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def events(self, stream_id: str) -> str:
        """The Redis Stream of events; entry id ``<seq>-0``, field ``e`` = event JSON."""
        return f"{self.prefix}s:{stream_id}:events"

    def meta(self, stream_id: str) -> str:
        """Hash: ``status``, ``last_seq``, ``created_at``, ``finished_at``, ``meta``
        (JSON), ``conv``, ``leased``, ``cancel`` (reason), ``readers_left_at``."""
        return f"{self.prefix}s:{stream_id}:meta"

    def lease(self, stream_id: str) -> str:
        """The producer's lease: exists while valid (``PX`` expiry)."""
        return f"{self.prefix}s:{stream_id}:lease"

    def leases(self) -> str:
        """Sorted set: stream id → when its lease ends (Unix ms, Redis ``TIME``), for
        every running leased stream; the lease sweep reads it."""
        return f"{self.prefix}leases"

    def readers(self, stream_id: str) -> str:
        """Hash: process id → live readers of this stream in that process."""
        return f"{self.prefix}s:{stream_id}:readers"

    def gone(self, stream_id: str) -> str:
        """Tombstone: exists for a while after the stream expired (410, not 404)."""
        return f"{self.prefix}s:{stream_id}:gone"

    def conv_prefix(self) -> str:
        return f"{self.prefix}conv:"

    def active(self, conversation_id: str) -> str:
        """String: the conversation's running stream id."""
        return f"{self.conv_prefix()}{conversation_id}:active"

    def proc_prefix(self) -> str:
        return f"{self.prefix}proc:"

    def proc(self, process_id: str) -> str:
        """A process's liveness key (``PX`` expiry, renewed while it has readers)."""
        return f"{self.proc_prefix()}{process_id}"

    def changes(self) -> str:
        """Redis Stream of appends, for every process's tail: one entry per script run,
        field = stream id, value = its last ``seq`` after the run (trimmed to about
        ``CHANGES_MAXLEN`` entries)."""
        return f"{self.prefix}changes"

    def wake(self, process_id: str) -> str:
        """A process's wake-up stream: interrupts its own blocked ``XREAD``."""
        return f"{self.proc_prefix()}{process_id}:wake"

    def cancel_channel(self) -> str:
        """Pub/sub channel of cancel requests; message = JSON ``[stream_id, reason]``."""
        return f"{self.prefix}cancel"


_MISSING = """
local function missing(gone)
  if redis.call('EXISTS', gone) == 1 then return -2 end
  return -1
end
"""

CREATE = """
-- KEYS: meta, events, gone. ARGV: now, meta JSON, conversation id or '', active key or '',
-- stream id.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'last_seq', 0, 'created_at', ARGV[1],
  'meta', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'conv', ARGV[3])
  redis.call('SET', ARGV[4], ARGV[5])
end
return 1
"""

APPEND = (
    _MISSING
    + """
-- Appends to several streams, each atomically as the whole script is (issue #12:
-- one round trip per batch of a process's appends, see redis_batch).
-- KEYS: leases. ARGV: now (Unix s), retention (ms), tombstone (ms), key prefix,
--   then per stream: stream id, only_if_lease_expired ('1'/'0'), events.
-- events: one line per event ('\\n'-separated: JSON never holds a raw newline), each
--   the outcome's first letter ('-' running, 'c'ompleted, 'f'ailed, 'x' cancelled)
--   then the event's JSON without its final '0}' (it ends '"seq":'; the seq and
--   the brace are added here). Few arguments: packing them costs the caller most.
-- Keys are built from the prefix (as Keys in redis_scripts.py; not for Redis Cluster).
-- Every stream that got events is listed in one entry of the changes stream
-- (stream id -> last seq), which the processes' tails read (redis_tail).
-- Returns per stream: code, first seq, events appended.
local outcomes = {c = 'completed', f = 'failed', x = 'cancelled'}
local function append(stream_id, only_if_expired, lines)
  local base = ARGV[4] .. 's:' .. stream_id
  local events, meta, lease = base .. ':events', base .. ':meta', base .. ':lease'
  local gone = base .. ':gone'
  local status = redis.call('HGET', meta, 'status')
  if not status then return missing(gone), 0, 0 end
  if status ~= 'running' then return 0, 0, 0 end
  if only_if_expired == '1' and (redis.call('HGET', meta, 'leased') ~= '1'
      or redis.call('EXISTS', lease) == 1) then
    return 0, 0, 0
  end
  local seq = tonumber(redis.call('HGET', meta, 'last_seq'))
  local first = seq + 1
  local pos = 1
  while pos <= #lines do
    local stop = string.find(lines, '\\n', pos, true) or (#lines + 1)
    local code = string.sub(lines, pos, pos)
    seq = seq + 1
    local id = string.format('%d', seq)
    redis.call('XADD', events, id .. '-0', 'e', string.sub(lines, pos + 1, stop - 1) .. id .. '}')
    pos = stop + 1
    if code ~= '-' then
      redis.call('HSET', meta, 'status', outcomes[code], 'finished_at', ARGV[1], 'last_seq', seq)
      redis.call('DEL', lease)
      redis.call('ZREM', KEYS[1], stream_id)
      local conv = redis.call('HGET', meta, 'conv')
      if conv then
        local active = ARGV[4] .. 'conv:' .. conv .. ':active'
        if redis.call('GET', active) == stream_id then redis.call('DEL', active) end
      end
      redis.call('PEXPIRE', events, ARGV[2])
      redis.call('PEXPIRE', meta, ARGV[2])
      redis.call('PEXPIRE', base .. ':readers', ARGV[2])
      redis.call('SET', gone, '1', 'PX', ARGV[3])
      return 1, first, seq - first + 1
    end
  end
  redis.call('HSET', meta, 'last_seq', seq)
  return 1, first, seq - first + 1
end
local out, changed = {}, {}
for a = 5, #ARGV, 3 do
  local code, first, count = append(ARGV[a], ARGV[a + 1], ARGV[a + 2])
  out[#out + 1], out[#out + 2], out[#out + 3] = code, first, count
  if count > 0 then
    changed[#changed + 1], changed[#changed + 2] = ARGV[a], first + count - 1
  end
end
-- One entry per 1,000 streams at most: unpack() is bounded by Lua's C stack.
for c = 1, #changed, 2000 do
  redis.call('XADD', ARGV[4] .. 'changes', 'MAXLEN', '~', CHANGES_MAXLEN, '*',
    unpack(changed, c, math.min(c + 1999, #changed)))
end
return out
"""
).replace("CHANGES_MAXLEN", str(CHANGES_MAXLEN))

HEARTBEAT = (
    _MISSING
    + """
-- Renews the leases of several streams (one round trip per batch, see redis_batch).
-- KEYS: leases, then per stream: meta, lease, gone. ARGV: per stream: stream id, ttl (ms).
-- Returns one code per stream.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
for k = 2, #KEYS, 3 do
  local a = (k - 2) / 3 * 2 + 1
  local status = redis.call('HGET', KEYS[k], 'status')
  if not status then
    out[#out + 1] = missing(KEYS[k + 2])
  elseif status ~= 'running' then
    out[#out + 1] = 0
  else
    redis.call('SET', KEYS[k + 1], '1', 'PX', ARGV[a + 1])
    redis.call('HSET', KEYS[k], 'leased', '1')
    redis.call('ZADD', KEYS[1], string.format('%d', now_ms + tonumber(ARGV[a + 1])), ARGV[a])
    out[#out + 1] = 1
  end
end
return out
"""
)

CANCEL = (
    _MISSING
    + """
-- KEYS: meta, gone. ARGV: reason, channel, message.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return missing(KEYS[2]) end
if status ~= 'running' or redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
)

_LIVE_TOTAL = """
-- Sum the counts of live processes (their key exists); drop dead or empty entries.
local function live_total(readers, proc_prefix)
  local total, dropped = 0, false
  local flat = redis.call('HGETALL', readers)
  for i = 1, #flat, 2 do
    local count = tonumber(flat[i + 1])
    if count > 0 and redis.call('EXISTS', proc_prefix .. flat[i]) == 1 then
      total = total + count
    else
      redis.call('HDEL', readers, flat[i])
      dropped = true
    end
  end
  return total, dropped
end
"""

JOIN = (
    _MISSING
    + """
-- KEYS: readers, proc, meta, gone. ARGV: process id, process ttl (ms).
if redis.call('EXISTS', KEYS[3]) == 0 then return missing(KEYS[4]) end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"""
)

LEAVE = (
    _LIVE_TOTAL
    + """
-- KEYS: readers, meta. ARGV: process id, now (Unix s), process key prefix.
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
local total = live_total(KEYS[1], ARGV[3])
if total == 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'readers_left_at', ARGV[2])
end
return total
"""
)

READERS = (
    _MISSING
    + _LIVE_TOTAL
    + """
-- KEYS: readers, meta, gone. ARGV: process key prefix, now (Unix s).
if redis.call('EXISTS', KEYS[2]) == 0 then return {missing(KEYS[3]), 0, ''} end
local total, dropped = live_total(KEYS[1], ARGV[1])
if dropped and total == 0 then redis.call('HSET', KEYS[2], 'readers_left_at', ARGV[2]) end
return {1, total, redis.call('HGET', KEYS[2], 'readers_left_at') or ''}
"""
)

SWEEP = """
-- KEYS: leases. ARGV: most ids to return.
-- The streams whose lease ended by Redis's clock (candidates: the append script
-- checks the lease key itself before it appends producer_lost).
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', ms),
  'LIMIT', 0, tonumber(ARGV[1]))
"""
