"""A stale copy is killed by its attempt, never by its job id: the rerun of the same job on
the same node (another slot took it the moment a sweep reclaimed it) lives on."""

from __future__ import annotations

from agent import recovery
from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import NODE_TIMEOUT, TRANSIENT, assert_accounted, job_procs, running_on
from tests.chaos.test_node_loss import attempts
from tests.support.wait import eventually

FIRST_HANGS = 'if [ "$GRID_JOB_ATTEMPT" = 1 ]; then sleep 60; else sleep 2; echo rerun; fi'


def test_cleaning_up_a_stale_copy_spares_the_rerun_on_the_same_node(agents, grid, r, settings, cleanup_jobs):
    agents("node-b", slots=2, node_timeout=NODE_TIMEOUT)
    jid = grid.submit(JobSpec(command=FIRST_HANGS))
    cleanup_jobs.append(jid)
    eventually(lambda: running_on(r, jid) == "node-b" and job_procs(jid), 20, 0.1, "the job to run on node-b",
               tolerate=TRANSIENT)

    # What another agent's node-loss sweep does when node-b's heartbeat is late (a freeze,
    # a network cut): the attempt is lost and the job back in line, where node-b's idle slot
    # takes it at once while the first slot still runs the stale copy.
    sec, usec = r.time()
    assert recovery.reclaim(r, "node-b", sec + usec / 1e6, "node lost: node-b stopped heartbeating",
                            settings.result_ttl) == [jid]
    states = assert_accounted(r, grid, [jid], timeout=30)
    assert states[jid] is JobState.FINISHED, grid.get(jid).reason
    assert grid.get(jid).stdout == "rerun\n"
    assert attempts(grid, jid) == [("node-b", "lost"), ("node-b", None)]
