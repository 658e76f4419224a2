"""RQ's record of a queued job, written without RQ's classes.

A submission writes, for a job with no dependencies, exactly what RQ's `Queue.enqueue_call`
would (tests/engine/test_rqjob.py holds the two equal, field by field): the job's hash, the
queue in RQ's set of queues, and the id pushed where its priority puts it. Building RQ's `Job`
costs more than the rest of a bulk submission's work per job, and importing RQ is most of a
one-job `grid submit`. A job with dependencies is enqueued by RQ itself, which checks its
parents under a WATCH.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from gridcore import keys
from gridcore.prioritypush import push, push_many

TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
"""RQ's timestamp format (rq.utils.utcformat)."""

_EMPTY = ("success_callback_name", "failure_callback_name", "stopped_callback_name", "started_at", "ended_at",
          "last_heartbeat", "worker_name", "group_id")
"""Fields RQ writes empty for a job that has not run."""


def rq_stamp() -> str:
    """Now, as RQ stamps a job's creation and enqueue."""
    return datetime.now(timezone.utc).strftime(TIMESTAMP)


def queued_record(job_id: str, func: str, args: Sequence[Any], *, queue: str, description: str, timeout: int,
                  result_ttl: int, failure_ttl: int, meta: dict[str, Any] | str,
                  retries: int = 0, retry_intervals: int | Sequence[int] = 0, stamp: str | None = None) -> dict[str, Any]:
    """The hash RQ's `enqueue_call` writes for a queued job with a JSON serializer and no
    dependencies, callbacks or TTL. `meta` may come as its JSON already; `stamp`, once for a
    batch of jobs."""
    return {**batch_fields(stamp or rq_stamp(), result_ttl, failure_ttl),
            **job_fields(func, args, queue=queue, description=description, timeout=timeout, meta=meta,
                         retries=retries, retry_intervals=retry_intervals)}


def batch_fields(stamp: str, result_ttl: int, failure_ttl: int) -> dict[str, Any]:
    """The fields of a queued job's hash that every job of a batch shares (the rest: `job_fields`)."""
    return {"created_at": stamp, **dict.fromkeys(_EMPTY, ""), "enqueued_at": stamp, "result_ttl": result_ttl,
            "failure_ttl": failure_ttl, "status": "queued"}


JOB_FIELDS = ("data", "origin", "description", "timeout", "meta", "retries_left", "retry_intervals")
"""The fields of a queued job's hash that are its own, in `job_fields`' order (the last two only
for a job with retries)."""


def job_fields(func: str, args: Sequence[Any], *, queue: str, description: str, timeout: int,
               meta: dict[str, Any] | str, retries: int = 0,
               retry_intervals: int | Sequence[int] = 0) -> dict[str, Any]:
    """The fields of a queued job's hash that are its own (`queued_record` without `batch_fields`)."""
    record: dict[str, Any] = {
        # RQ compresses at level 6 and reads any level. Level 0 (stored, ~250 bytes more) is a
        # fifth of level 1's time, which was a tenth of a bulk submission's time per job.
        "data": zlib.compress(json.dumps([func, None, list(args), {}]).encode(), 0),
        "origin": queue, "description": description, "timeout": timeout,
        "meta": (meta if isinstance(meta, str) else json.dumps(meta)).encode(),
    }
    if retries:
        record["retries_left"] = retries
        intervals = [retry_intervals] if isinstance(retry_intervals, int) else list(retry_intervals)
        record["retry_intervals"] = json.dumps(intervals)
    return record


class Pushes:
    """The queue pushes of the jobs of one transaction, in submit order: one command per queue
    (a push script per job sent its whole body each time, most of a bulk submission's bytes)."""

    def __init__(self) -> None:
        self.by_queue: dict[str, list[tuple[str, int | None]]] = {}

    def add(self, queue_key: str, job_id: str, priority: int | None) -> None:
        """`priority` None: a plain push to the back (the placement queue's jobs, and only them)."""
        self.by_queue.setdefault(queue_key, []).append((job_id, priority))

    def write(self, pipe) -> None:
        """The pushes, in `pipe`, after the jobs' records; then none are left."""
        for queue_key, jobs in self.by_queue.items():
            if jobs[0][1] is None:  # the placement queue: to the back, in order
                pipe.rpush(queue_key, *(job_id for job_id, _ in jobs))
            else:
                push_many(pipe, queue_key, jobs)
        self.by_queue.clear()


def enqueue(pipe, job_id: str, queue: str, record: dict[str, Any], priority: int | None,
            register_queue: bool = True, pushes: Pushes | None = None) -> None:
    """Write a queued job's record and push it onto its queue, in `pipe` (a transaction).

    `priority` None: a plain push to the back, as RQ's own queue does (the placement queue).
    `register_queue` False: the caller adds the queue to RQ's set of queues (once per batch).
    `pushes`: the push is collected there, for the caller to write with the batch's others."""
    queue_key = keys.rq_queue(queue)
    if register_queue:
        pipe.sadd(keys.rq_queues(), queue_key)
    pipe.hset(keys.rq_job(job_id), mapping=record)
    if pushes is not None:
        pushes.add(queue_key, job_id, priority)
    elif priority is None:
        pipe.rpush(queue_key, job_id)
    else:
        push(pipe, queue_key, job_id, priority)


class JSONSerializer:
    """RQ's serializer protocol, JSON only (as rq.serializers.JSONSerializer): a broker writer
    must never get code execution through pickle."""

    @staticmethod
    def dumps(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        return json.dumps(obj, *args, **kwargs).encode("utf-8")

    @staticmethod
    def loads(data: bytes, *args: Any, **kwargs: Any) -> Any:
        return json.loads(data.decode("utf-8"), *args, **kwargs)
