"""A node whose memory cgroups fail is the grid's fault, not the job's: the node drains itself
(saying why), the attempt is handed back without counting against the job's retries, and the
node's memory jobs run elsewhere."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gridcore import keys
from gridcore.models import JobSpec, JobState, Resources
from tests.chaos.conftest import NODE_TIMEOUT, TRANSIENT, assert_accounted, have_job_cgroups
from tests.support.wait import eventually

MB = 1 << 20


@pytest.mark.skipif(have_job_cgroups() is not None, reason=f"no job cgroups here: {have_job_cgroups()}")
def test_a_node_whose_cgroups_fail_drains_itself_and_its_memory_jobs_run_elsewhere(agents, grid, r, cleanup_jobs):
    from agent import slotnames
    from agent.cgroup import JobCgroups

    agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    worker = slotnames.slot_name("node-a", r.hget(keys.node("node-a"), "agent_id").decode(), 0)
    # Every name node-a's slot tries for a job's group is taken (cgroup v1: <slot name>.<n>):
    # each of its memory jobs fails to get a group, as on a node whose cgroup hierarchy broke.
    taken = [JobCgroups.probe().base / f"{worker}.{i}" for i in (1, 2, 3)]
    for d in taken:
        d.mkdir()
    try:
        ids = [grid.submit(JobSpec(command="echo ran", resources=Resources(memory=64 * MB))) for _ in range(2)]
        cleanup_jobs.extend(ids)
        eventually(lambda: r.hget(keys.node("node-a"), "draining") == b"1", 20, 0.05, "node-a to drain itself",
                   tolerate=TRANSIENT)
        [a] = [n for n in grid.nodes() if n.name == "node-a"]
        assert a.drain_reason.startswith("job cgroups failing: no memory cgroup for its 64 MiB limit: ") \
            and "taken" in a.drain_reason, a.drain_reason
        assert [e for e in grid.events(count=1000) if e.kind == "node_draining" and e.node == "node-a"]
        agents("node-b", slots=1, node_timeout=NODE_TIMEOUT)
        states = assert_accounted(r, grid, ids, timeout=30)
        assert all(s is JobState.FINISHED for s in states.values()), {j: s.value for j, s in states.items()}
        for jid in ids:  # no retries asked for: node-a's failure counted against none
            job = grid.get(jid)
            assert job.node == "node-b" and job.stdout == "ran\n"
            assert [x.get("node") for x in job.attempts][-1] == "node-b"
            assert all("memory cgroup" in (x.get("reason") or "") for x in job.attempts[:-1]), job.attempts
        assert r.hget(keys.node("node-a"), "draining") == b"1"  # it stays drained: the operator resumes it
    finally:
        for d in taken:
            try:
                d.rmdir()
            except OSError:
                pass


_FAKE_REPORT = r"""
#include <unistd.h>
/* Loaded into every program of the job's env: a failed move's report written to descriptor 0
   (where the cgroup shim's report goes), whatever the move did. */
__attribute__((constructor)) static void fake(void) {
    static const char msg[] = "sh: 1: cannot create cgroup.procs: Is a directory\n";
    if (write(0, msg, sizeof msg - 1) < 0) return;
}
"""


@pytest.mark.skipif(have_job_cgroups() is not None, reason=f"no job cgroups here: {have_job_cgroups()}")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the preloaded library")
def test_a_jobs_env_cannot_fake_a_failed_move_into_its_cgroup(agents, grid, r, cleanup_jobs, tmp_path):
    """The cgroup shim runs with a fixed environment of its own: a signer's LD_PRELOAD that
    writes a failed move's report cannot make its attempt the node's fault (handed back
    uncounted, the node drained); the job's env reaches its command, and the job runs."""
    src, lib = tmp_path / "fake.c", tmp_path / "fake.so"
    src.write_text(_FAKE_REPORT)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    jid = grid.submit(JobSpec(command='echo "ran with $LD_PRELOAD"; /bin/true', env={"LD_PRELOAD": str(lib)},
                              resources=Resources(memory=64 * MB)))
    cleanup_jobs.append(jid)
    states = assert_accounted(r, grid, [jid], timeout=30)
    job = grid.get(jid)
    assert states[jid] is JobState.FINISHED, (states, job.attempts, r.hget(keys.node("node-a"), "drain_reason"))
    assert job.stdout == f"ran with {lib}\n" and len(job.attempts) == 1, job.attempts
    assert r.hget(keys.node("node-a"), "draining") != b"1"


# Run as the job, in its group: the slot's environment file (the shim's report channel) is
# opened through /proc and a failed move's report appended, as a job of the agent's user can.
_FAKE_AFTER = r'''for f in /proc/$PPID/fd/*; do case "$(readlink "$f")" in *grid-job-env*)
python3 -c "import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY); os.lseek(fd, 0, os.SEEK_END)
os.write(fd, b'sh: 1: cannot create cgroup.procs: Is a directory\n')" "$f";; esac; done; echo ran'''


@pytest.mark.skipif(have_job_cgroups() is not None, reason=f"no job cgroups here: {have_job_cgroups()}")
def test_a_job_that_ran_in_its_cgroup_cannot_fake_a_failed_move(agents, grid, r, cleanup_jobs):
    """A failed move's report is believed only if nothing was ever charged to the job's group: a
    job that ran there and then wrote one (the channel is the slot's, reachable through /proc by
    the agent's user) gets its own result, counted, and the node does not drain."""
    agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    jid = grid.submit(JobSpec(command=_FAKE_AFTER, resources=Resources(memory=64 * MB)))
    cleanup_jobs.append(jid)
    states = assert_accounted(r, grid, [jid], timeout=30)
    job = grid.get(jid)
    assert states[jid] is JobState.FINISHED, (states, job.attempts, r.hget(keys.node("node-a"), "drain_reason"))
    assert job.stdout == "ran\n" and len(job.attempts) == 1, job.attempts
    assert r.hget(keys.node("node-a"), "draining") != b"1"
