"""Where a lost job runs again: on another node when one can take it.

A node that lost a job (frozen, cut off, its agent restarted) is often the first to ask for
work again, so a rerun used to land on the very node that lost it. Recovery records the node
and the time of the loss in the job's meta (`lost_on`, `lost_at`); for `AVOID_FOR` seconds
after that, a slot of that node that takes the job puts it back while another live node
serves the job's queue, and after that window it runs it itself (no other node took it). A
job the grid placed goes back to placement instead, which decides on its own.
"""

from __future__ import annotations

import logging

import redis

from gridcore import events, keys
from gridcore.models import NodeState, node_state
from gridcore.records import CorruptRecord, JobMeta, NodeRecord

log = logging.getLogger("grid.rerun")

AVOID_FOR = 10.0
"""Seconds after a loss during which the node that lost a job leaves its rerun to others."""


def pass_on(conn: redis.Redis, meta: JobMeta, node: str, queue: str, now: float) -> bool:
    """Whether this node should put the job back for another node to rerun."""
    if meta.lost_on != node or meta.lost_at is None or meta.placement is not None:
        return False
    if now - meta.lost_at >= AVOID_FOR:
        return False
    return bool(others_serving(conn, node, queue, now))


def others_serving(conn: redis.Redis, node: str, queue: str, now: float) -> list[str]:
    """Live, ready, undrained nodes other than `node` whose slots take from `queue`."""
    out = []
    for raw, score in conn.zrange(keys.NODES, 0, -1, withscores=True):
        name = raw.decode()
        if name == node:
            continue
        try:
            rec = NodeRecord.decode(conn.hgetall(keys.node(name)), keys.node(name))
        except CorruptRecord as e:
            log.warning("%s", e)
            continue
        state = node_state(rec.age(now, score), rec.hb_interval, rec.node_timeout, rec.draining)
        if state is NodeState.UP and rec.ready and queue in rec.queues:
            out.append(name)
    return out


def record(pipe, job_id: str, meta: JobMeta, node: str, now: float) -> None:
    """Say where the rerun of a lost job runs (on another node, or again where it was lost), on
    the start's own pipeline: written with the start or not at all. As a write of its own after
    the start, a broker lost on it left a started attempt to be handed back as unstarted."""
    if meta.lost_on is None:
        return
    where = (f"rerun on {node} after the loss on {meta.lost_on}" if meta.lost_on != node
             else f"rerun on {node}, where it was lost: no other node took it")
    events.emit(pipe, now, "rerun", job=job_id, node=node, message=where)
