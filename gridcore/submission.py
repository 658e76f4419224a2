"""Submitting jobs: the signed envelope, the job's meta, routing, and the enqueue itself."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError

from gridcore import events, keys, rqjob, secretenv
from gridcore.clock import BrokerClock
from gridcore.errors import GridError
from gridcore.explain import Explainer
from gridcore.models import LOST_RETRIES, JobSpec, Resources
from gridcore.placement import is_plain
from gridcore.jobwrites import JobWrites
from gridcore.records.base import is_job_id
from gridcore.records import ENVELOPE_VERSION, Envelope, EventEntry, GroupRecord, JobMeta, ResourcesRecord
from gridcore.settings import Settings
from gridcore.signing import Signer

if TYPE_CHECKING:
    from rq import Queue

SERIALIZER = rqjob.JSONSerializer
"""Jobs are JSON only: a broker writer must never get code execution through pickle."""

COMMAND_PREVIEW = 2000
"""Characters of the command kept in job meta for listings."""

BATCH = 250
"""Jobs per transaction of a bulk submission: one round trip each, small enough that the broker
serves other clients between batches."""

RESOURCES_KEPT = 256
"""Distinct resource requests whose records a submission keeps for its next jobs."""

ORDER_STEP = 1e-6
"""Seconds between the index scores of jobs submitted together, so newest-first lists keep their
order (a sweep's cells last to first) instead of the random order of equal scores."""


def rq_retry_intervals(spec: JobSpec) -> int | list[int]:
    """RQ's Retry interval(s) for the spec's backoff: one per retry, the last value repeating.

    RQ reads its list from the end when there are more retries than values (the first value
    repeats), and schedules on whole seconds rounded down (a retry could start up to a second
    early): give it one value per retry, each a second longer, so no retry starts before its
    backoff."""
    b = spec.retry_backoff or (0,)
    waits = [(s + 1 if s > 0 else 0) for s in (b[min(i, len(b) - 1)] for i in range(spec.retries))]
    return waits if len(set(waits)) > 1 else (waits or [0])[0]


def route(spec: JobSpec, max_parallel: int | None = None) -> str:
    """The RQ queue a job goes to: its queue when plain, else the placement queue."""
    return spec.queue if is_plain(spec, max_parallel) else keys.PENDING_QUEUE


def _record(build: Callable[[], Any], what: str) -> Any:
    """A record built from what the submitter asked for; a value out of its bounds is refused."""
    try:
        return build()
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise GridError(f"{what}: {field}: {first['msg']}") from None


class _Indexes:
    """What one transaction of a submission writes once for all its jobs: the grid's indexes and
    the queue pushes, each with one command."""

    def __init__(self, result_ttl: int, now: float) -> None:
        self.result_ttl, self.now = result_ttl, now
        self._reset()

    def _reset(self) -> None:
        self.jobs: dict[str, float] = {}
        self.queue_jobs: dict[str, dict[str, float]] = {}
        self.queues: set[str] = set()
        self.group_jobs: dict[str, dict[str, int]] = {}
        self.pushes = rqjob.Pushes()
        self._writes: JobWrites | None = None

    @property
    def writes(self) -> JobWrites:
        """The batch's job hashes and events, made at its first job (a single submit makes one)."""
        if self._writes is None:
            # RQ's created_at and enqueued_at of the batch's jobs: hash fields they all share
            self._writes = JobWrites(rqjob.batch_fields(rqjob.rq_stamp(), self.result_ttl, self.result_ttl),
                                     rqjob.JOB_FIELDS,
                                     EventEntry(time=self.now, kind="submitted", job=None, node=None, message=""))
        return self._writes

    def add(self, spec: JobSpec, job_id: str, queue_name: str, order: float) -> None:
        self.jobs[job_id] = order
        self.queue_jobs.setdefault(spec.queue, {})[job_id] = order
        self.queues.add(queue_name)
        if spec.group:
            self.group_jobs.setdefault(spec.group, {})[job_id] = int(spec.params.get("_cell", 0))

    def write(self, pipe: redis.client.Pipeline) -> int | None:
        """Queue the batch's writes on `pipe`; the place of the job writes' reply (their last
        event's id) among the pipeline's replies, if it has one."""
        if not self.jobs:
            return None
        at = self._writes.write(pipe) if self._writes is not None else None
        self.pushes.write(pipe)
        pipe.zadd(keys.JOBS, self.jobs)
        pipe.zadd(keys.JOB_IDS, dict.fromkeys(self.jobs, 0))
        for queue, members in self.queue_jobs.items():
            pipe.zadd(keys.queue_jobs(queue), members)
        pipe.sadd(keys.QUEUES, *self.queues)
        pipe.sadd(keys.rq_queues(), *(keys.rq_queue(q) for q in self.queues))  # RQ's own set, as RQ's enqueue does
        for group, members in self.group_jobs.items():
            pipe.zadd(keys.group_jobs(group), members)
        self._reset()
        return at


class _Batches:
    """The transactions of a bulk submission, executed one after the other, in order; each but
    the last on a thread of its own, so that the next batch is signed meanwhile (a batch's
    round trip and the broker's writing it took a fifth of a bulk submission's time)."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn
        self._pipe: redis.client.Pipeline | None = None
        self._sending: threading.Thread | None = None
        self._failed: BaseException | None = None

    @property
    def pipe(self) -> redis.client.Pipeline:
        """The batch being built (a transaction, made on first use)."""
        if self._pipe is None:
            self._pipe = self.conn.pipeline()
        return self._pipe

    def _execute(self, pipe: redis.client.Pipeline) -> None:
        try:
            pipe.execute()
        except BaseException as e:  # noqa: BLE001 - raised by `wait`, in the submitter's thread
            self._failed = e
        finally:
            pipe.reset()

    def wait(self) -> None:
        """Until the batch on its way is written; its error, if it failed, is raised here."""
        if self._sending is not None:
            self._sending.join()
            self._sending = None
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    def send(self, last: bool) -> list[Any] | None:
        """Execute the batch built so far, after the one before it; `last`: here and now (the
        caller goes on with the broker; its replies returned), else on a thread while the
        caller builds the next."""
        self.wait()
        pipe, self._pipe = self.pipe, None
        if last or len(pipe.command_stack) == 0:
            try:
                return pipe.execute()
            finally:
                pipe.reset()
        self._sending = threading.Thread(target=self._execute, args=(pipe,), name="grid-submit", daemon=True)
        self._sending.start()

    def close(self) -> None:
        """Wait for what is on its way (its error raised), and drop what was never sent."""
        try:
            self.wait()
        finally:
            if self._pipe is not None:
                self._pipe.reset()


class Submission:
    """Signs and enqueues jobs on one grid."""

    def __init__(self, conn: redis.Redis, settings: Settings, clock: BrokerClock, signer: Callable[[], Signer],
                 explainer: Explainer):
        self.redis = conn
        self.settings = settings
        self.clock = clock
        self._signer = signer
        self.explainer = explainer
        self._server_version: tuple[int, int, int] | None = None
        self._queues: dict[tuple[str, int], Queue] = {}
        self._resources: dict[Resources, ResourcesRecord] = {}
        # The last submission's jobs and the id of the last event its one transaction wrote,
        # while no wait has taken it (`since`).
        self._since: tuple[frozenset[str], str] | None = None

    def _resources_record(self, res: Resources) -> ResourcesRecord:
        """The record of a job's resources: one per distinct request (a bulk submission's jobs
        mostly share theirs, and the envelope and the meta both hold it)."""
        record = self._resources.get(res)
        if record is None:
            if len(self._resources) >= RESOURCES_KEPT:
                self._resources.clear()
            record = self._resources[res] = ResourcesRecord.of(res)
        return record

    def envelope(self, spec: JobSpec, job_id: str, queue: str, now: float, attempts: int,
                 sealed: secretenv.Sealed | None = None) -> dict[str, Any]:
        """What the submitter signs for one job: everything that decides what runs, where, how often.

        `sealed`: the spec's env values kept out of the envelope (secretenv.seal); the envelope
        signs their names and digest."""
        public, hidden = secretenv.split(spec.env)
        if hidden and (sealed is None or sorted(hidden) != list(sealed.names)):
            raise GridError(f"job {job_id}: its env values must be sealed to be signed")
        return _record(lambda: Envelope(
            v=ENVELOPE_VERSION, job_id=job_id, command=spec.command,
            argv=list(spec.argv) if spec.argv is not None else None, cwd=spec.cwd, env=public,
            env_names=list(sealed.names) if sealed else [], env_digest=sealed.digest if sealed else None,
            timeout=spec.timeout, resources=self._resources_record(spec.resources), queue=queue,
            job_queue=spec.queue, after=list(spec.after), after_on=spec.after_on,
            submitter=self._signer().name, issued_at=now, expires_at=now + self.settings.envelope_ttl,
            nonce=secrets.token_hex(16), max_attempts=attempts,
        ), f"job {job_id}").model_dump()  # plain JSON types only: the same dict as mode="json", sooner

    def submit(self, spec: JobSpec, *, job_id: str | None = None) -> str:
        """Sign and enqueue one job; return its id."""
        return self.submit_many([spec], job_ids=[job_id] if job_id else None)[0]

    def submit_many(self, specs: Sequence[JobSpec], *, job_ids: Sequence[str] | None = None,
                    groups: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """Sign and enqueue several jobs with one broker clock reading.

        `groups` describes sweep groups by id: {"name", "max_parallel", "axes"}.
        """
        self.explainer.check_placeable(specs)
        now = self.clock.now()
        ids = list(job_ids) if job_ids else [uuid.uuid4().hex for _ in specs]
        for jid in ids:  # before anything is written: RQ, the node's files and cgroups take no other
            if not is_job_id(jid):
                raise GridError(f"job id {repr(jid)[:60]} is not one: letters, digits, '_' "
                                f"and '-' only, 1 to 256 of them")
        groups = groups or {}
        sizes: dict[str, int] = {}
        for spec in specs:
            if spec.group:
                sizes[spec.group] = sizes.get(spec.group, 0) + 1
        if sizes:
            with self.redis.pipeline(transaction=False) as pipe:
                for gid, n in sizes.items():
                    info = groups.get(gid, {})
                    record = GroupRecord(name=info.get("name") or gid, size=n, submitted=now,
                                         max_parallel=info.get("max_parallel") or 0, submitter=self._signer().name,
                                         axes=info.get("axes") or {})
                    pipe.hset(keys.group(gid), mapping=record.encode())
                    pipe.expire(keys.group(gid), self.settings.result_ttl)
                    pipe.zadd(keys.GROUPS, {gid: now})
                pipe.execute()
        # One transaction, one round trip, per batch of jobs; a batch is signed while the one
        # before it is on its way and the broker writes it.
        batches = _Batches(self.redis)
        indexes = _Indexes(self.settings.result_ttl, now)
        self._since = None
        flushed = False

        def flush(last: bool) -> None:
            nonlocal flushed
            flushed = True
            indexes.write(batches.pipe)
            batches.send(last)

        try:
            for k, (spec, job_id) in enumerate(zip(specs, ids, strict=True)):
                mp = groups.get(spec.group, {}).get("max_parallel") if spec.group else None
                if spec.after:
                    flush(last=True)  # RQ looks its dependencies up in the broker: this batch first
                    self._enqueue(spec, job_id, now, mp, order=now + k * ORDER_STEP)
                    continue
                self._enqueue(spec, job_id, now, mp, order=now + k * ORDER_STEP, pipe=batches.pipe, indexes=indexes)
                if len(indexes.jobs) == BATCH:
                    flush(last=k == len(specs) - 1)
            at = indexes.write(batches.pipe)  # the last jobs, and their events, before the groups' events
            # A group's jobs are one event: 10,000 of them would push every other event out of
            # the capped log. Each job's submission is in its own record (time, group).
            for gid, n in sizes.items():
                name = groups.get(gid, {}).get("name") or gid
                events.emit(batches.pipe, now, "submitted",
                            message=f"group {gid} ({name}): {n} job{'s' if n != 1 else ''}")
            replies = batches.send(last=True)
        finally:
            batches.close()
        # Every job queued in this one transaction, each with its own event: nothing of theirs
        # happened before its last event, so a wait for them can read on from it.
        if not flushed and at is not None and not sizes and replies and isinstance(replies[at], bytes):
            self._since = (frozenset(ids), replies[at].decode())
        self._fail_children_of_failed([(spec, job_id) for spec, job_id in zip(specs, ids, strict=True) if spec.after],
                                      now)
        # For placement (a child whose parents have ended is queued already: place_ids skips the rest).
        placing = [job_id for spec, job_id in zip(specs, ids, strict=True)
                   if route(spec, groups.get(spec.group, {}).get("max_parallel") if spec.group else None)
                   == keys.PENDING_QUEUE]
        if placing:
            from gridcore.placing import place_submitted  # only a submission with jobs to place imports it

            place_submitted(self.redis, placing)
        return ids

    def since(self, job_ids: Sequence[str]) -> str | None:
        """The id of the last event the last submission wrote, if it queued every one of
        `job_ids` (each with its event, in one transaction): from there on, every change of
        theirs is an event to come, and none of them has ended before it. Taken once: the
        wait that follows a submission reads on from it without a first read of its own."""
        since, self._since = self._since, None
        if since is None or not job_ids or not since[0].issuperset(job_ids):
            return None
        return since[1]

    def _fail_children_of_failed(self, children: Sequence[tuple[JobSpec, str]], now: float) -> None:
        """A child submitted after a parent it needed to succeed had failed: RQ leaves it deferred
        forever (the parent's end, which fails its dependents, is past), so it fails now, as it
        would have at the parent's end (gridcore/dependencies.py)."""
        needing = [(spec, job_id) for spec, job_id in children if spec.after_on != "any"]
        if not needing:
            return
        parents = sorted({p for spec, _ in needing for p in spec.after})
        with self.redis.pipeline(transaction=False) as pipe:
            for p in parents:
                pipe.hget(keys.rq_job(p), "status")
            states = dict(zip(parents, pipe.execute(), strict=True))
        failed = [p for p in parents if states[p] in (b"failed", b"canceled", b"stopped")]
        if failed:
            from gridcore.dependencies import fail_dependents  # imports RQ: only when it has work

            for p in failed:
                fail_dependents(self.redis, p, now, self.settings.result_ttl)

    def meta(self, spec: JobSpec, now: float, max_parallel: int | None) -> JobMeta:
        """The grid's part of the RQ job: what listings show and the placement pass reads."""
        signer = self._signer()
        return _record(lambda: JobMeta(
            name=spec.name or spec.display_command[:80], command=spec.display_command[:COMMAND_PREVIEW],
            submitter=signer.name, submitted=now, resources=self._resources_record(spec.resources),
            tags=list(spec.tags), group=spec.group, params=spec.params, priority=spec.priority,
            retries=spec.retries, retry_backoff=list(spec.retry_backoff), after_on=spec.after_on,
            timeout=spec.timeout, queue=spec.queue, max_parallel=max_parallel,
        ), spec.name or spec.display_command[:60])

    def _queue(self, name: str, priority: int) -> Queue:
        """A queue to enqueue jobs on; a plain queue inserts them by priority."""
        from rq import Queue

        from gridcore.priority import PrioritizedQueue

        if (name, priority) in self._queues:
            return self._queues[name, priority]
        q = (Queue(name, connection=self.redis, serializer=SERIALIZER) if name == keys.PENDING_QUEUE
             else PrioritizedQueue(name, connection=self.redis, serializer=SERIALIZER, priority=priority))
        # A new RQ Queue asks the server's version (INFO) before its first enqueue: once is enough.
        q.redis_server_version = self._server_version or q.get_redis_server_version()
        self._server_version = q.redis_server_version
        self._queues[name, priority] = q
        return q

    def _enqueue(self, spec: JobSpec, job_id: str, now: float, max_parallel: int | None = None,
                 order: float | None = None, pipe: redis.client.Pipeline | None = None,
                 indexes: _Indexes | None = None) -> None:
        """Enqueue one job in `pipe`, a transaction the caller executes after writing `indexes`;
        with none, in a transaction of its own."""
        if pipe is None or indexes is None:
            own_indexes = _Indexes(self.settings.result_ttl, now)
            with self.redis.pipeline() as own:
                self._enqueue(spec, job_id, now, max_parallel, order, own, own_indexes)
                own_indexes.write(own)
                own.execute()
            return
        queue_name = route(spec, max_parallel)
        meta = self.meta(spec, now, max_parallel)
        sealed = _record(lambda: secretenv.seal(spec.env), f"job {job_id}: env")
        signed = self._signer().sign(self.envelope(spec, job_id, queue_name, now, 1 + spec.retries + LOST_RETRIES,
                                                   sealed))
        lifetime = secretenv.lifetime(self.settings.envelope_ttl, self.settings.result_ttl)
        # RQ's own timeout only sizes heartbeats here: the runner enforces the real one.
        rq_timeout = int(spec.timeout + self.settings.agent.kill_grace + 60) if spec.timeout else -1
        if spec.after:
            # RQ checks dependencies with a WATCH of its own: a job that has some is enqueued by
            # RQ on its own, and the grid's records of it follow in `pipe`.
            from rq import Retry
            from rq.job import Dependency

            if sealed is not None:  # before RQ's enqueue: a job whose parents ended may start at once
                self.redis.set(keys.secret_env(job_id), sealed.text, ex=lifetime)

            self._queue(queue_name, spec.priority).enqueue_call(
                func=keys.RUNNER_FUNC, args=(signed,), job_id=job_id, timeout=rq_timeout,
                result_ttl=self.settings.result_ttl, failure_ttl=self.settings.result_ttl, description=meta.name,
                meta=meta.model_dump(mode="json", exclude_none=True),  # unset fields left out, as below
                retry=Retry(max=spec.retries, interval=rq_retry_intervals(spec)) if spec.retries else None,
                depends_on=Dependency(jobs=list(spec.after), allow_failure=spec.after_on == "any",
                                      enqueue_at_front=False),
            )
        else:
            if sealed is not None:  # in the job's own transaction
                pipe.set(keys.secret_env(job_id), sealed.text, ex=lifetime)
            fields = rqjob.job_fields(
                keys.RUNNER_FUNC, (signed,), queue=queue_name, description=meta.name, timeout=rq_timeout,
                # Unset fields are left out, as Lua scripts read this too (a JSON null is truthy there).
                meta=meta.model_dump_json(exclude_none=True), retries=spec.retries,
                retry_intervals=rq_retry_intervals(spec))
            # The hash with the batch's shared fields, and the event, in the batch's one script call.
            # A group's jobs are one event (submit_many), the others one each.
            indexes.writes.add(job_id, fields, None if spec.group else EventEntry(
                time=now, kind="submitted", job=job_id, node=None, message=meta.name))
            indexes.pushes.add(keys.rq_queue(queue_name), job_id,
                               None if queue_name == keys.PENDING_QUEUE else spec.priority)
            indexes.add(spec, job_id, queue_name, order or now)
            return
        indexes.add(spec, job_id, queue_name, order or now)
        if not spec.group:  # a group's jobs are one event (submit_many)
            events.emit(pipe, now, "submitted", job=job_id, message=meta.name)
