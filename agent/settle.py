"""The end of an attempt, recorded so that a broker outage delays it but never loses or doubles it.

1. One transaction, fenced: unstored output, the end marker, the result and the attempt
   record, leaving `grid:active`, the nonce spent if no attempt may follow, and the node's
   running-hash entry turned `ended:` (or, on a cold stop, the hand-back to the queue). It
   commits only while this slot still owns the job: WATCH on the job's hash, which a
   node-loss reclaim writes, with the ownership read after the WATCH.
2. RQ's bookkeeping (status, registries, retry, result), only while the job is `started`.
   If the slot dies before this, recovery finds the `ended:` entry and does it instead.
3. Dropping the running-hash entry, and dependents.

Each step is atomic and repeated until the broker answers. A repeat after a lost reply finds
its own earlier write by the attempt's run id (step 1) or the job's status (step 2).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.worker import WorkerStatus

from agent import claim, guarded, runner
from agent.outage import GaveUp, until_broker
from agent.verify import spend
from gridcore import keys
from gridcore.dependencies import fail_dependents
from gridcore.priority import reposition

log = logging.getLogger("grid.settle")

_REQUEUE = """
local id = ARGV[1]
local active = redis.call('HGET', KEYS[5], id)
if active then
  local ok, run = pcall(cjson.decode, active)
  if not (ok and type(run) == 'table' and run['worker'] == ARGV[3]) then
    -- Another slot runs this job: ours was a second copy; only our claim goes.
    if redis.call('HGET', KEYS[4], id) == ARGV[5] then redis.call('HDEL', KEYS[4], id) end
    return 0
  end
  redis.call('HDEL', KEYS[5], id)
end
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[3], id .. ':' .. ARGV[2]) end
redis.call('HDEL', KEYS[4], id)
redis.call('LREM', KEYS[6], 0, id)
if ARGV[4] == '1' then redis.call('HDEL', KEYS[7], id) end
local status = redis.call('HGET', KEYS[2], 'status')
if (status ~= 'queued' and status ~= 'started') or redis.call('LPOS', KEYS[1], id) then return 0 end
redis.call('HSET', KEYS[2], 'status', 'queued')
redis.call('LPUSH', KEYS[1], id)
return 1
"""
"""Put a dequeued job that never started back at the front of its queue, once, undoing what
its start had already written (started registry, running-here entries). Safe to repeat."""


def requeue_unstarted(worker, job: Job, queue: Queue, execution_id: str | None) -> None:
    """The job was dequeued but not started (broker failure, or the slot is stopping): back in line."""
    script = worker.connection.register_script(_REQUEUE)
    # A job placed on this node keeps what it holds here; any other may start elsewhere.
    placed_here = (job.meta.get("placement") or {}).get("node") == worker.node

    def once() -> int:
        return script(
            keys=[queue.key, job.key, queue.started_job_registry.key, keys.node_running(worker.node), keys.ACTIVE,
                  queue.intermediate_queue_key, keys.node_held(worker.node)],
            args=[job.id, execution_id or "", worker.name, "0" if placed_here else "1", claim.marker(worker)],
        )

    if until_broker(once, f"job {job.id}: handing back an unstarted job"):
        log.warning("job %s: not started here; put back at the front of its queue", job.id)
    if execution_id:
        worker.executions.pop(execution_id, None)


def settle(worker, job: Job, queue: Queue, execution, envelope: dict[str, Any], record: dict[str, Any],
           sink, outcome: str | None, give_up: Callable[[], bool] | None = None) -> None:
    """Record how the attempt ended (see the module doc); discard it if the job was reclaimed."""
    record["run_id"] = execution.id
    worker.settled = job.id  # the job ran here: its claim was replaced by its start
    what = f"job {job.id}"
    try:
        if outcome is None and record.get("exit_code") == 0 and _plain_success(job):
            done = until_broker(lambda: _record_success(worker, job, queue, execution, envelope, record, sink),
                                f"{what}: recording its end", give_up)
            if done is not None:
                if not done:
                    log.warning("%s: reclaimed by the grid while running here; result discarded", what)
                worker.executions.pop(execution.id, None)
                return
        owned = until_broker(lambda: _record_end(worker, job, queue, execution, envelope, record, sink, outcome),
                             f"{what}: recording its end", give_up)
        if not owned:
            log.warning("%s: reclaimed by the grid while running here; result discarded", what)
            worker.executions.pop(execution.id, None)
            return
        if outcome == "shutdown":
            return
        until_broker(lambda: _finish_rq(worker, job, queue, execution, record, outcome), f"{what}: finishing", give_up)
        until_broker(lambda: _after(worker, job, record, outcome), f"{what}: releasing dependents", give_up)
    except GaveUp as e:
        log.error("%s; the node's next agent reclaims the job", e)
    except Exception:  # noqa: BLE001 - a bookkeeping bug must not take the slot down with it
        log.exception("%s: recording its end failed", what)


def is_final(job: Job, record: dict[str, Any], outcome: str | None) -> bool:
    """No further attempt of this envelope may run (so its nonce is spent)."""
    return outcome == "canceled" or record.get("exit_code") == 0 or not job.should_retry


def _plain_success(job: Job) -> bool:
    """A success that RQ would only record: no repeats and no rate limit to act on."""
    return job.repeats_left is None and not job.has_rate_limit


def _record_success(worker, job, queue, execution, envelope, record, sink) -> bool | None:
    """The whole end of a successful attempt in one script: the grid's records and RQ's.

    True: recorded (now, or by an earlier try whose reply was lost). False: the job was
    reclaimed from this slot; nothing written. None: RQ has more to do than record (the job
    has dependents, or is no longer `started`): the caller takes the stepwise path.
    """
    pipe = guarded.recorder(worker.connection)
    spend(pipe, envelope)
    worker._write_end(job, record, sink, None, pipe, rq_done=True)
    # RQ's own success bookkeeping, as Worker.handle_job_success writes it (minus dependents,
    # which the script's guard rules out, and callbacks, which a grid job never has).
    worker.increment_successful_job_count(pipeline=pipe)
    worker.increment_total_working_time(job.ended_at - job.started_at, pipe)
    job._result = {k: v for k, v in record.items() if not k.startswith("_")}
    result_ttl = job.get_result_ttl(worker.default_result_ttl)
    job._handle_success(result_ttl, pipeline=pipe, worker_name=worker.name, execution_id=execution.id,
                        execution_started_at=execution.created_at, execution_ended_at=job.ended_at)
    job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
    execution.delete(job=job, pipeline=pipe)
    worker.set_state(WorkerStatus.IDLE, pipeline=pipe)
    ok, detail = worker._end_script(
        keys=[keys.ACTIVE, job.key, job.dependents_key, keys.attempts(job.id)],
        args=[job.id, worker.name, *guarded.packed(worker.connection, pipe)])
    if ok == 2:
        return None
    if ok == 0:  # not ours (any more): ours already, if the last attempt recorded is this one
        return _run_id(detail or None) == record["run_id"]
    for err in guarded.errors(detail):
        log.error("job %s: recording its end: %s", job.id, err)
    job._status = JobStatus.FINISHED
    return True


def _record_end(worker, job, queue, execution, envelope, record, sink, outcome) -> bool:
    with worker.connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(job.key)
                if not worker._owns(pipe.hget(keys.ACTIVE, job.id)):
                    return _run_id(pipe.lindex(keys.attempts(job.id), -1)) == record["run_id"]
                pipe.multi()
                if outcome == "shutdown":
                    worker._hand_back(job, queue, execution, record, sink, pipe)
                else:
                    if is_final(job, record, outcome) and envelope.get("nonce"):
                        # In the same transaction: no replay slips in before the end is visible.
                        spend(pipe, envelope)
                    worker._write_end(job, record, sink, outcome, pipe)
                for err in runner.reply_errors(pipe.execute(raise_on_error=False)):
                    log.error("job %s: recording its end: %s", job.id, err)
                return True
            except redis.WatchError:
                continue


def _run_id(raw: bytes | None) -> str | None:
    try:
        return json.loads(raw).get("run_id") if raw else None
    except (ValueError, AttributeError):
        return None


def _finish_rq(worker, job, queue, execution, record, outcome) -> None:
    ended = job.ended_at
    job.refresh()  # a repeat must not reuse counters (retries left) changed by a failed try
    job.ended_at = ended
    if job.get_status(refresh=False) != JobStatus.STARTED:
        return  # an earlier try got through
    # RQ enqueues the dependents this end releases at the back of their queues.
    dependents = worker.connection.smembers(job.dependents_key)
    if outcome == "canceled":
        worker._finalize_canceled(job, execution, record)
    elif record.get("exit_code") == 0:
        worker._finalize_success(job, queue, execution, {k: v for k, v in record.items() if not k.startswith("_")})
    else:
        job._status = JobStatus.FAILED
        worker.handle_execution_ended(job, queue, job.failure_callback_timeout)
        worker.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry,
                                  exc_string=record.get("reason") or "failed", execution=execution)
    if dependents:
        reposition(worker.connection, dependents)
    if worker.connection.hget(job.key, "status") == JobStatus.STARTED.value.encode():
        worker.connection.ping()  # RQ logs and swallows a failed write: if the broker is away, retry
        log.error("job %s: RQ did not record its end state", job.id)


def _after(worker, job, record, outcome) -> None:
    claim.release(worker, job.id, claim.ENDED + worker.name)
    if outcome == "canceled":
        fail_dependents(worker.connection, job.id, record["end"], worker.settings.result_ttl)
    elif record.get("exit_code") != 0:
        worker._after_failure(job, record)
