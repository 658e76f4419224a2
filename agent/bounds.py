"""Where a signed envelope may run: the node, labels, queue, GPUs and parents it was signed for.

Which queue a job id sits in is broker state, and a broker writer can push any id onto any
queue (n1's own queue included). So before anything runs, each node checks the envelope
itself: a job signed for another node, for labels or a queue this node does not have, for
other GPUs than its placement here holds, or `after` a parent that did not end as required,
is refused with the reason.

The parents' states are read from the broker, the one thing here it still vouches for: see
the README's Security section for what that leaves open.
"""

from __future__ import annotations

from typing import Any

import redis

from gridcore import keys
from gridcore.records import Placement
from gridcore.settings import AgentSettings
from gridcore.signing import Refused

ENDED = frozenset({"finished", "failed", "canceled", "stopped"})
"""RQ states of a parent that has ended (for `after_on: any`)."""


def check(envelope: dict[str, Any], cfg: AgentSettings, taken_from: str, placement: Placement | None) -> None:
    """Refuse an envelope this node may not run, taken off the RQ queue named `taken_from`."""
    node = cfg.node_name
    res = envelope.get("resources") or {}
    if not isinstance(res, dict):
        raise Refused("envelope has malformed resources")
    pinned = res.get("node")
    if pinned is not None and pinned != node:
        raise Refused(f"envelope was signed for node {str(pinned)[:200]!r}, not this node ({node})")
    labels = res.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise Refused("envelope has malformed labels")
    missing = sorted(set(labels) - set(cfg.labels))
    if missing:
        raise Refused(f"envelope needs label{'s' if len(missing) > 1 else ''} {', '.join(missing)[:400]}, "
                      f"which this node ({node}) does not have")
    routed, chosen = envelope.get("queue"), envelope.get("job_queue") or envelope.get("queue")
    if taken_from not in (routed, keys.node_queue(node)):
        raise Refused(f"envelope was signed for queue {str(routed)[:200]!r}, found in queue {taken_from[:200]!r}")
    if chosen != keys.PENDING_QUEUE and chosen not in cfg.queues:
        raise Refused(f"envelope was signed for queue {str(chosen)[:200]!r}, which this node ({node}) does not serve")
    gpus = res.get("gpus") or 0
    held = list(placement.gpus) if placement is not None and placement.node == node else []
    if held and len(held) != gpus:
        raise Refused(f"placement holds {len(held)} GPUs here; the envelope was signed for {gpus}")


def check_parents(conn: redis.Redis, envelope: dict[str, Any]) -> None:
    """Refuse a child whose signed parents have not ended as its `after_on` requires."""
    parents = envelope.get("after") or []
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise Refused("envelope has malformed parents")
    if not parents:
        return
    need_success = envelope.get("after_on", "success") != "any"
    with conn.pipeline(transaction=False) as pipe:
        for parent in parents:
            pipe.hget(keys.rq_job(parent), "status")
        states = pipe.execute()
    for parent, raw in zip(parents, states, strict=True):
        state = raw.decode(errors="replace") if raw is not None else None
        if need_success and state != "finished":
            raise Refused(f"parent {parent[:200]} did not finish ({(state or 'no record')[:40]}); "
                          "the envelope runs only after it succeeded")
        if not need_success and state not in ENDED:
            raise Refused(f"parent {parent[:200]} has not ended ({(state or 'no record')[:40]})")
