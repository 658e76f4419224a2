"""The grid's event log: one capped stream, written in the caller's pipeline."""

from __future__ import annotations

import redis
from redis.client import Pipeline

from gridcore import keys
from gridcore.models import Event
from gridcore.records import EventEntry, text

MAX_EVENTS = 10_000
"""Approximate length the event stream is trimmed to."""

KINDS = (
    "submitted", "started", "finished", "failed", "canceled", "requeued", "retried", "lost", "refused", "rerun",
    "node_joined", "node_stale", "node_down", "node_back", "node_draining", "node_resumed", "node_left",
    "corrupt",
)
"""Every event kind the grid writes."""


def emit(pipe: Pipeline, now: float, kind: str, *, job: str | None = None, node: str | None = None,
         message: str = "") -> None:
    """Append one event (broker time `now`) to the grid's event stream."""
    entry = EventEntry(time=now, kind=kind, job=job, node=node, message=message)
    pipe.xadd(keys.EVENTS, entry.fields(), maxlen=MAX_EVENTS, approximate=True)


def newest(conn: redis.Redis, count: int = 100, before: str = "+") -> list[Event]:
    """The newest `count` events up to stream id `before`, newest first."""
    out = []
    for eid, fields in conn.xrevrange(keys.EVENTS, max=before, count=count):
        e = EventEntry.decode(fields)
        out.append(Event(id=text(eid), time=e.time, kind=e.kind, job=e.job, node=e.node, message=e.message))
    return out
