"""Priority order within a queue: a job is inserted where its priority puts it.

RQ's queues are lists served from the front, so priority is kept by where a job goes in:
behind every waiting job of the same or a higher priority and ahead of every lower one. The
priorities of waiting jobs (other than 0, the default) are kept in one hash, `grid:priority`,
that the slot's pop clears. The common case, a priority-0 job behind priority-0 jobs, is one
look at the tail and an RPUSH.

Jobs that come back to a queue later keep their priority (from their record's meta): a retry
the slot enqueues at once and a dependent whose parent finished go through the agent's queue
class, which is a PrioritizedQueue; a retry whose backoff is over (RQ's scheduler) and a
`grid requeue` are pushed to the back by RQ and then moved where their priority puts them
(`reposition`), a look at the tail when they are already in place.
"""

from __future__ import annotations

from rq import Queue

from gridcore import keys

_INSERT_AHEAD = """
local function insert_ahead(q, prio_key, id, p, ties)
  -- ahead of the first job of queue q with a lower priority than p (ties: or the same)
  local n, i = redis.call('LLEN', q), 0
  while i < n do
    local chunk = redis.call('LRANGE', q, i, i + 99)
    for k, j in ipairs(chunk) do
      local pj = tonumber(redis.call('HGET', prio_key, j) or '0')
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

_PUSH = _INSERT_AHEAD + """
-- KEYS: job hash, priority hash, queue (none: the job was just pushed to the back of its
-- queue, its origin, by RQ; it is moved where it belongs, or left if no longer waiting).
-- ARGV: job id, priority ('' = the job's meta says), and with no queue its key prefix.
local id, p, q = ARGV[1], tonumber(ARGV[2]), KEYS[3]
if not p then
  local ok, meta = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'meta') or 'null')
  p = ok and type(meta) == 'table' and tonumber(meta.priority) or 0
end
local function prio(j) return tonumber(redis.call('HGET', KEYS[2], j) or '0') end
if not q then
  local h = redis.call('HMGET', KEYS[1], 'origin', 'status')
  if not h[1] or h[2] ~= 'queued' then return 0 end
  q = ARGV[3] .. h[1]
  local tail = redis.call('LRANGE', q, -2, -1)
  if tail[#tail] == id and (#tail == 1 or prio(tail[1]) >= p) then
    if p ~= 0 then redis.call('HSET', KEYS[2], id, p) end
    return 0  -- last, and behind the same or a higher priority: already in place
  end
  if redis.call('LREM', q, -1, id) == 0 then return 0 end
end
if p ~= 0 then redis.call('HSET', KEYS[2], id, p) end
local n = redis.call('LLEN', q)
-- from the front: ahead of the first job of a lower priority
if p > 0 then return insert_ahead(q, KEYS[2], id, p, false) end
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
"""


PUT_BACK = _INSERT_AHEAD + """
local function put_back(q, prio_key, id)
  return insert_ahead(q, prio_key, id, tonumber(redis.call('HGET', prio_key, id) or '0'), true)
end
"""
"""Lua function: put a job that was taken off a queue and not run back where it was, ahead of
every waiting job of the same or a lower priority (it has waited longer than they have);
with no priorities about, an LPUSH. For scripts that include it (agent/claim.py)."""


class PrioritizedQueue(Queue):
    """An RQ queue whose enqueue puts the job where its priority says: the one given, or with
    `priority=None` the one in the job's record (the agent's queue: retries, dependents)."""

    def __init__(self, *args, priority: int | None = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.priority = priority

    def push_job_id(self, job_id: str, pipeline=None, at_front: bool = False):
        if at_front:
            return super().push_job_id(job_id, pipeline=pipeline, at_front=True)
        # EVAL, not EVALSHA: a pipeline holding a registered script first asks SCRIPT EXISTS,
        # a round trip per submit; the server caches the compiled body by its hash anyway.
        # In RQ's enqueue the record is written before this push, in the same transaction.
        conn = pipeline if pipeline is not None else self.connection
        prio = "" if self.priority is None else int(self.priority)
        return conn.eval(_PUSH, 3, keys.rq_job(job_id), keys.PRIORITY, self.key, job_id, prio)


def reposition(conn, job_ids) -> None:
    """Move jobs RQ has just pushed to the back of their queues to where their priorities put
    them (a look at the tail for a job already in place; nothing for one no longer waiting)."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
            pipe.eval(_PUSH, 2, keys.rq_job(job_id), keys.PRIORITY, job_id, "", Queue.redis_queue_namespace_prefix)
        pipe.execute()
