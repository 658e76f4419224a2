"""Node loss: jobs that were running on a node that stopped heartbeating are lost and retried.

Any agent may do this for any down node (one at a time, under a lock); an agent also does it
for its own node at start, for what its earlier incarnation was running. An agent writes no key
of another node (its ACL user may not): a down node's jobs are requeued, lost or finished
through their own, the shared and RQ's keys, and the down node's running, taking and held
entries stay as they were. So each step reads the job's own state first (a stale entry read
again changes nothing), readers count nothing a down node holds, and a node coming back
reconciles its own keys before it takes work (`reconcile_own`).
"""

from __future__ import annotations

import logging
import time

import redis

from agent import claim, guarded
from agent.attempt import JobAttempt
from agent.outage import retyped
from agent.rqadapter.book import RQBook
from gridcore import events, keys
from gridcore.models import NodeState, node_state
from gridcore.nodekeys import NodeSigner
from gridcore.records import ActiveEntry, JobMeta, NodeRecord, RunningEntry, lenient, text
from gridcore.reservations import release

log = logging.getLogger("grid.recovery")


def reclaim(conn: redis.Redis, node: str, now: float, reason: str, ttl: int, worker: str | None = None,
            witness: NodeSigner | None = None, foreign: bool = False) -> list[str]:
    """Mark every job running on `node` (or in its slot `worker`) lost; requeue it while it
    has lost-retries left. Jobs claimed there but never started go back in line as they are.
    `witness`: the reclaiming node's key, which signs each lost record. `foreign`: `node` is
    another node (its keys are left as they are)."""
    book = RQBook(conn, ttl)
    others = [text(n) for n in conn.zrange(keys.NODES, 0, -1) if text(n) != node]
    return [job_id for job_id in jobs_of(conn, node, worker)
            if _reclaim_one(conn, book, node, job_id, now, reason, witness, others, foreign)]


def jobs_of(conn: redis.Redis, node: str, worker: str | None = None) -> list[str]:
    """Job ids running on (or claimed by) `node`, or by its slot `worker` only."""
    entries = {k.decode(): RunningEntry.decode(v) for k, v in conn.hgetall(keys.node_running(node)).items()}
    if worker is None:
        return list(entries)
    out = []
    for job_id, entry in entries.items():
        if entry.worker == worker:  # claimed or ended by it
            out.append(job_id)
            continue
        active = lenient(ActiveEntry, conn.hget(keys.ACTIVE, job_id), f"{keys.ACTIVE} field {job_id}")
        if active is not None and active.owned_by(worker):
            out.append(job_id)
    return out


def _reclaim_one(conn: redis.Redis, book: RQBook, node: str, job_id: str, now: float, reason: str,
                 witness: NodeSigner | None, others: list[str], foreign: bool) -> bool:
    # WATCH what a slot recording the job's end writes (node_running) and what this writes
    # (the job's hash, which that slot WATCHes): whichever commits first wins, the other
    # sees it and stands down, so a job never both finishes and gets requeued.
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.node_running(node), keys.rq_job(job_id))
                raw = pipe.hget(keys.node_running(node), job_id)
                if raw is None:
                    return False
                entry = RunningEntry.decode(raw)
                job = book.fetch(job_id)
                attempt = JobAttempt(conn, book, job, None, node=node, worker=entry.worker or "",
                                     result_ttl=book.result_ttl, slot=entry.slot) if job is not None else None
                if attempt is None:
                    if not foreign:
                        pipe.multi()
                        pipe.hdel(keys.node_running(node), job_id)  # the job is gone: only its entry goes
                        pipe.execute()
                    return False
                if entry.phase == "claimed":
                    return attempt.requeue_claimed(pipe, others, foreign)
                if entry.phase == "ended":
                    pipe.reset()
                    return attempt.complete_recorded(foreign)
                return attempt.lost(pipe, now, reason, witness, foreign)
            except redis.WatchError:
                continue


class NodeWatch:
    """What this agent has itself seen of other nodes' heartbeats, by its own monotonic clock.

    A node counts as down only when its heartbeat (broker time) is older than the timeout
    *and* this agent has watched that heartbeat not move for as long. Whenever this agent's
    view is suspect — it lost the broker, it was frozen, the broker restarted — the watch is
    reset, and every node gets a full timeout to heartbeat again before anything of it is
    reclaimed. So a broker outage, however long, or a jump of the broker's clock is never
    taken for nodes going silent.
    """

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, float]] = {}  # node -> (heartbeat score, when it last moved)

    def reset(self) -> None:
        self.seen.clear()

    def silent_for(self, node: str, score: float, mono: float | None = None) -> float:
        """Seconds this agent has seen `node`'s heartbeat stand still (0 on first sight)."""
        mono = time.monotonic() if mono is None else mono
        prev = self.seen.get(node)
        if prev is None or prev[0] != score:
            self.seen[node] = (score, mono)
            return 0.0
        return mono - prev[1]


def replace_queued(conn: redis.Redis, node: str, own: bool = False) -> int:
    """Send jobs the grid had placed on a node (not yet started) back to placement, their
    sweep slots given back. A down node's (not `own`): what they hold there stays in its keys
    (counted as nothing while it is down, dropped by it when it is back). A live node's that
    drained itself (`own`, its own agent's): given back now, or its resources would stay
    committed, once resumed, to jobs that run elsewhere. Each move is one step that moves a
    job only while it still waits in the node queue (a slot of a live node may take it in
    between), so it is safe to repeat."""
    nq = keys.node_queue(node)
    moved = 0
    for raw in conn.lrange(keys.rq_queue(nq), 0, -1):
        job_id = raw.decode()
        meta = lenient(JobMeta, conn.hget(keys.rq_job(job_id), "meta"), f"{keys.rq_job(job_id)} meta")
        if meta is None or meta.placement is None or meta.resources.node:
            continue  # pinned by the user to this node: it waits for the node
        pipe = guarded.recorder(conn)
        RQBook.move_waiting(pipe, job_id, nq, keys.PENDING_QUEUE)
        release(pipe, job_id, node if own else None, meta.group, requeued=True)
        done, errs = guarded.MOVE_WAITING(conn, [keys.rq_queue(nq)], [job_id, *guarded.packed(conn, pipe)])
        for err in guarded.errors(errs):
            log.error("job %s: moving it back to placement: %s", job_id, err)
        moved += done
    return moved


RECLAIM_LOCK_TTL = 30
"""Seconds a reclaim lock lives: longer than a reclaim, short enough for a crashed reclaimer."""


def take_reclaim_lock(conn: redis.Redis, node: str, me: str) -> bool:
    """Take the lock on reclaiming `node`'s jobs. Agents set it with an expiry of
    RECLAIM_LOCK_TTL; one without (or with a longer one) is a writer's squat that would stop
    every agent from ever recovering the node: it is removed, and taken."""
    key = keys.reclaim_lock(node)
    if conn.set(key, me, nx=True, ex=RECLAIM_LOCK_TTL):
        return True
    ttl = conn.ttl(key)
    if ttl == -1 or ttl > RECLAIM_LOCK_TTL:
        log.warning("node %s: removing a reclaim lock no agent set (ttl %s)", node, ttl)
        conn.delete(key)
        return bool(conn.set(key, me, nx=True, ex=RECLAIM_LOCK_TTL))
    return False


def sweep_down_nodes(conn: redis.Redis, me: str, now: float, node_timeout: float, ttl: int,
                     watch: NodeWatch | None = None, witness: NodeSigner | None = None,
                     registry: list | Exception | None = None) -> list[str]:
    """Reclaim the jobs of every other node whose heartbeat is older than `node_timeout`
    (and, with a `watch`, that this agent has seen stand still for that long). `registry`: the
    registry of nodes with their scores, as the caller read it just now (None: read it here)."""
    reclaimed = []
    if registry is None:
        registry = conn.zrange(keys.NODES, 0, -1, withscores=True)
    elif isinstance(registry, Exception):
        raise registry
    registry = [(text(n), score) for n, score in registry if text(n) != me]
    names = [n for n, _ in registry]
    fields = ("beat", "agent_id")
    with conn.pipeline(transaction=False) as pipe:
        for node in names:
            pipe.hmget(keys.node(node), fields)
        replies = pipe.execute(raise_on_error=False)
    for (node, score), raw in zip(registry, replies, strict=True):
        rec = NodeRecord.decode(dict(zip(fields, raw, strict=True)) if isinstance(raw, list) else {}, keys.node(node))
        age = rec.age(now, score)
        silent = watch.silent_for(node, now - age if age is not None else 0.0) if watch is not None else None
        if node_state(age, 0.0, node_timeout, False) is not NodeState.DOWN:
            continue
        if silent is not None and silent < node_timeout:
            continue
        try:
            reclaimed += _sweep_one(conn, me, node, names, now, age, ttl, witness)
        except redis.ResponseError as e:
            # The down node's own keys are its user's to write, of any type: one it spoiled must
            # not stop the recovery of every node after it in the registry.
            if not retyped(e):
                raise
            log.warning("node %s: its jobs can't be reclaimed: %s", node, e)
    return reclaimed


def _sweep_one(conn: redis.Redis, me: str, node: str, names: list[str], now: float, age: float | None,
               ttl: int, witness: NodeSigner | None) -> list[str]:
    """`sweep_down_nodes` for one down node: reclaim its jobs under the reclaim lock."""
    running = conn.hlen(keys.node_running(node))
    if not (running or conn.llen(keys.rq_queue(keys.node_queue(node))) or conn.llen(keys.node_taking(node))):
        return []
    if not take_reclaim_lock(conn, node, me):
        return []
    try:
        lost = reclaim(conn, node, now, f"node lost: {node} stopped heartbeating", ttl, witness=witness,
                       foreign=True) if running else []
        if lost:  # its entries stay (not this agent's to drop): say it once, when jobs were lost
            with conn.pipeline() as pipe:
                silence = "no heartbeat" if age is None else f"no heartbeat for {age:.0f}s"
                events.emit(pipe, now, "node_down", node=node, message=f"{silence}; {len(lost)} job(s) lost")
                pipe.execute()
        if claim.give_back_checked(conn, node, [me, *names], keep=True):
            log.warning("node %s: jobs it took off their queues, unclaimed, are back in line", node)
        replace_queued(conn, node)
    finally:
        conn.delete(keys.reclaim_lock(node))
    return lost


def reconcile_own(conn: redis.Redis, node: str) -> tuple[int, int]:
    """At an agent's start, after its own reclaim: drop from this node's keys what other agents
    recovered while it was down (they could not write them). What its waits took goes back in
    line unless it is back already or another node took it; what it held for jobs no longer
    its own is given back. Returns (jobs put back, holds dropped)."""
    others = [text(n) for n in conn.zrange(keys.NODES, 0, -1)]
    back = claim.give_back_checked(conn, node, others, keep=False)
    return back, claim.reconcile_held(conn, node)
