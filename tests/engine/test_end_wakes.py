"""The placement wake at a job's end: a job that gives back room wakes its node's placement loop
only if some job waits for placement (grid.pending). With nothing waiting, a busy node of plain
jobs would otherwise wake its loop at every job's end, for a pass that finds nothing (a read and
a queue-length check of the agent's for every job)."""

from __future__ import annotations

from gridcore import keys
from gridcore.models import JobSpec, JobState


def _wakes(r) -> list[dict]:
    return [f for _id, f in r.xrange(keys.PLACE_WAKES)]


def test_a_plain_jobs_end_wakes_no_loop_when_nothing_waits(agents, grid, r):
    agents("node-a", slots=1)
    jobs = [grid.submit(JobSpec(command="true")) for _ in range(3)]
    states = grid.wait(jobs, timeout=30)
    assert set(states.values()) == {JobState.FINISHED}
    assert _wakes(r) == []


def test_a_plain_jobs_end_wakes_its_nodes_loop_when_a_job_waits(agents, grid, r):
    agents("node-a", slots=2)
    gid = "one-at-a-time"
    cells = grid.submit_many([JobSpec(command="sleep 3", group=gid, params={"i": i}) for i in range(2)],
                             groups={gid: {"max_parallel": 1}})
    # The sweep's second cell waits for placement while its first runs.
    assert grid.wait([cells[0]], timeout=1)[cells[0]] == JobState.RUNNING
    assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [cells[1].encode()]
    job = grid.submit(JobSpec(command="true"))
    assert grid.wait([job], timeout=30)[job] == JobState.FINISHED
    assert {b"node": b"node-a", b"any": b"0"} in _wakes(r)
