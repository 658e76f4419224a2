"""The RQ job and queue classes every agent uses, and reading a job record without trusting it.

RQ resolves a job's callbacks with `import_attribute` and sends its webhooks from many places
besides running the job: registry cleanup of "abandoned" jobs (every worker's maintenance),
the intermediate-queue sweep, retries. A job record is written by whoever can write to the
broker, so on a grid node all of that is off: the Gatekeeper refuses any job that names
callbacks or webhooks (`signed_argument`), and GridJob makes sure no other RQ code path acts
on them.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from gridcore import events, keys
from gridcore.dependencies import dependents
from gridcore.priority import PrioritizedQueue
from gridcore.records import Result
from gridcore.boundedjob import BoundedJob
from gridcore.signing import Refused

log = logging.getLogger("grid.slot")


class GridJob(BoundedJob):
    """An RQ Job whose function, callbacks and webhooks are never resolved or invoked, and whose
    record is read within bounds (BoundedJob)."""

    @property
    def func(self) -> Any:
        # The grid runner is called by the slot with a verified envelope, never through RQ.
        raise RuntimeError(f"job {self.id}: an agent never imports a job's function")

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """Never: a webhook URL in a job record would make nodes send requests for strangers."""

class GridQueue(PrioritizedQueue):
    """A queue whose dequeue turns an undecodable job into a refusal instead of a crash, and
    whose enqueue (a retry with no backoff, a released dependent) puts the job where its
    priority says."""

    job_class = GridJob
    result_ttl = 7 * 24 * 3600

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("priority", None)  # each job's own, from its record
        kwargs.setdefault("job_class", GridJob)
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)

    @classmethod
    def _fetch_dequeued_job(cls, connection, queue_key, job_id, job_class=None, serializer=None,
                            death_penalty_class=None):
        try:
            return super()._fetch_dequeued_job(connection, queue_key, job_id, job_class=job_class,
                                               serializer=serializer, death_penalty_class=death_penalty_class)
        except Exception as e:  # noqa: BLE001 - a hostile record must not kill the slot
            name = queue_key.removeprefix(keys.rq_queue_prefix())
            reason = f"refused: job record is not a JSON grid job ({type(e).__name__})"
            log.warning("job %s: %s", job_id, reason)
            refuse_undecodable(connection, name, job_id, reason, cls.result_ttl)
            return None


    def enqueue_dependents(self, job: Job, exclude_job_id: str | None = None, refresh_job_status: bool = True):
        # RQ reads the dependents set, which anyone may add to: what is not a job id is set aside first.
        dependents(self.connection, job.id)
        return super().enqueue_dependents(job, exclude_job_id=exclude_job_id, refresh_job_status=refresh_job_status)


def refuse_undecodable(conn: redis.Redis, queue_name: str, job_id: str, reason: str, ttl: int) -> None:
    """Fail a job whose record can't even be decoded, touching only plain hash fields."""
    sec, usec = conn.time()
    now = sec + usec / 1e6
    with conn.pipeline() as pipe:
        pipe.lrem(keys.rq_intermediate(queue_name), 0, job_id)
        pipe.hset(keys.rq_job(job_id), mapping={"status": JobStatus.FAILED.value, "exc_info": reason})
        pipe.zadd(keys.rq_registry("failed", queue_name), {job_id: now + ttl})
        pipe.set(keys.result(job_id), Result(reason=reason, reason_kind="refused", end=now).encode(), ex=ttl)
        events.emit(pipe, now, "refused", job=job_id, message=reason)
        pipe.execute(raise_on_error=False)  # a job key of another type fails alone: the rest is recorded


def fetch_job(conn: redis.Redis, job_id: str) -> GridJob | None:
    """The job's record, or None when it is gone or unreadable (logged)."""
    try:
        return GridJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    except Exception:  # noqa: BLE001 - an unreadable record can't be acted on; the caller drops its entry
        log.exception("job %s: unreadable record", job_id)
        return None


def restore_job(conn: redis.Redis, job_id: str, fields: dict[bytes, bytes]) -> GridJob | None:
    """The job from its hash as a script returned it (saves RQ's separate fetch); None if unreadable."""
    if not fields:
        return None
    try:
        job = GridJob(job_id, connection=conn, serializer=JSONSerializer)
        job.restore(fields)
    except Exception:  # noqa: BLE001 - RQ's fetch path decides what an unreadable record means
        return None
    return job


def signed_argument(job: Job) -> Any:
    """The job's one argument, if the record names the grid runner with it and nothing else."""
    try:
        func_name = job.func_name  # JSON-decodes the payload; imports nothing
    except Exception as e:  # noqa: BLE001 - any decode failure is a refusal, not a crash
        raise Refused(f"job payload is not JSON ({type(e).__name__})") from None
    if func_name != keys.RUNNER_FUNC:
        raise Refused(f"function {str(func_name)[:100]!r} is not the grid runner")
    if job._instance is not None or job.kwargs or len(job.args) != 1:
        raise Refused("job arguments are not a single signed envelope")
    callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    if any(callbacks):
        raise Refused("job names callbacks (on_success/on_failure/on_stopped)")
    if getattr(job, "webhooks", None):
        raise Refused("job names webhooks")
    return job.args[0]


def shown_argument(job: Job) -> Any:
    """signed_argument(), or None where the record has no such argument (what a node that
    refuses a job says it was shown)."""
    try:
        return signed_argument(job)
    except Refused:
        return None
