"""A slot on a full node waits for room instead of spinning.

Every plain job holds one CPU on its node (gridcore/reservations.py). A node with more slots
than CPUs (`agent.slots` above `agent.cpus`), or with CPUs held by placed jobs, has slots
that cannot start the next plain job: each took the head job, found no room and put it back,
several times a second. Once a start found no room, the slot instead looks at the node's
holds once a second, without taking anything, until a plain job would fit or a placed job
(whose hold is already counted) waits in the node's own queue.
"""

from __future__ import annotations

import logging

import redis

from gridcore import keys
from gridcore.records import HeldEntry, lenient

log = logging.getLogger("grid.slot")

ROOM_POLL = 1.0
"""Seconds between a waiting slot's looks at whether the node has room again."""
PLAIN_CPUS = 1.0
"""What a plain job holds (Resources' default)."""


def no_room(conn: redis.Redis, node: str, cpus: float) -> float | None:
    """The CPUs held on `node` if a plain job would not fit and no placed job waits for a
    slot there, else None (take work as usual)."""
    held_key = keys.node_held(node)
    with conn.pipeline(transaction=False) as pipe:
        pipe.hvals(held_key)
        pipe.llen(keys.rq_queue(keys.node_queue(node)))
        values, placed_waiting = pipe.execute()
    if placed_waiting:
        return None
    held = sum(e.cpus for v in values if (e := lenient(HeldEntry, v, held_key)) is not None)
    return held if held + PLAIN_CPUS > cpus + 1e-9 else None
