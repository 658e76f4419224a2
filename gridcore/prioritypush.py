"""Pushing a job id onto a plain queue where its priority puts it: the scripts, without RQ.

Kept apart from gridcore/priority.py (RQ's queue class) so that a submission, which writes
RQ's records itself (gridcore/rqjob.py), need not import RQ. The order itself is described in
gridcore/priority.py.
"""

from __future__ import annotations

from gridcore import keys

_INSERT_AHEAD = """
local function prio_at(prio_key, j)
  -- pcall: the hash is any agent's to write, also as another type (healed: gridcore/quarantine.py)
  local v = redis.pcall('HGET', prio_key, j)
  return tonumber(type(v) == 'string' and v or '0') or 0
end
local function insert_ahead(q, prio_key, id, p, ties)
  -- ahead of the first job of queue q with a lower priority than p (ties: or the same)
  local n, i = redis.call('LLEN', q), 0
  while i < n do
    local chunk = redis.call('LRANGE', q, i, i + 99)
    for k, j in ipairs(chunk) do
      -- anyone can write this hash: a value that is not a number is priority 0, not a script error
      local pj = prio_at(prio_key, j)
      if pj < p or (ties and pj == p) then
        if i + k == 1 then return redis.call('LPUSH', q, id) end
        return redis.call('LINSERT', q, 'BEFORE', j, id)
      end
    end
    i = i + 100
  end
  return redis.call('RPUSH', q, id)
end
"""

_PLACE = _INSERT_AHEAD + """
local function prio_of(prio_key, j) return prio_at(prio_key, j) end
local function place(q, prio_key, id, p)
  -- id onto queue q where priority p puts it
  local function prio(j) return prio_of(prio_key, j) end
  if p ~= 0 then redis.call('HSET', prio_key, id, p) end
  if p <= 0 then
    -- the common case: behind a last job of the same or a higher priority (or an empty queue)
    local last = redis.call('LINDEX', q, -1)
    if not last or prio(last) >= p then return redis.call('RPUSH', q, id) end
  end
  local n = redis.call('LLEN', q)
  -- from the front: ahead of the first job of a lower priority
  if p > 0 then return insert_ahead(q, prio_key, id, p, false) end
  -- from the back: behind the last job of the same or a higher priority
  local i = -1
  while -i <= n do
    local chunk = redis.call('LRANGE', q, i - 99, i)
    for k = #chunk, 1, -1 do
      local j = chunk[k]
      if prio(j) >= p then
        if i == -1 and k == #chunk then return redis.call('RPUSH', q, id) end
        return redis.call('LINSERT', q, 'AFTER', j, id)
      end
    end
    i = i - 100
  end
  return redis.call('LPUSH', q, id)
end
"""

_PUSH = _PLACE + """
-- KEYS: job hash, priority hash, queue (none: the job was just pushed to the back of its
-- queue, its origin, by RQ; it is moved where it belongs, or left if no longer waiting).
-- ARGV: job id, priority ('' = the job's meta says), and with no queue its key prefix.
local id, p, q = ARGV[1], tonumber(ARGV[2]), KEYS[3]
if not p then
  local ok, meta = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'meta') or 'null')
  p = ok and type(meta) == 'table' and tonumber(meta.priority) or 0
end
if not q then
  local h = redis.call('HMGET', KEYS[1], 'origin', 'status')
  if not h[1] or h[2] ~= 'queued' then return 0 end
  q = ARGV[3] .. h[1]
  local tail = redis.call('LRANGE', q, -2, -1)
  if tail[#tail] == id and (#tail == 1 or prio_of(KEYS[2], tail[1]) >= p) then
    if p ~= 0 then redis.call('HSET', KEYS[2], id, p) end
    return 0  -- last, and behind the same or a higher priority: already in place
  end
  if redis.call('LREM', q, -1, id) == 0 then return 0 end
end
return place(q, KEYS[2], id, p)
"""

_PUSH_MANY = _PLACE + """
-- KEYS: priority hash, queue. ARGV: job id, priority, job id, priority, ... in submit order:
-- the same as one push of each, one after the other.
local q, prio_key, i = KEYS[2], KEYS[1], 1
while i <= #ARGV do
  local id, p = ARGV[i], tonumber(ARGV[i + 1])
  place(q, prio_key, id, p)
  i = i + 2
  -- Jobs of the same priority right after it, when it went last and none is above 0: a place
  -- of each would put it last, behind the one before; one RPUSH puts them all there.
  if p <= 0 and i <= #ARGV and tonumber(ARGV[i + 1]) == p and redis.call('LINDEX', q, -1) == id then
    local run, prios = {}, {}
    while i <= #ARGV and tonumber(ARGV[i + 1]) == p do
      run[#run + 1] = ARGV[i]
      prios[#prios + 1] = ARGV[i]
      prios[#prios + 1] = p
      i = i + 2
    end
    if p ~= 0 then redis.call('HSET', prio_key, unpack(prios)) end
    redis.call('RPUSH', q, unpack(run))
  end
end
return #ARGV / 2
"""


PUT_BACK = _INSERT_AHEAD + """
local function put_back(q, prio_key, id)
  return insert_ahead(q, prio_key, id, prio_at(prio_key, id), true)
end
"""
"""Lua function: put a job that was taken off a queue and not run back where it was, ahead of
every waiting job of the same or a lower priority (it has waited longer than they have);
with no priorities about, an LPUSH. For scripts that include it (agent/claim.py)."""


def push(conn, queue_key: str, job_id: str, priority: int | None) -> object:
    """Push `job_id` onto the queue list `queue_key` where `priority` puts it (None: the one in
    the job's record), on `conn`, a connection or a pipeline.

    EVAL, not EVALSHA: a pipeline holding a registered script first asks SCRIPT EXISTS, a round
    trip per submit; the server caches the compiled body by its hash anyway."""
    prio = "" if priority is None else int(priority)
    return conn.eval(_PUSH, 3, keys.rq_job(job_id), keys.PRIORITY, queue_key, job_id, prio)


def push_many(conn, queue_key: str, jobs: list[tuple[str, int]]) -> object:
    """Push (job id, priority) pairs onto `queue_key` in their order, as a `push` of each would,
    with one script: a bulk submission sends the script once per queue and batch, not per job."""
    return conn.eval(_PUSH_MANY, 2, keys.PRIORITY, queue_key, *(v for jid, p in jobs for v in (jid, int(p))))
