"""RQ's own records of a grid attempt, written in one place for the slot and for recovery.

An attempt's life is written by agent/attempt.py; RQ keeps its own account of the same job
(status, registries, executions, results, retries, the worker's counters), and this module
is the one place that writes it. Most methods queue their writes on the caller's pipeline,
so RQ's records change in the same atomic step as the grid's. With a `worker` (a slot), the
worker's own records (state, executions, counters) are kept too; recovery after node loss
has none.
"""

from __future__ import annotations

import logging
from base64 import b64encode
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry
from rq.results import Result as RQResult
from rq.utils import now as rq_now
from rq.utils import current_timestamp, utcformat
from rq.worker import WorkerStatus

from agent.rqadapter.jobs import GridJob, GridQueue, fetch_job
from gridcore import keys
from gridcore.dependencies import JOB_ID
from gridcore.placing import place_submitted
from gridcore.priority import reposition
from gridcore.records import Result, text

log = logging.getLogger("grid.book")

RESULTS_KEPT = 10
"""Entries of a job's RQ results stream kept (RQ's Result.save trims it to as many)."""


class RQBook:
    """RQ's records of the attempts of one slot (`worker`) or, without one, of recovery."""

    def __init__(self, conn: redis.Redis, result_ttl: int, worker: Any = None, node: str | None = None):
        """`node`: the node whose agent writes these records; dependents a parent's end releases
        are placed onto it only (None, recovery: the agents' placement loops place them)."""
        self.conn = conn
        self.result_ttl = result_ttl
        self.worker = worker
        self.node = node

    # ---- reading ------------------------------------------------------------------------

    def fetch(self, job_id: str) -> GridJob | None:
        """The job's record, or None when it is gone or unreadable."""
        return fetch_job(self.conn, job_id)

    def queue(self, job: Job) -> GridQueue:
        """The queue the job belongs to (its origin)."""
        return GridQueue(job.origin, connection=self.conn)

    @staticmethod
    def status(job: Job) -> str | None:
        """RQ's status of the job as last read ("queued", "started", ...), None if it has none."""
        status = job.get_status(refresh=False)
        return status.value if status is not None else None

    @staticmethod
    def started_by(job: Job) -> str:
        """The name of the worker RQ says started the job ('' if none)."""
        return job.worker_name or ""

    def started_entries(self, pipe, job: Job) -> list[bytes]:
        """The job's members of its queue's started registry (read now: call before MULTI)."""
        prefix = f"{job.id}:".encode()
        return [e for e in pipe.zrange(keys.rq_registry("running", job.origin), 0, -1)
                if e == job.id.encode() or e.startswith(prefix)]

    @staticmethod
    def execution_member(job: Job, execution: Execution | None) -> str:
        """The started-registry member of this execution of the job ("" for none)."""
        return execution.composite_key if execution is not None else ""

    # ---- start and run ------------------------------------------------------------------

    def start(self, pipe, job: Job, execution_id: str | None = None) -> Execution:
        """Queue RQ's start records (execution, started registry, worker state) on `pipe`; the
        job's own fields are set here and written with its meta (`save_meta(started=True)`)."""
        w = self.worker
        ttl = w.get_heartbeat_ttl(job)
        # RQ's Execution.create, written here: RQ builds two registry objects for it, each
        # resolving the serializer against a runtime Protocol, a few percent of a trivial job.
        execution = Execution(execution_id or uuid4().hex, job.id, job.connection, worker_name=w.name)
        execution._job = job
        expires = current_timestamp() + ttl
        pipe.hset(execution.key, mapping=execution.serialize())
        pipe.expire(execution.key, ttl)
        pipe.zadd(keys.rq_executions(job.id), {execution.id: expires + 60})
        pipe.expire(keys.rq_executions(job.id), ttl + 60)
        pipe.zadd(keys.rq_registry("running", job.origin), {execution.composite_key: expires})
        pipe.sadd(execution.worker_executions_key, execution.composite_key)
        pipe.expire(execution.worker_executions_key, ttl + 60)
        w.set_state(WorkerStatus.BUSY, pipeline=pipe)
        if w.beat_due():  # its key lives for minutes: a slot starting hundreds of jobs a second beats once
            w.heartbeat(ttl, pipeline=pipe)
        # RQ's Job.prepare_for_execution, its fields written with the meta in one HSET (save_meta).
        job.worker_name = w.name
        job.last_heartbeat = rq_now()
        job.started_at = job.last_heartbeat
        job._status = JobStatus.STARTED
        pipe.persist(job.key)
        # Known before the start is: if its reply is lost, the hand-back undoes this execution.
        w.executions[execution.id] = execution
        return execution

    def forget(self, execution: Execution | None) -> None:
        """The slot no longer runs this execution (its records are gone or never were)."""
        if execution is not None and self.worker is not None:
            self.worker.executions.pop(execution.id, None)

    def start_written(self, written: bool) -> None:
        """The start's script ran its recorded commands (`written`), or wrote none of them: the
        worker's heartbeat queued with them counts only if written."""
        if self.worker is not None:
            self.worker.beat_recorded(written)

    def save_meta(self, pipe, job: Job, started: bool = False) -> None:
        """Queue the job's `meta` as it is now in memory on `pipe`; `started`: with the fields
        `start` set (in the same HSET)."""
        fields = {"meta": job.serializer.dumps(job.meta)}
        if started:
            fields.update(last_heartbeat=utcformat(job.last_heartbeat), status=JobStatus.STARTED.value,
                          started_at=utcformat(job.started_at), worker_name=job.worker_name)
        pipe.hset(job.key, mapping=fields)

    def beat(self, job: Job, execution: Execution) -> None:
        """Keep RQ's heartbeats of the worker, the execution and the job alive."""
        self.worker.maintain_heartbeats(job, execution)

    def ended(self, job: Job) -> None:
        """The job's process is over: RQ's end time (the worker's clock, as RQ's own)."""
        job.ended_at = rq_now()

    def idle(self, pipe=None) -> None:
        """The slot's worker is idle again."""
        self.worker.set_state(WorkerStatus.IDLE, pipeline=pipe)

    # ---- end ----------------------------------------------------------------------------

    def record_success(self, pipe, job: Job, result: Result, execution: Execution | None) -> None:
        """Queue RQ's records of a successful end on `pipe` (a MULTI or a recorder)."""
        if self.worker is not None:
            self.worker.increment_successful_job_count(pipeline=pipe)
            self.worker.increment_total_working_time(job.ended_at - job.started_at, pipe)
        job._result = result.model_dump(mode="json")
        result_ttl = job.get_result_ttl(self.result_ttl)
        # RQ's Job._handle_success, less its save of the whole job: the start wrote every field
        # but these two, and the save recompressed and rewrote the job's data (its signed
        # envelope) at every end, for nothing.
        job._status = JobStatus.FINISHED
        pipe.hset(job.key, mapping={"status": JobStatus.FINISHED.value, "ended_at": utcformat(job.ended_at)})
        self._save_result(pipe, job, result_ttl, result.run_id)
        if result_ttl != 0:
            score = result_ttl if result_ttl < 0 else current_timestamp() + result_ttl
            pipe.zadd(keys.rq_registry("finished", job.origin), {job.id: "+inf" if score == -1 else score})
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        self._drop_execution(pipe, job, execution)

    def _save_result(self, pipe, job: Job, ttl: int | None, run_id: str | None) -> None:
        """Queue RQ's record of a successful execution (its results stream) on `pipe`.

        RQ's Result.create and Result.save, written here as RQ writes them (the fields of
        Result.serialize): RQ builds a Result object for it, which resolves the serializer
        against a runtime-checkable Protocol, a slow isinstance at every job's end."""
        fields: dict[str, Any] = {"type": RQResult.Type.SUCCESSFUL.value, "worker_name": self._worker_name(),
                                  "return_value": b64encode(job.serializer.dumps(job._result)).decode()}
        if run_id:
            fields["execution_id"] = run_id
        if job.started_at:
            fields["execution_started_at"] = job.started_at.timestamp()
        if job.ended_at:
            fields["execution_ended_at"] = job.ended_at.timestamp()
        key = keys.rq_results(job.id)
        pipe.xadd(key, fields, maxlen=RESULTS_KEPT)
        if ttl == -1:
            pipe.persist(key)
        elif ttl is not None:
            pipe.expire(key, ttl)

    def finish(self, job: Job, queue: GridQueue | None, result: Result, outcome: str | None,
               execution: Execution | None) -> None:
        """RQ's end of an attempt whose grid records are written: status, registries, result,
        retry, dependents. Only while RQ still says `started`, so it is safe to repeat, and
        the slot and recovery can never both do it."""
        queue = queue or self.queue(job)
        ended = job.ended_at
        job.refresh()  # a repeat must not reuse counters (retries left) changed by a failed try
        job.ended_at = ended or (datetime.fromtimestamp(result.end, tz=timezone.utc) if result.end else rq_now())
        if execution is None and result.run_id:
            execution = Execution(result.run_id, job.id, self.conn)
        released = False
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(job.key)
                    if pipe.hget(job.key, "status") != JobStatus.STARTED.value.encode():
                        return  # an earlier try (or recovery, or the slot) got through
                    dependents = pipe.smembers(job.dependents_key)
                    stray = self.started_entries(pipe, job) if execution is None else []
                    pipe.multi()
                    if stray:
                        pipe.zrem(keys.rq_registry("running", job.origin), *stray)
                    released = self._end(pipe, job, queue, result, outcome, execution)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        if released:
            queue.enqueue_dependents(job)
        if dependents:
            reposition(self.conn, dependents)  # RQ releases them at the back of their queues
            if released and self.node:  # those sent to placement are placed now, not at the next periodic pass
                place_submitted(self.conn, [text(d) for d in dependents if JOB_ID.fullmatch(d)], own=False,
                                onto=self.node)

    def _end(self, pipe, job: Job, queue: GridQueue, result: Result, outcome: str | None,
             execution: Execution | None) -> bool:
        """Queue RQ's end records by outcome; True when the job's dependents may be released."""
        if outcome == "canceled":
            self._drop_execution(pipe, job, execution)
            job.set_status(JobStatus.CANCELED, pipeline=pipe)
            pipe.hset(job.key, "ended_at", utcformat(job.ended_at))
            CanceledJobRegistry(job.origin, connection=self.conn).add(job, ttl=self.result_ttl, pipeline=pipe)
            return False
        if result.exit_code == 0:
            self.record_success(pipe, job, result, execution)
            return True
        retry = job.should_retry
        self._drop_execution(pipe, job, execution)
        if self.worker is not None:
            self.worker.increment_failed_job_count(pipe)
            if job.started_at and job.ended_at:
                self.worker.increment_total_working_time(job.ended_at - job.started_at, pipe)
        if retry:
            self._retry(pipe, job, queue)
            return False
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(result.reason or "failed", pipeline=pipe, worker_name=self._worker_name(),
                            execution_id=result.run_id, execution_started_at=job.started_at,
                            execution_ended_at=job.ended_at)
        return True  # those that accept any outcome

    @staticmethod
    def _retry(pipe, job: Job, queue: GridQueue) -> None:
        # RQ's Job.retry, but on `pipe` only: RQ's own also writes the status straight away,
        # which would break the caller's WATCH on the job and so the end it guards.
        interval = job.get_retry_interval()
        job.retries_left -= 1
        if interval:
            queue.schedule_job(job, rq_now() + timedelta(seconds=interval), pipeline=pipe)
        else:
            queue._enqueue_job(job, pipeline=pipe, at_front=job.enqueue_at_front_on_retry)

    def hand_back(self, pipe, job: Job, queue: GridQueue, execution: Execution | None,
                  to: str | None = None) -> None:
        """Queue RQ's side of a cold stop on `pipe`: the job back at the front of its queue
        (or of `to`, its new origin)."""
        self._drop_execution(pipe, job, execution)
        job.set_status(JobStatus.QUEUED, pipeline=pipe)
        if to is not None and to != job.origin:
            pipe.hset(job.key, "origin", to)
        pipe.lpush(keys.rq_queue(to) if to is not None else queue.key, job.id)

    def _drop_execution(self, pipe, job: Job, execution: Execution | None) -> None:
        if execution is not None:
            # RQ's Execution.delete, without the two registry objects it builds.
            pipe.delete(execution.key)
            pipe.zrem(keys.rq_registry("running", job.origin), execution.composite_key)
            pipe.zrem(keys.rq_executions(job.id), execution.id)
            if execution.worker_name:
                pipe.srem(execution.worker_executions_key, execution.composite_key)
            self.forget(execution)

    def _worker_name(self) -> str:
        return self.worker.name if self.worker is not None else ""

    # ---- not run here -------------------------------------------------------------------

    def refuse(self, pipe, job: Job, queue: GridQueue, reason: str) -> None:
        """Queue RQ's records of a refused job on `pipe`: failed, with the reason."""
        pipe.lrem(queue.intermediate_queue_key, 0, job.id)
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        pipe.hset(job.key, "exc_info", reason)
        job.failed_job_registry.add(job, ttl=self.result_ttl, exc_string=reason, pipeline=pipe)

    def unqueue(self, pipe, job: Job, queue: GridQueue) -> None:
        """Queue on `pipe`: the job is not this slot's to run (a twin); it leaves RQ's taken list."""
        pipe.lrem(queue.intermediate_queue_key, 0, job.id)

    def put_back(self, pipe, job: Job, queue: GridQueue) -> None:
        """Queue on `pipe`: the job goes back to the front of its queue, as it was."""
        pipe.lrem(queue.intermediate_queue_key, 0, job.id)
        pipe.lpush(queue.key, job.id)

    # ---- lost with its node -------------------------------------------------------------

    def requeue_lost(self, pipe, job: Job, started: list[bytes], to: str | None = None) -> None:
        """Queue on `pipe`: a lost attempt's job waits again, at the front of its queue (or of `to`)."""
        if started:
            pipe.zrem(keys.rq_registry("running", job.origin), *started)
        job.set_status(JobStatus.QUEUED, pipeline=pipe)
        pipe.hdel(job.key, "worker_name")
        if to is not None and to != job.origin:
            pipe.hset(job.key, "origin", to)
        pipe.lpush(keys.rq_queue(to or job.origin), job.id)

    def fail_lost(self, pipe, job: Job, started: list[bytes], reason: str) -> None:
        """Queue on `pipe`: a lost attempt's job has no retries left; it failed."""
        if started:
            pipe.zrem(keys.rq_registry("running", job.origin), *started)
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job.failed_job_registry.add(job, ttl=self.result_ttl, exc_string=reason, pipeline=pipe)

    @staticmethod
    def move_waiting(pipe, job_id: str, src: str, dest: str) -> None:
        """Queue on `pipe`: a waiting job leaves queue `src` for the back of `dest`, its new origin."""
        pipe.lrem(keys.rq_queue(src), 1, job_id)
        pipe.hset(keys.rq_job(job_id), "origin", dest)
        pipe.rpush(keys.rq_queue(dest), job_id)

    def requeue_claimed(self, pipe, job: Job, started: list[bytes], queued: bool) -> None:
        """Queue on `pipe`: a claimed job that never ran waits again as it was (front of its queue)."""
        if started:
            pipe.zrem(keys.rq_registry("running", job.origin), *started)
        job.set_status(JobStatus.QUEUED, pipeline=pipe)
        if not queued:
            pipe.lpush(keys.rq_queue(job.origin), job.id)
