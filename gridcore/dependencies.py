"""Dependency failure propagation: RQ leaves a child of a failed parent deferred forever."""

from __future__ import annotations

import logging
import re

import redis
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus
from rq.registry import DeferredJobRegistry
from rq.serializers import JSONSerializer

from gridcore import events, history, keys
from gridcore.quarantine import Quarantine
from gridcore.records import CorruptRecord, JobMeta, Result, salvage, text
from gridcore.records.base import JOB_ID_PATTERN
from gridcore.boundedjob import BoundedJob

log = logging.getLogger("grid.dependencies")

JOB_ID = re.compile(JOB_ID_PATTERN.encode())
"""A job id (records.base.JOB_ID_PATTERN): any other member of a dependents set is set aside."""


def dependents(conn: redis.Redis, job_id: str) -> list[str]:
    """The job ids in `job_id`'s dependents set. Anyone may add to it: a member that is not a job
    id would make RQ raise while ending the parent (in a slot, or in the daemon's recovery), so
    it is set aside (gridcore/quarantine.py) instead."""
    out, bad = [], []
    for raw in conn.smembers(keys.rq_dependents(job_id)):
        (out if JOB_ID.fullmatch(raw) else bad).append(raw)
    if bad:
        q = Quarantine(conn)
        for raw in bad:
            q.set_member(keys.rq_dependents(job_id), raw, "not a job id", job=job_id)
    return [text(raw) for raw in out]


def fail_dependents(conn: redis.Redis, job_id: str, now: float, ttl: int) -> list[str]:
    """Fail (reason 'dependency failed') every waiting job that needed `job_id` to succeed.

    Children that accept any outcome (`on: any`) are left to RQ, which releases them.
    Returns the ids failed, transitively.
    """
    failed: list[str] = []
    todo = [job_id]
    while todo:
        parent = todo.pop()
        for dep_id in dependents(conn, parent):
            try:
                dep = BoundedJob.fetch(dep_id, connection=conn, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            except CorruptRecord as e:  # unreadable (a zlib bomb): left as it is, named in the log
                log.warning("dependent %s of %s: %s", dep_id, parent, e)
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
