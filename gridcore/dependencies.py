"""Dependency failure propagation: RQ leaves a child of a failed parent deferred forever."""

from __future__ import annotations

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.registry import DeferredJobRegistry
from rq.serializers import JSONSerializer

from gridcore import events, history, keys
from gridcore.records import JobMeta, Result, salvage, text


def fail_dependents(conn: redis.Redis, job_id: str, now: float, ttl: int) -> list[str]:
    """Fail (reason 'dependency failed') every waiting job that needed `job_id` to succeed.

    Children that accept any outcome (`on: any`) are left to RQ, which releases them.
    Returns the ids failed, transitively.
    """
    failed: list[str] = []
    todo = [job_id]
    while todo:
        parent = todo.pop()
        for raw in conn.smembers(keys.rq_dependents(parent)):
            dep_id = text(raw)
            try:
                dep = RQJob.fetch(dep_id, connection=conn, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            if dep.get_status(refresh=False) != JobStatus.DEFERRED:
                continue
            # An unreadable `after_on` counts as the default: the child needed its parent to succeed.
            meta = salvage(JobMeta, conn.hget(keys.rq_job(dep_id), "meta"), f"{keys.rq_job(dep_id)} meta", [])
            if meta is not None and meta.after_on == "any":
                continue
            reason = f"dependency failed: {parent}"
            record = Result(reason="dependency failed", reason_kind="dependency", detail=reason, end=now)
            with conn.pipeline() as pipe:
                DeferredJobRegistry(dep.origin, connection=conn, serializer=JSONSerializer).remove(dep, pipeline=pipe)
                dep.set_status(JobStatus.FAILED, pipeline=pipe)
                dep.failed_job_registry.add(dep, ttl=ttl, exc_string=reason, pipeline=pipe)
                pipe.set(keys.result(dep_id), record.encode(), ex=ttl)
                events.emit(pipe, now, "failed", job=dep_id, message=reason)
                history.append(pipe, history.entry(dep_id, meta or JobMeta(), record, "failed"))
                pipe.execute()
            failed.append(dep_id)
            todo.append(dep_id)
    return failed
