"""The placement pass: move jobs that need resources, a priority or a throttle onto a node.

Jobs with anything beyond the plainest needs wait in the `grid.pending` RQ queue (no slot
listens to it). One agent at a time (under a lock) reads a bounded window of it each
heartbeat, orders it by priority then age, and for each job picks a node where it fits now,
reserves its cpus/memory/GPUs there atomically and moves it to that node's queue. A job that
fits nowhere now keeps a plain-words reason per node, shown by `grid why` and the console.
"""

from __future__ import annotations

import json
import logging

import redis

from gridcore import keys
from gridcore.reads import Reads
from gridcore.placement import Committed, Fit, choose_node, explain
from gridcore.quarantine import Quarantine
from gridcore.records import CorruptRecord, JobMeta, Placement, text
from gridcore.reservations import Corrupt, Reservations, release

log = logging.getLogger("grid.negotiator")

WINDOW = 500
"""Pending jobs looked at per pass (bounded work however long the queue is)."""

_MOVE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[3], 'origin', ARGV[2], 'meta', ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[4], KEYS[2])
redis.call('HDEL', KEYS[5], ARGV[1])
if ARGV[4] ~= '' then redis.call('SADD', ARGV[4], ARGV[1]) end
return 1
"""


class Negotiator:
    def __init__(self, conn: redis.Redis, owner: str):
        self.conn = conn
        self.reads = Reads(conn)
        self.owner = owner
        self.reservations = Reservations(self.conn)
        self._move = self.conn.register_script(_MOVE)
        self.quarantine = Quarantine(self.conn)

    def run_once(self) -> int:
        """One pass if no other agent is doing one; returns how many jobs were placed."""
        if not self.conn.set(keys.NEGOTIATOR_LOCK, self.owner, nx=True, ex=15):
            return 0
        try:
            return self._pass()
        finally:
            if self.conn.get(keys.NEGOTIATOR_LOCK) == self.owner.encode():
                self.conn.delete(keys.NEGOTIATOR_LOCK)

    def _pass(self) -> int:
        pending = keys.rq_queue(keys.PENDING_QUEUE)
        ids = [text(i) for i in self.conn.lrange(pending, 0, WINDOW - 1)]
        if not ids:
            return 0
        metas = self._metas(ids)
        nodes = self.reads.nodes()
        corrupt: list[Corrupt] = []
        committed = self.reservations.committed([n.name for n in nodes], corrupt=corrupt)
        if corrupt:  # the reserve script counts them as nothing: set aside for good, then count again
            for c in corrupt:
                self.quarantine.hash_field(keys.node_held(c.node), c.field, c.raw, c.problem, node=c.node)
            committed = self.reservations.committed([n.name for n in nodes])
        by_name = {n.name: n for n in nodes}
        whys: dict[str, str] = {}
        readable = []
        for jid, (meta, raw) in zip(ids, metas, strict=True):
            if meta is None:
                # Out of the window for good: a corrupt record must not be read on every pass,
                # nor crowd out the jobs behind it.
                whys[jid] = f"not placed: {raw}"
                self.quarantine.list_item(pending, jid, f"not placed: {raw}", job=jid)
            else:
                readable.append((jid, meta, raw))
        order = sorted(readable, key=lambda x: (-x[1].priority, x[1].submitted or 0))
        groups: dict[str, tuple[int, int]] = {}
        placed = 0
        for jid, meta, raw in order:
            res = meta.resources.resources()
            queue = meta.queue or "default"
            group = meta.group
            if group and meta.max_parallel:
                if group not in groups:
                    groups[group] = (meta.max_parallel, self.conn.scard(keys.group_slots(group)))
                limit, running = groups[group]
                if running >= limit:
                    whys[jid] = f"throttled: {running} of this sweep running (max_parallel {limit})"
                    continue
            choice = choose_node(res, nodes, committed, queue=queue)
            if choice is None:
                verdicts = explain(res, nodes, committed, queue=queue)
                whys[jid] = "; ".join(str(v) for v in verdicts if v.fit is not Fit.NOW) or "no node is up"
                continue
            node = by_name[choice.node]
            if not self.reservations.reserve(node.name, jid, res, choice.gpus, node.cpus or 1e9,
                                             node.memory_total):
                whys[jid] = f"{node.name}: resources taken meanwhile"
                continue
            # The meta as read, placement added: fields this agent does not know stay.
            raw["placement"] = Placement(node=node.name, gpus=list(choice.gpus)).model_dump()
            raw.pop("why", None)
            nq = keys.node_queue(node.name)
            moved = self._move(
                keys=[pending, keys.rq_queue(nq), keys.rq_job(jid), keys.rq_queues(), keys.WHY],
                args=[jid, nq, json.dumps(raw), keys.group_slots(group) if group else ""],
            )
            if not moved:  # canceled meanwhile: give the reservation back
                with self.conn.pipeline() as pipe:
                    release(pipe, jid, node.name)
                    pipe.execute()
                continue
            committed[node.name] = committed.get(node.name, Committed()).plus(res, choice.gpus)
            if group and group in groups:
                limit, running = groups[group]
                groups[group] = (limit, running + 1)
            placed += 1
        if whys:
            self.conn.hset(keys.WHY, mapping=whys)
        return placed

    def _metas(self, ids: list[str]) -> list[tuple[JobMeta, dict] | tuple[None, str]]:
        """Each pending job's meta; its size is asked first, so an oversized one is never fetched."""
        with self.conn.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hstrlen(keys.rq_job(jid), "meta")
            # A job key of another type (anyone can write one) fails its own reply, not the pass.
            sizes = pipe.execute(raise_on_error=False)
        with self.conn.pipeline(transaction=False) as pipe:
            for jid, size in zip(ids, sizes, strict=True):
                if isinstance(size, int) and size <= JobMeta.MAX_BYTES:
                    pipe.hget(keys.rq_job(jid), "meta")
            fetched = iter(pipe.execute())
        return [_meta(jid, next(fetched)) if isinstance(size, int) and size <= JobMeta.MAX_BYTES else
                (None, str(CorruptRecord(f"{keys.rq_job(jid)} meta", "", _unfit(size))))
                for jid, size in zip(ids, sizes, strict=True)]


def _unfit(size: int | Exception) -> str:
    if isinstance(size, Exception):
        return f"not a job record ({str(size)[:100]})"
    return f"{size} bytes, more than the {JobMeta.MAX_BYTES} a JobMeta may have"


def _meta(job_id: str, raw: bytes | None) -> tuple[JobMeta, dict] | tuple[None, str]:
    """A pending job's meta, typed and as the raw dict it is written back as; or None and
    what is wrong with it (a job with a corrupt record is not placed)."""
    try:
        meta = JobMeta.decode(raw or b"{}", f"{keys.rq_job(job_id)} meta")
    except CorruptRecord as e:
        return None, str(e)
    return meta, json.loads(raw or b"{}")
