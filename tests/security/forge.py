"""What an attacker with write access to the broker can build: RQ jobs and grid envelopes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from gridcore import events, keys
from gridcore.client import Grid
from gridcore.models import JobSpec
from gridcore.signing import Signer, generate_key


def rq_job(r: redis.Redis, func: Any, *args: Any, queue: str = "default", json: bool = True, **kw: Any) -> str:
    """Enqueue with plain RQ (JSON serializer, or RQ's default pickle); index it like the grid."""
    q = Queue(queue, connection=r, serializer=JSONSerializer if json else None)
    job = q.enqueue(func, *args, **kw)
    index(r, job.id)
    return job.id


def index(r: redis.Redis, job_id: str) -> None:
    # The grid's listing index, so the refusal shows in `grid ls` as well (attackers can do this too).
    now = r.time()[0]
    with r.pipeline() as pipe:
        pipe.zadd(keys.JOBS, {job_id: now})
        events.emit(pipe, now, "submitted", job=job_id, message="forged")
        pipe.execute()


def envelope(grid: Grid, command: str, job_id: str, queue: str = "default", **over: Any) -> dict[str, Any]:
    """An envelope exactly as the client builds it, with fields overridden."""
    env = grid.submission.envelope(JobSpec(command=command, queue=queue), job_id, queue, grid.broker_time(), 2)
    env.update(over)
    return env


def signed_job(r: redis.Redis, signed: dict[str, str], job_id: str | None = None, queue: str = "default",
               **kw: Any) -> str:
    """Enqueue a signed argument for the grid runner through plain RQ, as a forger would."""
    job_id = job_id or uuid.uuid4().hex
    Queue(queue, connection=r, serializer=JSONSerializer).enqueue_call(
        func=keys.RUNNER_FUNC, args=(signed,), job_id=job_id, **kw)
    index(r, job_id)
    return job_id


def stranger(path: Path, name: str = "mallory@elsewhere") -> Signer:
    """A key nobody authorized."""
    return Signer(generate_key(path, name), name)
