"""Node loss: jobs that were running on a node that stopped heartbeating are lost and retried.

Any agent may do this for any down node (one at a time, under a lock); an agent also does it
for its own node at start, for what its earlier incarnation was running.
"""

from __future__ import annotations

import json
import logging

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from gridcore import events, keys
from gridcore.client import LOST_RETRIES, node_state
from gridcore.dependencies import fail_dependents
from gridcore.models import NodeState

log = logging.getLogger("grid.recovery")


def reclaim(conn: redis.Redis, node: str, now: float, reason: str, ttl: int) -> list[str]:
    """Mark every job running on `node` lost; requeue it while it has lost-retries left."""
    done = []
    for raw_id in conn.hkeys(keys.node_running(node)):
        job_id = raw_id.decode()
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            conn.hdel(keys.node_running(node), job_id)
            continue
        except Exception:  # noqa: BLE001 - an unreadable record can't be retried; drop the entry
            log.exception("job %s: unreadable while reclaiming", job_id)
            conn.hdel(keys.node_running(node), job_id)
            continue
        lost = int(job.meta.get("lost", 0)) + 1
        job.meta["lost"] = lost
        job.meta.pop("run", None)
        retry = lost <= LOST_RETRIES
        attempt = {"node": node, "end": now, "exit_code": None, "signal": None, "reason": reason}
        registry = StartedJobRegistry(job.origin, connection=conn)
        with conn.pipeline() as pipe:
            for entry in conn.zrange(registry.key, 0, -1):
                if entry.decode().split(":")[0] == job_id:
                    pipe.zrem(registry.key, entry)
            pipe.hdel(keys.node_running(node), job_id)
            pipe.hdel(keys.ACTIVE, job_id)
            pipe.rpush(keys.attempts(job_id), json.dumps(attempt))
            pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
            if retry:
                job.set_status(JobStatus.QUEUED, pipeline=pipe)
                pipe.hdel(job.key, "worker_name")
                pipe.lpush(Queue(job.origin, connection=conn).key, job_id)
                events.emit(pipe, now, "lost", job=job_id, node=node, message=f"{reason}; retrying")
            else:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                job.failed_job_registry.add(job, ttl=ttl, exc_string=reason, pipeline=pipe)
                pipe.set(keys.result(job_id), json.dumps(attempt), ex=ttl)
                events.emit(pipe, now, "lost", job=job_id, node=node, message=f"{reason}; no retries left")
            pipe.execute()
        if not retry:
            fail_dependents(conn, job_id, now, ttl)
        done.append(job_id)
    return done


def sweep_down_nodes(conn: redis.Redis, me: str, now: float, node_timeout: float, ttl: int) -> list[str]:
    """Reclaim the jobs of every other node whose heartbeat is older than `node_timeout`."""
    reclaimed = []
    for raw, score in conn.zrange(keys.NODES, 0, -1, withscores=True):
        node = raw.decode()
        if node == me:
            continue
        age = now - score
        if node_state(age, 0.0, node_timeout, False) is not NodeState.DOWN:
            continue
        if not conn.hlen(keys.node_running(node)):
            continue
        if not conn.set(keys.reclaim_lock(node), me, nx=True, ex=30):
            continue
        try:
            with conn.pipeline() as pipe:
                events.emit(pipe, now, "node_down", node=node, message=f"no heartbeat for {age:.0f}s")
                pipe.execute()
            reclaimed += reclaim(conn, node, now, f"node lost: {node} stopped heartbeating", ttl)
        finally:
            conn.delete(keys.reclaim_lock(node))
    return reclaimed
