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

from gridcore import keys, prioritypush
from gridcore.prioritypush import _PUSH, push

PUT_BACK = prioritypush.PUT_BACK
"""The Lua function that puts a job back where it was (agent/claim.py includes it)."""


class PrioritizedQueue(Queue):
    """An RQ queue whose enqueue puts the job where its priority says: the one given, or with
    `priority=None` the one in the job's record (the agent's queue: retries, dependents)."""

    def __init__(self, *args, priority: int | None = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.priority = priority

    def push_job_id(self, job_id: str, pipeline=None, at_front: bool = False):
        if at_front:
            return super().push_job_id(job_id, pipeline=pipeline, at_front=True)
        # In RQ's enqueue the record is written before this push, in the same transaction.
        return push(pipeline if pipeline is not None else self.connection, self.key, job_id, self.priority)


def reposition(conn, job_ids) -> None:
    """Move jobs RQ has just pushed to the back of their queues to where their priorities put
    them (a look at the tail for a job already in place; nothing for one no longer waiting)."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
            pipe.eval(_PUSH, 2, keys.rq_job(job_id), keys.PRIORITY, job_id, "", Queue.redis_queue_namespace_prefix)
        pipe.execute()
