"""A lost job runs again on another node when one serves its queue, even if the node that
lost it asks first; where the rerun ran is recorded."""

from __future__ import annotations

from agent import recovery
from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import NODE_TIMEOUT, TRANSIENT, assert_accounted, job_procs, running_on
from tests.chaos.test_node_loss import ONLY_SLOW_ON_B, attempts
from tests.support.wait import eventually


def test_a_lost_job_reruns_on_another_node(agents, grid, r, settings, cleanup_jobs):
    agents("node-b", slots=3, node_timeout=NODE_TIMEOUT)  # idle slots of node-b wait first in line
    jid = grid.submit(JobSpec(command=ONLY_SLOW_ON_B))
    cleanup_jobs.append(jid)
    eventually(lambda: running_on(r, jid) == "node-b" and job_procs(jid), 20, 0.1, "the job to run on node-b",
               tolerate=TRANSIENT)
    agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    sec, usec = r.time()  # what a sweep does when node-b's heartbeat is late (it was frozen a moment)
    assert recovery.reclaim(r, "node-b", sec + usec / 1e6, "node lost: node-b stopped heartbeating",
                            settings.result_ttl) == [jid]
    states = assert_accounted(r, grid, [jid], timeout=30)
    assert states[jid] is JobState.FINISHED
    assert attempts(grid, jid) == [("node-b", "lost"), ("node-a", None)]
    reruns = [e.message for e in grid.events(count=1000) if e.kind == "rerun" and e.job == jid]
    assert reruns == ["rerun on node-a after the loss on node-b"]
