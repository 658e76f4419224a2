"""The grid's event log: one capped stream, written in the caller's pipeline."""

from __future__ import annotations

from redis.client import Pipeline

from gridcore import keys

MAX_EVENTS = 10_000
"""Approximate length the event stream is trimmed to."""

KINDS = (
    "submitted", "started", "finished", "failed", "canceled", "requeued", "retried", "lost", "refused",
    "node_joined", "node_stale", "node_down", "node_back", "node_draining", "node_resumed", "node_left",
)
"""Every event kind the grid writes."""


def emit(pipe: Pipeline, now: float, kind: str, *, job: str | None = None, node: str | None = None,
         message: str = "") -> None:
    """Append one event (broker time `now`) to the grid's event stream."""
    pipe.xadd(
        keys.EVENTS,
        {"t": f"{now:.6f}", "kind": kind, "job": job or "", "node": node or "", "msg": message[:500]},
        maxlen=MAX_EVENTS,
        approximate=True,
    )
