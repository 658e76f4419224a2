"""Priority order within a queue: a job is inserted where its priority puts it.

RQ's queues are lists served from the front, so priority is kept by where a job goes in:
behind every waiting job of the same or a higher priority and ahead of every lower one. The
priorities of waiting jobs (other than 0, the default) are kept in one hash, `grid:priority`,
that the slot's pop clears. The common case, a priority-0 job behind priority-0 jobs, is one
look at the tail and an RPUSH.

Jobs that come back to a queue later (a requeue, a retry after its backoff) go to the back
through RQ, as they always have.
"""

from __future__ import annotations

from rq import Queue

from gridcore import keys

_PUSH = """
local id, p = ARGV[1], tonumber(ARGV[2])
if p ~= 0 then redis.call('HSET', KEYS[2], id, p) end
local function prio(j) return tonumber(redis.call('HGET', KEYS[2], j) or '0') end
local n = redis.call('LLEN', KEYS[1])
if p > 0 then
  -- from the front: ahead of the first job of a lower priority
  local i = 0
  while i < n do
    local chunk = redis.call('LRANGE', KEYS[1], i, i + 99)
    for k, j in ipairs(chunk) do
      if prio(j) < p then
        if i + k == 1 then return redis.call('LPUSH', KEYS[1], id) end
        return redis.call('LINSERT', KEYS[1], 'BEFORE', j, id)
      end
    end
    i = i + 100
  end
  return redis.call('RPUSH', KEYS[1], id)
end
-- from the back: behind the last job of the same or a higher priority
local i = -1
while -i <= n do
  local chunk = redis.call('LRANGE', KEYS[1], i - 99, i)
  for k = #chunk, 1, -1 do
    local j = chunk[k]
    if prio(j) >= p then
      if i == -1 and k == #chunk then return redis.call('RPUSH', KEYS[1], id) end
      return redis.call('LINSERT', KEYS[1], 'AFTER', j, id)
    end
  end
  i = i - 100
end
return redis.call('LPUSH', KEYS[1], id)
"""


class PrioritizedQueue(Queue):
    """An RQ queue whose enqueue puts the job where its priority says (one per enqueue)."""

    def __init__(self, *args, priority: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.priority = priority

    def push_job_id(self, job_id: str, pipeline=None, at_front: bool = False):
        if at_front:
            return super().push_job_id(job_id, pipeline=pipeline, at_front=True)
        # EVAL, not EVALSHA: a pipeline holding a registered script first asks SCRIPT EXISTS,
        # a round trip per submit; the server caches the compiled body by its hash anyway.
        conn = pipeline if pipeline is not None else self.connection
        return conn.eval(_PUSH, 2, self.key, keys.PRIORITY, job_id, int(self.priority))
