"""Why a job is not running, what nodes have committed, and refusing what no node could ever run."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from gridcore import keys
from gridcore.errors import Unplaceable
from gridcore.models import Job, JobSpec, JobState, Node, NodeState, Resources
from gridcore.placement import Committed, Fit, explain, is_plain, never_fits
from gridcore.reads import Reads
from gridcore.records import text
from gridcore.reservations import Reservations


class Explainer:
    """Placement questions about one grid, answered from its reads."""

    def __init__(self, conn: redis.Redis, reads: Reads):
        self.redis = conn
        self.reads = reads

    def why(self, job_id: str) -> list[str]:
        """Why a job is not running, in plain words (per node for a job waiting for placement)."""
        job = self.reads.get(job_id)
        lines = self._why(job_id, job)
        return lines + list(job.problems)

    def _why(self, job_id: str, job: Job) -> list[str]:
        if job.state is JobState.RUNNING:
            return [f"running on {job.node}"]
        if job.state.terminal:
            return [f"{job.state.value}" + (f": {job.reason}" if job.reason else "")]
        if job.state is JobState.WAITING:
            return [f"waiting for {', '.join(job.waiting_on) or 'its dependencies'}"]
        if job.state is JobState.SCHEDULED:
            return ["scheduled for a later retry"]
        origin = text(self.redis.hget(keys.rq_job(job_id), "origin"))
        if origin.startswith("node."):
            return [f"placed on {origin[5:]}; waiting for a free slot there"]
        if origin != keys.PENDING_QUEUE:
            serving = [n for n in self.reads.nodes() if job.queue in (n.queues or ())]
            up = [n for n in serving if n.state is NodeState.UP]
            if not up:
                if any(n.state is NodeState.DRAINING for n in serving):
                    return [f"every node serving queue {job.queue!r} that is up is draining"]
                return [f"no node serving queue {job.queue!r} is up"]
            busy = all(n.slots_busy >= n.slots_total for n in up)
            return ["queued; every slot serving it is busy" if busy else "queued; a slot should take it shortly"]
        stored = text(self.redis.hget(keys.WHY, job_id))
        nodes = self.reads.nodes()
        problems: list[str] = []
        held = self.committed(nodes, problems)
        res = Resources.from_dict(job.resources)
        lines = [str(v) for v in explain(res, nodes, held, queue=job.queue) if v.fit is not Fit.NOW]
        if stored.startswith("throttled"):
            lines.insert(0, stored)
        return (lines or ["waiting for the next placement pass"]) + problems

    def committed(self, nodes: Sequence[Node] | None = None, problems: list[str] | None = None
                  ) -> dict[str, Committed]:
        """node name -> what running and placed jobs hold there."""
        nodes = self.reads.nodes() if nodes is None else nodes
        return Reservations(self.redis).committed_live(nodes, problems)

    def check_placeable(self, specs: Sequence[JobSpec]) -> None:
        """Refuse a request no node of the grid could ever run, with the reason."""
        if all(is_plain(s) for s in specs):
            return
        nodes = self.reads.nodes()
        for spec in specs:
            reason = never_fits(spec.resources, nodes)
            if reason:
                raise Unplaceable(f"{spec.name or spec.display_command[:60]}: no node can ever run this: {reason}")
