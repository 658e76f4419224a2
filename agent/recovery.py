"""Node loss: jobs that were running on a node that stopped heartbeating are lost and retried.

Any agent may do this for any down node (one at a time, under a lock); an agent also does it
for its own node at start, for what its earlier incarnation was running.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from agent import claim
from agent.safejob import GridJob
from gridcore import events, keys
from gridcore.models import LOST_RETRIES, node_state
from gridcore.dependencies import fail_dependents
from gridcore.models import NodeState

log = logging.getLogger("grid.recovery")


def reclaim(conn: redis.Redis, node: str, now: float, reason: str, ttl: int, worker: str | None = None) -> list[str]:
    """Mark every job running on `node` (or in its slot `worker`) lost; requeue it while it
    has lost-retries left. Jobs claimed there but never started go back in line as they are."""
    done = []
    for job_id in jobs_of(conn, node, worker):
        if _reclaim_one(conn, node, job_id, now, reason, ttl):
            done.append(job_id)
    return done


def jobs_of(conn: redis.Redis, node: str, worker: str | None = None) -> list[str]:
    """Job ids running on (or claimed by) `node`, or by its slot `worker` only."""
    entries = {k.decode(): v.decode() for k, v in conn.hgetall(keys.node_running(node)).items()}
    if worker is None:
        return list(entries)
    out = []
    for job_id, value in entries.items():
        if value in (claim.PREFIX + worker, claim.ENDED + worker):
            out.append(job_id)
            continue
        run = _json(conn.hget(keys.ACTIVE, job_id))
        if isinstance(run, dict) and run.get("worker") == worker:
            out.append(job_id)
    return out


def _reclaim_one(conn: redis.Redis, node: str, job_id: str, now: float, reason: str, ttl: int) -> bool:
    # WATCH what a slot recording the job's end writes (node_running) and what this writes
    # (the job's hash, which that slot WATCHes): whichever commits first wins, the other
    # sees it and stands down, so a job never both finishes and gets requeued.
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.node_running(node), keys.rq_job(job_id))
                entry = pipe.hget(keys.node_running(node), job_id)
                if entry is None:
                    return False
                if entry.startswith(claim.PREFIX.encode()):
                    return _requeue_claimed(conn, pipe, node, job_id, entry.decode())
                if entry.startswith(claim.ENDED.encode()):
                    return _complete_recorded(conn, pipe, node, job_id, ttl)
                job = _fetch(conn, job_id)
                active = _json(pipe.hget(keys.ACTIVE, job_id))
                elsewhere = isinstance(active, dict) and active.get("node") not in (None, node)
                if job is None or elsewhere or job.get_status(refresh=False) != JobStatus.STARTED:
                    # A stale entry (the job is gone, or runs or ended elsewhere): only it goes.
                    pipe.multi()
                    pipe.hdel(keys.node_running(node), job_id)
                    pipe.execute()
                    return False
                registry = StartedJobRegistry(job.origin, connection=conn)
                entries = [e for e in pipe.zrange(registry.key, 0, -1) if e.decode().split(":")[0] == job_id]
                lost = int(job.meta.get("lost", 0)) + 1
                job.meta["lost"] = lost
                job.meta.pop("run", None)
                retry = lost <= LOST_RETRIES
                attempt = {"node": node, "end": now, "exit_code": None, "signal": None, "reason": reason,
                           "reason_kind": "lost"}
                pipe.multi()
                if entries:
                    pipe.zrem(registry.key, *entries)
                pipe.hdel(keys.node_running(node), job_id)
                pipe.hdel(keys.ACTIVE, job_id)
                pipe.rpush(keys.attempts(job_id), json.dumps(attempt))
                pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
                pipe.hdel(keys.node_held(node), job_id)
                if job.meta.get("group"):
                    pipe.srem(keys.group_slots(job.meta["group"]), job_id)
                if retry:
                    job.set_status(JobStatus.QUEUED, pipeline=pipe)
                    pipe.hdel(job.key, "worker_name")
                    # A job the grid placed goes back to placement; one a user pinned waits for its node.
                    target = job.origin
                    if job.meta.get("placement") and not (job.meta.get("resources") or {}).get("node"):
                        target = keys.PENDING_QUEUE
                        pipe.hset(job.key, "origin", target)
                    pipe.lpush(Queue(target, connection=conn).key, job_id)
                    events.emit(pipe, now, "lost", job=job_id, node=node, message=f"{reason}; retrying")
                else:
                    job.set_status(JobStatus.FAILED, pipeline=pipe)
                    job.failed_job_registry.add(job, ttl=ttl, exc_string=reason, pipeline=pipe)
                    pipe.set(keys.result(job_id), json.dumps(attempt), ex=ttl)
                    events.emit(pipe, now, "lost", job=job_id, node=node, message=f"{reason}; no retries left")
                pipe.execute()
                break
            except redis.WatchError:
                continue
    if not retry:
        fail_dependents(conn, job_id, now, ttl)
    return True


def _requeue_claimed(conn: redis.Redis, pipe, node: str, job_id: str, entry: str) -> bool:
    """The slot claimed the job and died before it ran: back at the front of its queue, as it
    was. RQ may already say `started` (the slot got that far); no attempt is counted."""
    job = _fetch(conn, job_id)
    worker = entry[len(claim.PREFIX):]
    active = _json(pipe.hget(keys.ACTIVE, job_id))
    ours = not isinstance(active, dict) or active.get("worker") == worker
    status = job.get_status(refresh=False) if job is not None else None
    if job is None or not ours or status not in (JobStatus.QUEUED, JobStatus.STARTED):
        pipe.multi()
        pipe.hdel(keys.node_running(node), job_id)
        pipe.execute()
        return False
    queue = Queue(job.origin, connection=conn)
    registry = StartedJobRegistry(job.origin, connection=conn)
    entries = [e for e in pipe.zrange(registry.key, 0, -1) if e.decode().split(":")[0] == job_id]
    queued = pipe.lpos(queue.key, job_id) is not None
    pipe.multi()
    pipe.hdel(keys.node_running(node), job_id)
    if entries:
        pipe.zrem(registry.key, *entries)
    if isinstance(active, dict):
        pipe.hdel(keys.ACTIVE, job_id)
    pipe.hset(job.key, "status", JobStatus.QUEUED.value)
    if not queued:
        pipe.lpush(queue.key, job_id)
    pipe.execute()
    log.warning("job %s: claimed on %s but never run there; back in its queue", job_id, node)
    return True


def _complete_recorded(conn: redis.Redis, pipe, node: str, job_id: str, ttl: int) -> bool:
    """The slot recorded the job's end and died before RQ's bookkeeping: finish that from the
    recorded result. Runs inside `_reclaim_one`'s WATCH (pipe); a WatchError retries there."""
    job = _fetch(conn, job_id)
    result = _json(pipe.get(keys.result(job_id))) or {}
    if job is None or job.get_status(refresh=False) != JobStatus.STARTED:
        pipe.multi()
        pipe.hdel(keys.node_running(node), job_id)
        pipe.execute()
        return False
    queue = Queue(job.origin, connection=conn, serializer=JSONSerializer, job_class=GridJob)
    registry = StartedJobRegistry(job.origin, connection=conn)
    entries = [e for e in pipe.zrange(registry.key, 0, -1) if e.decode().split(":")[0] == job_id]
    if result.get("end"):
        job.ended_at = datetime.fromtimestamp(result["end"], tz=timezone.utc)
    reason = result.get("reason") or "failed"
    pipe.multi()
    if entries:
        pipe.zrem(registry.key, *entries)
    if result.get("exit_code") == 0:
        job._result = result
        job._handle_success(ttl, pipeline=pipe, execution_id=result.get("run_id"))
        then = "finished"
    elif result.get("reason_kind") == "canceled":
        job.set_status(JobStatus.CANCELED, pipeline=pipe)
        CanceledJobRegistry(job.origin, connection=conn).add(job, ttl=ttl, pipeline=pipe)
        then = "canceled"
    elif job.should_retry:
        job.retry(queue, pipe)
        then = "retried"
    else:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(reason, pipeline=pipe, execution_id=result.get("run_id"))
        then = "failed"
    pipe.hdel(keys.node_running(node), job_id)
    pipe.execute()
    log.warning("job %s: its slot on %s died after recording its end; marked %s", job_id, node, then)
    if then == "finished":
        queue.enqueue_dependents(job)
    elif then in ("failed", "canceled"):
        fail_dependents(conn, job_id, result.get("end") or 0.0, ttl)
        if then == "failed":
            queue.enqueue_dependents(job)  # those that accept any outcome
    return True


def _fetch(conn: redis.Redis, job_id: str) -> Job | None:
    try:
        return GridJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    except Exception:  # noqa: BLE001 - an unreadable record can't be retried; its entry is dropped
        log.exception("job %s: unreadable while reclaiming", job_id)
        return None


def _json(raw: bytes | None):
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class NodeWatch:
    """What this agent has itself seen of other nodes' heartbeats, by its own monotonic clock.

    A node counts as down only when its heartbeat (broker time) is older than the timeout
    *and* this agent has watched that heartbeat not move for as long. Whenever this agent's
    view is suspect — it lost the broker, it was frozen, the broker restarted — the watch is
    reset, and every node gets a full timeout to heartbeat again before anything of it is
    reclaimed. So a broker outage, however long, or a jump of the broker's clock is never
    taken for nodes going silent.
    """

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, float]] = {}  # node -> (heartbeat score, when it last moved)

    def reset(self) -> None:
        self.seen.clear()

    def silent_for(self, node: str, score: float, mono: float | None = None) -> float:
        """Seconds this agent has seen `node`'s heartbeat stand still (0 on first sight)."""
        mono = time.monotonic() if mono is None else mono
        prev = self.seen.get(node)
        if prev is None or prev[0] != score:
            self.seen[node] = (score, mono)
            return 0.0
        return mono - prev[1]


def replace_queued(conn: redis.Redis, node: str) -> int:
    """Send jobs the grid had placed on a down node (not yet started) back to placement."""
    nq = Queue(keys.node_queue(node), connection=conn)
    moved = 0
    for raw in conn.lrange(nq.key, 0, -1):
        job_id = raw.decode()
        meta = conn.hget(keys.rq_job(job_id), "meta")
        try:
            m = json.loads(meta) if meta else {}
        except ValueError:
            continue
        if not m.get("placement") or (m.get("resources") or {}).get("node"):
            continue  # pinned by the user to this node: it waits for the node
        with conn.pipeline() as pipe:
            pipe.lrem(nq.key, 1, job_id)
            pipe.hset(keys.rq_job(job_id), "origin", keys.PENDING_QUEUE)
            pipe.rpush(keys.rq_queue(keys.PENDING_QUEUE), job_id)
            pipe.hdel(keys.node_held(node), job_id)
            if m.get("group"):
                pipe.srem(keys.group_slots(m["group"]), job_id)
            pipe.execute()
        moved += 1
    return moved


def sweep_down_nodes(conn: redis.Redis, me: str, now: float, node_timeout: float, ttl: int,
                     watch: NodeWatch | None = None) -> list[str]:
    """Reclaim the jobs of every other node whose heartbeat is older than `node_timeout`
    (and, with a `watch`, that this agent has seen stand still for that long)."""
    reclaimed = []
    for raw, score in conn.zrange(keys.NODES, 0, -1, withscores=True):
        node = raw.decode()
        if node == me:
            continue
        silent = watch.silent_for(node, score) if watch is not None else None
        age = now - score
        if node_state(age, 0.0, node_timeout, False) is not NodeState.DOWN:
            continue
        if silent is not None and silent < node_timeout:
            continue
        running = conn.hlen(keys.node_running(node))
        if not (running or conn.llen(keys.rq_queue(keys.node_queue(node))) or conn.llen(keys.node_taking(node))):
            continue
        if not conn.set(keys.reclaim_lock(node), me, nx=True, ex=30):
            continue
        try:
            if running:
                with conn.pipeline() as pipe:
                    events.emit(pipe, now, "node_down", node=node, message=f"no heartbeat for {age:.0f}s")
                    pipe.execute()
                reclaimed += reclaim(conn, node, now, f"node lost: {node} stopped heartbeating", ttl)
            if claim.give_back(conn, node):
                log.warning("node %s: jobs it took off their queues, unclaimed, are back in line", node)
            replace_queued(conn, node)
        finally:
            conn.delete(keys.reclaim_lock(node))
    return reclaimed


def clean_rq_registries(queue) -> None:
    """RQ's `clean_registries` without the StartedJobRegistry sweep (see OutageTolerantLoop)."""
    from rq.registry import DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry, ReadyJobRegistry

    for cls in (FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry, ReadyJobRegistry):
        cls(name=queue.name, connection=queue.connection, job_class=queue.job_class,
            serializer=queue.serializer).cleanup()
