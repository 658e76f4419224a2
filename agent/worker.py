"""GridWorker: an RQ worker slot that runs verified shell jobs without forking a horse.

RQ's forking Worker buys nothing when the job is itself a subprocess, and its SimpleWorker
neither heartbeats during a job nor obeys stop commands. This one runs the job in-process
through the runner, which heartbeats, watches for cancel, and kills the whole tree.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import Any

from rq import Queue
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now
from rq.worker import SimpleWorker, WorkerStatus

from agent import claim, guarded, metrics, runner, scheduler, settle
from agent.outage import BROKER_ERRORS, BrokerClock, OutageTolerantLoop
from agent.safejob import GridJob
from agent.verify import SPENT, AlreadyRunning, Gatekeeper, judge_attempt, nonce_expiry
from gridcore import events, keys
from gridcore.dependencies import fail_dependents
from gridcore.models import Resources
from gridcore.priority import PrioritizedQueue
from gridcore.reservations import reserve_args
from gridcore.signing import Refused

log = logging.getLogger("grid.slot")

BEAT_EVERY = 1.0
"""Seconds between a slot's own RQ worker heartbeats outside a job's start and end."""
COLD_SETTLE_WAIT = 10.0
"""Seconds a cold-stopped slot keeps trying to record a job's end while the broker is away."""


def refuse_raw(conn, queue_name: str, job_id: str, reason: str, ttl: int) -> None:
    """Fail a job whose record can't even be decoded, touching only plain hash fields."""
    sec, usec = conn.time()
    now = sec + usec / 1e6
    with conn.pipeline() as pipe:
        pipe.lrem(Queue(queue_name, connection=conn).intermediate_queue_key, 0, job_id)
        pipe.hset(keys.rq_job(job_id), mapping={"status": JobStatus.FAILED.value, "exc_info": reason})
        pipe.zadd(FailedJobRegistry(queue_name, connection=conn).key, {job_id: now + ttl})
        pipe.set(keys.result(job_id), json.dumps({"reason": reason, "reason_kind": "refused", "end": now,
                                                  "exit_code": None}), ex=ttl)
        events.emit(pipe, now, "refused", job=job_id, message=reason)
        pipe.execute()


class GridQueue(PrioritizedQueue):
    """A queue whose dequeue turns an undecodable job into a refusal instead of a crash, and
    whose enqueue (a retry with no backoff) puts the job where its priority says."""

    job_class = GridJob
    result_ttl = 7 * 24 * 3600

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("priority", None)  # each job's own, from its record
        super().__init__(*args, **kwargs)

    @classmethod
    def _fetch_dequeued_job(cls, connection, queue_key, job_id, job_class=None, serializer=None,
                            death_penalty_class=None):
        try:
            return super()._fetch_dequeued_job(connection, queue_key, job_id, job_class=job_class,
                                               serializer=serializer, death_penalty_class=death_penalty_class)
        except Exception as e:  # noqa: BLE001 - a hostile record must not kill the slot
            name = queue_key.removeprefix(Queue.redis_queue_namespace_prefix)
            reason = f"refused: job record is not a JSON grid job ({type(e).__name__})"
            log.warning("job %s: %s", job_id, reason)
            refuse_raw(connection, name, job_id, reason, cls.result_ttl)
            return None


class GridWorker(OutageTolerantLoop, SimpleWorker):
    queue_class = GridQueue
    job_class = GridJob  # registries and sweeps built from this worker never call a record's callbacks

    def __init__(self, queues, *, connection, name: str, node: str, slot: int, settings, gate: Gatekeeper,
                 marker_env: dict[str, str], capacity: dict[str, Any] | None = None):
        super().__init__(queues, connection=connection, name=name, serializer=JSONSerializer,
                         queue_class=GridQueue, job_class=GridJob, default_result_ttl=settings.result_ttl)
        self.node = node
        self.slot = slot
        self.settings = settings
        self.gate = gate
        self.marker_env = marker_env
        self.cancel_event = threading.Event()
        self.stop_reason: list[str] = []
        self.busy = False
        self.cold = False
        self.cold_at = 0.0
        self.clock = BrokerClock(connection)
        capacity = capacity or {}
        self.cap_cpus = float(capacity.get("cpus") or 1e9)
        self.cap_memory = int(capacity.get("memory") or 0)
        self.has_gpus = bool(capacity.get("gpus"))
        self.taken: claim.Taken | None = None  # what the last pop read besides the job
        self.start_canceled = False
        self._beat_at = 0.0
        self._start_script = connection.register_script(guarded.START)
        self._end_script = connection.register_script(guarded.END)
        self.gpus: list[int] = []
        GridQueue.result_ttl = settings.result_ttl

    # ---- signals and commands -----------------------------------------------------------

    def _install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self._warm_stop)
        signal.signal(signal.SIGUSR1, self._cold_stop)
        # Ctrl-C in the agent's terminal reaches us too; the agent decides what it means.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Handlers only set flags (the idle loop wakes every second to see them): raising into a
    # BLPOP that has just handed this slot a job would lose the job.
    def _warm_stop(self, signum, frame):
        self._stop_requested = True

    def _cold_stop(self, signum, frame):
        self._stop_requested = True
        if not self.cold:
            self.cold_at = time.monotonic()
        self.cold = True
        if self.busy:
            self.stop_reason.append("shutdown")
            self.cancel_event.set()

    def kill_horse(self, sig=None):
        """RQ's stop-job command (from the pubsub thread): cancel the running job."""
        if self.busy:
            self.stop_reason.append("canceled")
            self.cancel_event.set()

    def request_stop_execution(self, execution_id: str):
        self.kill_horse()

    def heartbeat(self, timeout=None, pipeline=None):
        if pipeline is not None:
            self._beat_at = time.monotonic()
            return super().heartbeat(timeout, pipeline)
        # RQ beats before and after every job; its worker key lives for minutes, so once a
        # second is plenty, and a slot running thousands of tiny jobs saves two round trips each.
        if time.monotonic() - self._beat_at < BEAT_EVERY:
            return None
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                super().heartbeat(timeout, pipe)
                # The state too: set_state skips repeats, and this restores it after a broker loss.
                pipe.hset(self.key, "state", self._state)
                pipe.execute()
            self._beat_at = time.monotonic()
        except BROKER_ERRORS as e:
            log.debug("slot heartbeat skipped: %s", e)  # the idle loop waits for the broker

    def set_state(self, state, pipeline=None):
        if pipeline is None and state == self._state:
            return  # unchanged; the heartbeat rewrites it every second anyway
        super().set_state(state, pipeline)

    def _start_scheduler(self, burst=False, logging_level="INFO", date_format=DEFAULT_LOGGING_DATE_FORMAT,
                         log_format=DEFAULT_LOGGING_FORMAT):
        scheduler.start(self, burst, logging_level, date_format, log_format)

    def run_maintenance_tasks(self):
        # A corrupt or hostile record in a registry would otherwise end the slot at every start:
        # one HSET by any broker writer would keep every node off the queue.
        try:
            super().run_maintenance_tasks()
        except Exception:  # noqa: BLE001
            log.exception("slot %s: registry maintenance failed; trying again next interval", self.name)
            self.last_cleaned_at = rq_now()

    # ---- the job ------------------------------------------------------------------------

    def broker_time(self) -> float:
        return self.clock.now()

    def execute_job(self, job: Job, queue: Queue):
        # Until the job's process starts, a broker failure puts the job back in line (never
        # lost, never failed by an outage); after that nothing raises one (runner, settle).
        self.settled = None  # settle.settle sets it to the job's id once the job ran here
        try:
            if not self.cold:  # a stopping slot hands the job straight back
                self._execute_job(job, queue)
                if self.settled != job.id:
                    self._drop_claim(job)  # refused, a twin, put back: it did not start here
                return
        except BROKER_ERRORS as e:
            log.warning("job %s: not started (%s)", job.id, e)
        self.busy = False
        ex = next((x.id for x in self.executions.values() if x.job_id == job.id), None)
        settle.requeue_unstarted(self, job, queue, ex)

    def _drop_claim(self, job: Job) -> None:
        try:
            claim.release(self, job.id)
        except BROKER_ERRORS:
            pass  # a stale claim is harmless: recovery requeues only a job still queued and in no queue

    def _execute_job(self, job: Job, queue: Queue):
        taken = self.taken if self.taken is not None and self.taken.job_id == job.id else None
        now = self.broker_time()
        try:
            envelope, signer = self.gate.verify(job, now, taken.active if taken is not None else ...)
            execution = self._start(job, envelope, now)
        except AlreadyRunning as e:
            # The running copy holds the reservation under the same job id: leave it be.
            self._drop_twin(job, queue, f"refused: {e}", now)
            return
        except Refused as e:
            self._release(job.id)
            self._refuse(job, queue, f"refused: {e}", now)
            return
        if execution is None:
            self._put_back(job, queue)
            return
        try:
            self._perform(job, queue, execution, envelope, now)
        finally:
            self.busy = False
            self.set_state(WorkerStatus.IDLE)

    def _start(self, job: Job, envelope: dict[str, Any], now: float) -> Execution | None:
        """Hold the job's resources, count the attempt and mark it started, in one script.

        Returns the execution, or None when the node has no room for it now (nothing written);
        raises Refused for a replayed envelope. RQ's own start records (execution, started
        registry, job and worker state) are written by RQ's methods, recorded for the script.
        """
        res = Resources.from_dict(envelope.get("resources"))
        placement = job.meta.get("placement") or {}
        self.gpus = [int(g) for g in placement.get("gpus") or []] if placement.get("node") == self.node else []
        if res.gpus and len(self.gpus) != res.gpus:
            return None  # GPU jobs come placed by the negotiator; a stray copy waits
        pipe = guarded.recorder(self.connection)
        ttl = self.get_heartbeat_ttl(job)
        execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self.heartbeat(ttl, pipeline=pipe)
        job.prepare_for_execution(self.name, pipeline=pipe)
        pipe.persist(job.key)
        run = {"node": self.node, "slot": self.slot, "worker": self.name, "started": now,
               "gpus": [str(g) for g in self.gpus]}
        job.meta["run"] = run
        pipe.hset(job.key, "meta", self.serializer.dumps(job.meta))
        pipe.hset(keys.node_running(self.node), job.id, self.slot)
        pipe.hset(keys.ACTIVE, job.id, json.dumps(run))
        pipe.zadd(keys.node_jobs(self.node), {job.id: now})
        pipe.delete(keys.output(job.id))
        events.emit(pipe, now, "started", job=job.id, node=self.node, message=f"slot {self.slot}")
        args = [*reserve_args(job.id, res, self.gpus, self.cap_cpus, self.cap_memory), nonce_expiry(envelope),
                envelope.get("max_attempts") or 1, SPENT, *guarded.packed(self.connection, pipe)]
        # Known before the reply: if the reply is lost, the hand-back undoes this execution.
        self.executions[execution.id] = execution
        ok, used, errs, canceled = self._start_script(
            keys=[keys.node_held(self.node), keys.nonce(envelope["nonce"]), keys.cancel(job.id)], args=args)
        if ok <= 0:
            self.executions.pop(execution.id, None)
        if ok == 0:
            return None
        if ok < 0:
            judge_attempt(used, envelope)
            raise Refused(f"replayed envelope (attempt {used})")  # judge_attempt always raises here
        for err in guarded.errors(errs):
            log.error("job %s: recording its start: %s", job.id, err)
        self.start_canceled = bool(canceled)
        self.attempt = int(used)  # the envelope's attempt counter: 1 for the first start
        return execution

    def _release(self, job_id: str) -> None:
        self.connection.hdel(keys.node_held(self.node), job_id)

    def _put_back(self, job: Job, queue: Queue) -> None:
        """The node is full for this job: back to the front of its queue for another slot."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 0, job.id)
            pipe.lpush(queue.key, job.id)
            pipe.execute()
        time.sleep(0.25)  # let a slot elsewhere take it before this one looks again

    def _refuse(self, job: Job, queue: Queue, reason: str, now: float) -> None:
        log.warning("job %s: %s", job.id, reason)
        metrics.job_refused(self.node, reason)
        ttl = self.settings.result_ttl
        record = {"reason": reason, "reason_kind": "refused", "end": now, "exit_code": None, "node": self.node}
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 0, job.id)
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            pipe.hset(job.key, "exc_info", reason)
            job.failed_job_registry.add(job, ttl=ttl, exc_string=reason, pipeline=pipe)
            pipe.set(keys.result(job.id), json.dumps(record), ex=ttl)
            pipe.rpush(keys.attempts(job.id), json.dumps(record))
            events.emit(pipe, now, "refused", job=job.id, node=self.node, message=reason)
            pipe.execute()

    def _drop_twin(self, job: Job, queue: Queue, reason: str, now: float) -> None:
        """Discard a duplicate of a running job; the record belongs to the running copy."""
        log.warning("job %s: %s", job.id, reason)
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 0, job.id)
            events.emit(pipe, now, "refused", job=job.id, node=self.node, message=reason)
            pipe.execute()

    def _perform(self, job: Job, queue: Queue, execution, envelope: dict[str, Any], now: float) -> None:
        self.busy = True
        self.cancel_event.clear()
        self.stop_reason.clear()
        if self.cold:  # a cold stop that came before `busy` was set
            self.stop_reason.append("shutdown")
            self.cancel_event.set()
        if self.start_canceled:  # canceled while it was being taken: started only to end at once
            self.stop_reason.append("canceled")
            self.cancel_event.set()
        ctx = runner.RunContext(
            conn=self.connection,
            job_id=job.id,
            node=self.node,
            slot=self.slot,
            log_dir=self.settings.log_dir,
            output_budget=self.settings.agent.output_budget,
            log_cap=self.settings.agent.log_cap,
            kill_grace=self.settings.agent.kill_grace,
            marker_env=self.marker_env,
            broker_time=self.broker_time,
            heartbeat=lambda: self._job_heartbeat(job, execution),
            cancel=self.cancel_event,
            stop_reason=self.stop_reason,
            ttl=self.settings.result_ttl,
            cgroup_tag=self.name,
            attempt=self.attempt,
            # A job sees exactly the GPUs it holds; one that asked for none sees none.
            extra_env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpus))} if self.has_gpus or self.gpus else {},
        )
        try:
            record = runner.execute(envelope, ctx)
        except Exception as e:  # noqa: BLE001 - an agent bug fails the job, loudly, not the slot
            log.exception("job %s: runner error", job.id)
            end = self.broker_time()
            record = {"node": self.node, "slot": self.slot, "start": now, "end": end, "duration": end - now,
                      "exit_code": None, "signal": None, "reason": f"agent error: {type(e).__name__}: {e}",
                      "reason_kind": "error",
                      "stdout": "", "stderr": "", "stdout_bytes": 0, "stderr_bytes": 0, "dropped_bytes": 0}
        sink = record.pop("_sink", None)
        outcome = record.pop("outcome", None)
        job.ended_at = rq_now()
        # Fenced, final (nonce spent), atomic and repeated through broker outages: agent/settle.py.
        settle.settle(self, job, queue, execution, envelope, record, sink, outcome, give_up=self._settle_give_up)

    def _settle_give_up(self) -> bool:
        # Once the agent is gone (cold stop), wait a while for the broker, then leave the job
        # to the node's next agent, which reclaims it.
        return self.cold and time.monotonic() - self.cold_at > COLD_SETTLE_WAIT

    def _job_heartbeat(self, job: Job, execution) -> str | None:
        """Keep RQ's heartbeats alive; say whether to stop (canceled, or fenced off)."""
        self.maintain_heartbeats(job, execution)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.exists(keys.cancel(job.id))
            pipe.hget(keys.ACTIVE, job.id)
            canceled, active = pipe.execute()
        if canceled:
            return "canceled"
        if not self._owns(active):
            return "fenced"
        return None

    def _owns(self, active: bytes | None) -> bool:
        # The node-loss sweep removes a lost job's ACTIVE entry: a copy still running here
        # after that is stale and must neither go on nor record a result.
        if not active:
            return False
        try:
            return json.loads(active).get("worker") == self.name
        except ValueError:
            return False

    def _write_end(self, job: Job, record: dict[str, Any], sink, outcome: str | None, pipe,
                   rq_done: bool = False) -> None:
        """Queue the attempt's end on `pipe` (run by agent/settle.py). `rq_done`: RQ's own end
        records are in the same atomic step, so the job leaves the node's running hash now."""
        ttl = self.settings.result_ttl
        kind = outcome or ("finished" if record.get("exit_code") == 0 else "failed")
        if sink is not None:
            sink.write_pending(pipe)
        pipe.xadd(keys.output(job.id), runner.end_marker(record), id=sink.next_id() if sink is not None else "*",
                  maxlen=runner.STREAM_MAXLEN, approximate=True)
        pipe.expire(keys.output(job.id), ttl)
        pipe.set(keys.result(job.id), json.dumps(_public(record)), ex=ttl)
        pipe.rpush(keys.attempts(job.id), json.dumps(_attempt(record)))
        pipe.expire(keys.attempts(job.id), ttl)
        if rq_done:
            pipe.hdel(keys.node_running(self.node), job.id)
        else:  # not gone yet: if this slot dies before RQ's bookkeeping, recovery finishes it
            pipe.hset(keys.node_running(self.node), job.id, claim.ENDED + self.name)
        pipe.hdel(keys.ACTIVE, job.id)
        pipe.hdel(keys.node_held(self.node), job.id)
        if job.meta.get("group"):
            pipe.srem(keys.group_slots(job.meta["group"]), job.id)
        pipe.delete(keys.cancel(job.id))
        events.emit(pipe, record["end"], kind, job=job.id, node=self.node,
                    message=record.get("reason") or "exit code 0")

    def _after_failure(self, job: Job, record: dict[str, Any]) -> None:
        status = job.get_status(refresh=True)
        now = record.get("end") or self.broker_time()
        if status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
            with self.connection.pipeline(transaction=False) as pipe:
                events.emit(pipe, now, "retried", job=job.id, node=self.node,
                            message=f"after {record.get('reason')}; {job.retries_left} retries left")
                pipe.execute()
        elif status == JobStatus.FAILED:
            fail_dependents(self.connection, job.id, now, self.settings.result_ttl)

    def _finalize_canceled(self, job: Job, execution, record: dict[str, Any]) -> None:
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            job.set_status(JobStatus.CANCELED, pipeline=pipe)
            pipe.hset(job.key, "ended_at", job.ended_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            CanceledJobRegistry(job.origin, connection=self.connection).add(
                job, ttl=self.settings.result_ttl, pipeline=pipe)
            pipe.execute()

    def _hand_back(self, job: Job, queue: Queue, execution, record: dict[str, Any], sink, pipe) -> None:
        """Cold stop: the job was killed because the agent is going away; put it back in line.

        Queued on `pipe`, a transaction run by agent/settle.py."""
        note = f"attempt on {self.node} stopped by agent shutdown; job handed back to the queue"
        if sink is not None:
            sink.write_pending(pipe)
        pipe.xadd(keys.output(job.id), {"s": "n", "d": note.encode()}, id=sink.next_id() if sink is not None else "*")
        pipe.rpush(keys.attempts(job.id), json.dumps({**_attempt(record), "reason": "agent shutdown"}))
        pipe.hdel(keys.node_running(self.node), job.id)
        pipe.hdel(keys.ACTIVE, job.id)
        pipe.hdel(keys.node_held(self.node), job.id)
        self.cleanup_execution(job, pipeline=pipe, execution=execution)
        job.set_status(JobStatus.QUEUED, pipeline=pipe)
        pipe.lpush(queue.key, job.id)
        events.emit(pipe, record["end"], "requeued", job=job.id, node=self.node, message=note)


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _attempt(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("node", "slot", "start", "end", "duration", "exit_code", "signal", "reason",
                                       "reason_kind", "run_id")}

