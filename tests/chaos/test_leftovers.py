"""After every job, however it ended, nothing carrying its marker survives: children that
escaped its session (setsid) and double-forked daemons are killed, and the result counts them."""

from __future__ import annotations

from gridcore import keys
from gridcore.models import JobSpec, JobState
from gridcore.records import Result
from tests.chaos.conftest import assert_accounted

ESCAPE = ("setsid sleep 300 & setsid sleep 300 & "
          "sh -c 'setsid sh -c \"sleep 300 & sleep 300 & wait\" &' ; "  # a double fork into a new session
          "sleep 0.3; {end}")


def test_escaped_children_die_with_a_job_that_ended_by_itself(agents, grid, r, cleanup_jobs):
    agents("node-a", slots=2)
    ends = {"echo done": JobState.FINISHED, "exit 3": JobState.FAILED}
    ids = {grid.submit(JobSpec(command=ESCAPE.format(end=end))): state for end, state in ends.items()}
    cleanup_jobs.extend(ids)
    states = assert_accounted(r, grid, ids, timeout=30)  # also: no process of either job is left
    assert states == ids
    for jid in ids:
        result = Result.decode(r.get(keys.result(jid)), keys.result(jid))
        assert result.killed_processes is not None and result.killed_processes >= 5, result
        assert result.survivors == []
