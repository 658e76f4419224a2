"""Taking a job off a queue so that neither a crash nor a lost reply can lose it.

RQ pops with BLPOP: once the broker has popped a job, it is in no list and no registry until
the slot marks it started, several round trips later. A slot killed in between (its node
powered off), or a reply lost to a broker restart, leaves the job `queued` and nowhere.

So a slot pops and claims in one step: a script moves the first job of its queues into the
node's running hash (`grid:node:<n>:running`, value `claim:<worker>`), where node-loss
recovery finds it and puts it back in line. An idle slot waits with a command that pops
nothing (BLMOVE of a queue onto itself), so a reply lost to a broker restart loses nothing.
It waits on its pool queue (where plain submissions go); its node queue (placed and pinned
jobs) is looked at every time it wakes, at least once a second.

A job's entry in that hash goes claim -> slot index (started) -> `ended:<worker>` (its end
is recorded, RQ's bookkeeping not yet done) -> gone. Recovery acts on each: a claim goes back
in line, a started job is lost and retried, an ended one gets its bookkeeping finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridcore import keys

PREFIX = "claim:"
"""Value of a running-hash entry for a job a slot took but has not started yet."""
ENDED = "ended:"
"""Value of a running-hash entry for a job whose end is recorded, RQ's bookkeeping pending."""

_POP = """
local n = #KEYS - 2
local t = redis.call('TIME')
if redis.call('HGET', KEYS[n + 2], 'draining') == '1' then return {'', '', {}, t[1], t[2], '', 0, 1} end
for i = 1, n do
  local id = redis.call('LPOP', KEYS[i])
  if id then
    redis.call('HSET', KEYS[n + 1], id, ARGV[1])
    redis.call('HDEL', ARGV[5], id)
    return {KEYS[i], id, redis.call('HGETALL', ARGV[2] .. id), t[1], t[2],
            redis.call('HGET', ARGV[3], id) or '', redis.call('EXISTS', ARGV[4] .. id), 0}
  end
end
return {'', '', {}, t[1], t[2], '', 0, 0}
"""
"""Pop and claim, and in the same step read what the slot's start needs: broker TIME, the
node's drain flag (a draining node pops nothing), the job's `grid:active` entry (a copy
still running elsewhere?) and its cancel flag; and drop its priority entry (it no longer
waits). One round trip instead of five."""

DRAINING = "draining"
"""What `pop` returns while the node is draining: nothing was taken."""


@dataclass
class Taken:
    """What the pop script read about the job it took, besides the job itself."""

    job_id: str
    active: bytes | None
    canceled: bool


_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def marker(worker) -> str:
    return PREFIX + worker.name


def pop(worker):
    """(job, queue) from the first non-empty queue of the worker, claimed; None if all are
    empty; DRAINING if the node is draining. Sets `worker.taken` and anchors its clock."""
    conn = worker.connection
    script = conn.register_script(_POP)
    qkeys = [q.key for q in worker._ordered_queues]
    while True:
        got = script(keys=[*qkeys, keys.node_running(worker.node), keys.node(worker.node)],
                     args=[marker(worker), keys.rq_job(""), keys.ACTIVE, keys.cancel(""), keys.PRIORITY])
        worker.clock.anchor(int(got[3]), int(got[4]))
        if int(got[7]):
            return DRAINING
        if not got[1]:
            return None
        queue_key, job_id = got[0].decode(), got[1].decode()
        worker.taken = Taken(job_id, got[5] or None, bool(int(got[6])))
        result = _restore(worker, queue_key, job_id, got[2])
        if result is None:  # the record is gone or unreadable: RQ's own fetch (and its refusal)
            result = worker.queue_class._fetch_dequeued_job(
                conn, queue_key, job_id, job_class=worker.job_class, serializer=worker.serializer,
                death_penalty_class=worker.death_penalty_class,
            )
        if result is not None:
            return result
        release(worker, job_id)  # gone, or refused as undecodable: nothing to start


def _restore(worker, queue_key: str, job_id: str, flat: list):
    """(job, queue) from the hash the pop script returned, saving RQ's separate fetch."""
    if not flat:
        return None
    try:
        job = worker.job_class(job_id, connection=worker.connection, serializer=worker.serializer)
        job.restore(dict(zip(flat[::2], flat[1::2])))
    except Exception:  # noqa: BLE001 - RQ's fetch path decides what an unreadable record means
        return None
    queue = worker.queue_class.from_queue_key(queue_key, connection=worker.connection, job_class=worker.job_class,
                                              serializer=worker.serializer,
                                              death_penalty_class=worker.death_penalty_class)
    return job, queue


def wait(worker, timeout: float) -> None:
    """Block until the slot's pool queue has a job, or `timeout` seconds; take nothing."""
    queues = worker._ordered_queues
    key = (queues[1] if len(queues) > 1 else queues[0]).key
    # Moving the last element to the end of the same list leaves the list as it was.
    worker.connection.blmove(key, key, timeout, src="RIGHT", dest="RIGHT")


def release(worker, job_id: str, value: str | None = None) -> None:
    """Drop this worker's entry for a job (by default its claim) if it is still `value`."""
    worker.connection.register_script(_RELEASE)(keys=[keys.node_running(worker.node)],
                                                 args=[job_id, value or marker(worker)])


_REQUEUE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local status = redis.call('HGET', KEYS[2], 'status')
local origin = redis.call('HGET', KEYS[2], 'origin')
if status ~= 'queued' or not origin then return 0 end
local q = ARGV[3] .. origin
if redis.call('LPOS', q, ARGV[1]) then return 0 end
redis.call('LPUSH', q, ARGV[1])
return 1
"""


def requeue(conn, node: str, job_id: str, value: str) -> bool:
    """Put a claimed, never-started job back at the front of its queue (its claimer is gone).

    Only while the claim is still `value` and the job still `queued` and in no queue: safe
    to repeat, and a no-op for a job that started, ended or was put back meanwhile.
    """
    from rq.queue import Queue

    script = conn.register_script(_REQUEUE)
    return bool(script(keys=[keys.node_running(node), keys.rq_job(job_id)],
                       args=[job_id, value, Queue.redis_queue_namespace_prefix]))


def requeue_own(worker) -> int:
    """An idle slot's claims are stale (a pop whose reply was lost): put those jobs back."""
    mine = marker(worker).encode()
    stale = [k.decode() for k, v in worker.connection.hgetall(keys.node_running(worker.node)).items() if v == mine]
    return sum(requeue(worker.connection, worker.node, jid, mine.decode()) for jid in stale)
