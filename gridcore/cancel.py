"""Canceling jobs, one or many: the ones that have not started in one atomic step, then the
running ones stopped in parallel.

Canceling one job at a time let the queue run meanwhile: idle slots started the jobs of a
batch while the command was still working through it. Here one transaction (WATCHing every
job's hash) marks each not-yet-started job canceled, takes it off its queue and out of RQ's
waiting registries, and sets every job's cancel flag. A slot's start script refuses a job
whose flag is set (agent/guarded.py), so a job of the batch that a slot had already popped
never starts either. Only then are running jobs told to stop, all at once, and waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis
from rq.command import send_command

from gridcore import cancelproof, dependencies, events, history, keys, reservations
from gridcore.clock import BrokerClock
from gridcore.errors import JobNotFound
from gridcore.models import JobState
from gridcore.records import JobMeta, Result, salvage, text
from gridcore.signedview import payload_nonce
from gridcore.signing import Signer, SigningError
from gridcore.views import job_state

CANCEL_FLAG_TTL = 7 * 24 * 3600
"""Seconds a cancel request stays readable by a slot that has not started the job yet."""
ENDED = ("finished", "failed", "canceled", "stopped")
"""RQ statuses past which there is nothing to cancel."""
STOP_POLL = 0.05
"""Seconds between looks at whether the running jobs of a cancel have ended."""


def cancel_jobs(conn: redis.Redis, clock: BrokerClock, result_ttl: int, job_ids: Sequence[str],
                wait: float = 15.0, signer: Callable[[], Signer] | None = None) -> dict[str, JobState]:
    """Cancel every job of `job_ids`; return the state each reached (a running one: canceled
    once its agent confirms, within `wait` seconds). Raises JobNotFound, before changing
    anything, if one of them does not exist. `signer`: the operator's key, which signs each
    cancel (gridcore/cancelproof.py); without one, or where it can't be loaded, unsigned."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    now = clock.now()
    try:
        key = signer() if signer is not None else None
    except SigningError:
        key = None  # a client without a key still cancels; its cancel shows as unsigned
    unstarted, running = _cancel_atomically(conn, ids, now, key)
    if unstarted:
        _canceled_before_start(conn, unstarted, now, result_ttl)
    if running:
        _stop_running(conn, running)
    deadline = time.monotonic() + wait
    while True:
        states = _states(conn, ids)
        if not running or all(states[j].terminal for j in running) or time.monotonic() > deadline:
            return states
        time.sleep(STOP_POLL)


def _states(conn: redis.Redis, ids: list[str]) -> dict[str, JobState]:
    with conn.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hget(keys.rq_job(jid), "status")
        raw = pipe.execute()
    return {jid: job_state(jid, s) for jid, s in zip(ids, raw, strict=True)}


def _cancel_atomically(conn: redis.Redis, ids: list[str], now: float,
                       signer: Signer | None) -> tuple[dict[str, str], list[str]]:
    """The one step: flags for all (each the signed cancel), canceled for the unstarted.
    Returns (unstarted job -> its queue, ids of the running ones)."""
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(*[keys.rq_job(j) for j in ids])
                # Read on another connection, in one round trip: WATCH came first, so a change
                # after these reads still aborts the transaction below.
                with conn.pipeline(transaction=False) as read:
                    for jid in ids:
                        read.hmget(keys.rq_job(jid), "status", "origin", "data")
                    rows = read.execute()
                unstarted: dict[str, str] = {}
                running: list[str] = []
                flags: dict[str, str] = {}
                for jid, (status, origin, data) in zip(ids, rows, strict=True):
                    if status is None:
                        raise JobNotFound(f"no job {jid!r} on this grid")
                    status = text(status)
                    if status in ENDED:
                        continue
                    if status == "started":
                        running.append(jid)
                    else:
                        unstarted[jid] = text(origin or b"")
                    flags[jid] = cancelproof.flag(
                        cancelproof.sign(signer, jid, payload_nonce(data), now) if signer is not None else None)
                pipe.multi()
                for jid in [*unstarted, *running]:
                    pipe.set(keys.cancel(jid), flags[jid], ex=CANCEL_FLAG_TTL)
                for jid, queue in unstarted.items():
                    pipe.hset(keys.rq_job(jid), "status", "canceled")
                    pipe.hdel(keys.PRIORITY, jid)
                    if queue:
                        pipe.lrem(keys.rq_queue(queue), 0, jid)
                        pipe.zrem(keys.rq_registry("waiting", queue), jid)
                        pipe.zrem(keys.rq_registry("scheduled", queue), jid)
                        pipe.zadd(keys.rq_registry("canceled", queue), {jid: int(now)})
                pipe.execute()
                return unstarted, running
            except redis.WatchError:
                continue  # a job of the batch started or ended meanwhile: read again


def _canceled_before_start(conn: redis.Redis, jobs: dict[str, str], now: float, result_ttl: int) -> None:
    """Give back what each job held while it waited, record why it ended, fail its dependents."""
    with conn.pipeline(transaction=False) as read:
        for jid in jobs:
            read.hget(keys.rq_job(jid), "meta")
        metas = read.execute()
    nodes_all: list[str | None] | None = None
    record = Result(reason="canceled", reason_kind="canceled", end=now)
    encoded = record.encode()
    with conn.pipeline(transaction=False) as pipe:
        for jid, raw in zip(jobs, metas, strict=True):
            unread: list[str] = []
            meta = salvage(JobMeta, raw, f"{keys.rq_job(jid)} meta", unread)
            if meta is not None and not unread:
                nodes = [meta.placement.node if meta.placement else None]
            else:  # an unreadable meta does not say where it was placed: give back its hold on every node
                if nodes_all is None:
                    nodes_all = [text(n) for n in conn.zrange(keys.NODES, 0, -1)] or [None]
                nodes = nodes_all
            for node in nodes:
                reservations.release(pipe, jid, node=node, group=meta.group if meta else None)
            pipe.set(keys.result(jid), encoded, ex=result_ttl, nx=True)
            pipe.expire(keys.secret_env(jid), result_ttl)  # its env values go with its record
            pipe.expire(keys.cancel(jid), result_ttl)  # the signed cancel too: requeue's rules read it
            events.emit(pipe, now, "canceled", job=jid, message="canceled before it started")
            history.append(pipe, history.entry(jid, meta or JobMeta(), record, "canceled"))
        pipe.execute()
    for jid in jobs:
        dependencies.fail_dependents(conn, jid, now, result_ttl)


def _stop_running(conn: redis.Redis, ids: list[str]) -> None:
    """Tell the slot running each job to stop it now (its flag would stop it within a second)."""
    with conn.pipeline(transaction=False) as read:
        for jid in ids:
            read.hget(keys.rq_job(jid), "worker_name")
        workers = read.execute()
    with conn.pipeline(transaction=False) as pipe:
        for jid, worker in zip(ids, workers, strict=True):
            if worker:
                send_command(pipe, text(worker), "stop-job", job_id=jid)
        pipe.execute()

