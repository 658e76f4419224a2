"""Cancel of many jobs: the queued ones are canceled in one atomic step, so none of them
starts (not even on the slot a canceled running job frees), then the running ones are stopped."""

from __future__ import annotations

from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import TRANSIENT, assert_accounted, running_on
from tests.support.wait import eventually


def test_cancel_running_and_queued_starts_none_of_the_queued(agents, grid, r, cli, tmp_path, cleanup_jobs):
    agents("node-a", slots=2)
    running = grid.submit_many([JobSpec(command="sleep 60") for _ in range(2)])
    cleanup_jobs.extend(running)
    eventually(lambda: all(running_on(r, j) for j in running), 20, 0.1, "both slots to be busy", tolerate=TRANSIENT)
    marks = tmp_path / "ran"
    marks.mkdir()
    queued = grid.submit_many([JobSpec(command='touch "$MARKS/$GRID_JOB_ID"', env={"MARKS": str(marks)})
                               for _ in range(100)])
    cleanup_jobs.extend(queued)
    # The running ones first on the command line: stopping them frees slots while the rest wait.
    out = cli("cancel", *running, *queued)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(" canceled\n") == len(running) + len(queued)
    states = assert_accounted(r, grid, [*running, *queued], timeout=30)
    assert set(states.values()) == {JobState.CANCELED}
    assert sorted(p.name for p in marks.iterdir()) == [], "a job of the cancel batch ran"
    for jid in queued:
        assert grid.get(jid).attempts == ()
