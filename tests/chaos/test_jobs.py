"""Jobs that misbehave: flood their output, fork hundreds of children, eat memory."""

from __future__ import annotations

import time

import pytest

from gridcore.models import JobSpec, JobState, Resources
from tests.chaos.conftest import TRANSIENT, assert_accounted, have_job_cgroups, job_procs
from tests.support.records import get_result
from tests.support.wait import eventually


def test_output_budget_fills_and_the_job_goes_on(agents, grid, r, home, cleanup_jobs):
    budget = 64 * 1024
    agents("node-a", slots=1, output_budget=budget)
    # 4 MB in lines, then a marker on stderr: the job must not block on its full pipe.
    jid = grid.submit(JobSpec(command="seq 1 500000; echo finished >&2"))
    cleanup_jobs.append(jid)
    assert_accounted(r, grid, [jid])
    job = grid.get(jid)
    assert job.state is JobState.FINISHED and job.stderr == "finished\n"
    total = sum(len(f"{i}\n") for i in range(1, 500001))
    assert job.stdout_bytes == total and job.stdout.endswith("500000\n")
    chunks = grid.tail(jid, count=100_000)
    kept = sum(len(c.data) for c in chunks if c.stream in ("stdout", "stderr"))
    assert job.dropped_bytes == total + len("finished\n") - kept
    assert budget - 16 * 1024 <= kept <= budget  # the head and a rolling tail, each half the budget
    assert chunks[-2].stream == "stderr" and chunks[-2].data.endswith(b"finished\n")  # the true end is kept
    assert any(c.stream == "note" and b"rolling tail" in c.data for c in chunks)
    # The node keeps the whole log.
    assert (home / "logs-node-a" / f"{jid}.log").stat().st_size == total + len("finished\n")


def test_cancel_a_job_that_forked_hundreds(agents, grid, r, cleanup_jobs):
    agents("node-a", slots=1, kill_grace=1.0)
    # 300 children, some in sessions of their own, one that double-forks away from its parent.
    script = (
        "for i in $(seq 1 250); do sleep 300 & done; "
        "for i in $(seq 1 50); do setsid sleep 300 & done; "
        "(sh -c 'sleep 300 &' &); wait"
    )
    jid = grid.submit(JobSpec(command=script))
    cleanup_jobs.append(jid)
    eventually(lambda: len(job_procs(jid)) >= 300, 30, 0.5, "300 processes of the job", tolerate=TRANSIENT)
    t0 = time.monotonic()
    assert grid.cancel(jid, wait=30) is JobState.CANCELED
    assert not job_procs(jid), "processes of a canceled job survived"
    assert time.monotonic() - t0 < 20
    assert_accounted(r, grid, [jid])
    job = grid.get(jid)
    assert job.reason == "canceled"
    assert grid.get(jid).attempts[-1].get("reason_kind") == "canceled"


@pytest.mark.skipif(have_job_cgroups() is not None, reason=f"cannot confine a memory hog safely: {have_job_cgroups()}")
def test_memory_hog_is_oom_killed_and_says_so(agents, grid, r, cleanup_jobs):
    agents("node-a", slots=1)
    limit = 64 * 1024 * 1024
    hog = "python3 -c \"b = []\nwhile True: b.append(bytearray(8 << 20))\""
    a = grid.submit(JobSpec(command=hog, resources=Resources(memory=limit)))
    # The same limit with room to spare: a job under its limit is unaffected.
    b = grid.submit(JobSpec(command="python3 -c \"b = bytearray(16 << 20); print(len(b))\"",
                            resources=Resources(memory=limit)))
    cleanup_jobs.extend([a, b])
    states = assert_accounted(r, grid, [a, b], timeout=60)
    assert states[a] is JobState.FAILED and states[b] is JobState.FINISHED
    rec = get_result(r, a)
    assert rec.reason_kind == "oom", rec
    assert rec.reason.startswith("out of memory") and "64 MiB" in rec.reason
    assert rec.oom_kills >= 1 and rec.memory_peak <= limit
    assert grid.get(b).stdout == f"{16 << 20}\n"
