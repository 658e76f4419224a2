"""A slot's job memory cgroup, reused job after job on cgroup v1: each job's OOM kills and peak
are its own, its whole tree is limited, and a group that is not fit for the next job is not
reused; a killed slot's group is removed by its agent. The runner is called as a slot calls
it, on a real broker, with real cgroups."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import psutil
import pytest

from agent import cgroup, runner
from agent.output import OutputSink
from agent.runner import RunContext, execute
from gridcore.models import JobSpec, Resources
from tests.support.wait import eventually

MB = 1 << 20

HOG = 'python3 -c "b = []\nwhile True: b.append(bytearray(8 << 20))"'
SMALL = "python3 -c \"b = bytearray(8 << 20); b[::4096] = b'x' * len(b[::4096]); print(len(b))\""
# Two children of 24 MB each, alive at the same time: each fits a 40 MB limit, together they don't.
PAIR = ("python3 -c \"import time; b = bytearray(24 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)\" & "
        "python3 -c \"import time; b = bytearray(24 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)\" & "
        "wait")


def _v1() -> str | None:
    cgs = cgroup.JobCgroups.probe()
    if cgs is None:
        return "no writable memory cgroup here"
    if cgs.v2:
        return "cgroup v2: a fresh group per job, nothing reused"
    return None


pytestmark = pytest.mark.skipif(_v1() is not None, reason=str(_v1()))


@pytest.fixture
def groups(monkeypatch):
    """The slot's job cgroups, as runner.job_cgroups() probes them; the kept group removed after."""
    cgs = cgroup.JobCgroups.probe()
    monkeypatch.setattr(runner, "_cgroups", cgs)
    monkeypatch.setattr(runner, "_cgroups_probed", True)
    yield cgs
    runner.close_cgroups()


def _run(r, tmp_path, command: str, memory: int):
    job = uuid.uuid4().hex
    ctx = RunContext(job_id=job, node="n1", slot=0, kill_grace=1.0, marker_env={}, broker_time=time.time,
                     cgroup_tag=f"n1.test{uuid.uuid4().hex[:8]}.0.0", run_id=uuid.uuid4().hex)
    sink = OutputSink(r, job, "n1", time.time(), budget=1 << 20, log_dir=tmp_path, log_cap=1 << 20, ttl=60)
    result, _ = execute({"command": command, "resources": {"memory": memory}}, ctx, sink)
    return result


def test_the_next_job_on_a_slot_sees_only_its_own_oom_and_peak(r, tmp_path, groups):
    oom = _run(r, tmp_path, HOG, 64 * MB)
    assert oom.reason_kind == "oom" and oom.oom_kills >= 1, oom
    assert 0.9 * 64 * MB <= oom.memory_peak <= 64 * MB, oom
    kept = groups.idle
    assert kept is not None and kept.path.is_dir() and not kept.pids()

    small = _run(r, tmp_path, SMALL, 64 * MB)
    assert groups.idle is not None and groups.idle.path == kept.path  # the same group, reused
    assert small.exit_code == 0 and small.stdout == f"{8 << 20}\n", small
    assert not small.oom_kills and small.reason_kind is None, small  # the first job's OOM kill is not its own
    assert 8 * MB <= small.memory_peak < 24 * MB, small  # nor is the first job's 64 MB peak

    # Reused with a smaller limit: the whole tree is held to it, not each process.
    pair = _run(r, tmp_path, PAIR, 40 * MB)
    assert pair.oom_kills >= 1 and pair.memory_peak <= 40 * MB, pair
    assert groups.idle is not None and groups.idle.path == kept.path


def test_a_reused_group_holds_each_jobs_own_limit(r, tmp_path, groups):
    """The slot writes its group's limit only when the next job asks another one (a sweep's cells
    ask the same): whatever was skipped, each job runs under its own limit."""
    for limit in (64 * MB, 64 * MB, 40 * MB, 40 * MB, 64 * MB):
        result = _run(r, tmp_path, "true", limit)
        assert result.exit_code == 0, result
        kept = groups.idle
        assert kept is not None
        assert int((kept.path / "memory.limit_in_bytes").read_text()) == limit
        memsw = kept.path / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == limit


def test_a_shell_command_enters_its_group_itself_and_runs_as_signed(r, tmp_path, groups):
    """A shell command moves its own shell into the group (no shim process before it): the
    command and what it starts run in the group, with the same `$0`, arguments and exit code
    as without one, and an error in the command is its own."""
    got = _run(r, tmp_path, 'echo "$0 $#"; cat /proc/self/cgroup; exit 3', 64 * MB)
    kept = groups.idle
    assert kept is not None
    assert got.exit_code == 3, got
    first, *groups_of = got.stdout.splitlines()
    assert first == "/bin/sh 0"
    memory = [g for g in groups_of if ":memory:" in g]
    assert memory and memory[0].endswith("/" + kept.path.name), got.stdout
    broken = _run(r, tmp_path, "if then fi", 64 * MB)
    assert broken.exit_code == 2 and "Syntax error" in broken.stderr, broken


def test_the_cache_a_job_leaves_is_not_the_next_jobs_peak(r, tmp_path, groups):
    # 32 MB written and kept: its page cache stays charged to the group after the job.
    first = _run(r, tmp_path, f"head -c {32 * MB} /dev/urandom > {tmp_path / 'kept'}", 256 * MB)
    assert first.exit_code == 0 and first.memory_peak >= 32 * MB, first
    assert groups.idle is None or groups.idle.usage() <= cgroup.RESIDUE_MAX
    second = _run(r, tmp_path, "true", 256 * MB)
    assert second.exit_code == 0 and second.memory_peak <= cgroup.RESIDUE_MAX, second


def test_a_group_with_a_process_left_in_it_is_not_kept(groups):
    cg = groups.acquire("job", f"n1.test{uuid.uuid4().hex[:8]}.0.0", 64 * MB)
    assert cg is not None
    stray = subprocess.Popen(["sleep", "30"])
    try:
        cg.procs_file.write_text(str(stray.pid))
        assert groups.release(cg) is False  # neither kept nor removable
        assert groups.idle is None and cg.path.is_dir()
    finally:
        stray.kill()
        stray.wait()
    deadline = time.monotonic() + 5
    while cg.pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cg.remove()
    fresh = groups.acquire("job", f"n1.test{uuid.uuid4().hex[:8]}.0.0", 64 * MB)
    assert fresh is not None and fresh.path != cg.path
    assert groups.release(fresh) and groups.idle is fresh


def test_groups_left_by_earlier_agents_of_the_node_are_removed(groups):
    node, live = f"n{uuid.uuid4().hex[:6]}", "a" * 12
    old = groups.base / f"{node}.{'b' * 12}.0.1"  # an earlier agent's slot 0
    old_restarted = groups.base / f"{node}.{'b' * 12}.1.2.3"  # its slot 1 after two deaths
    dead = groups.base / f"{node}.{live}.1.2.1"  # a dead slot of the live agent
    mine = groups.base / f"{node}.{live}.0.1"
    other = groups.base / f"{node}.x.{'b' * 12}.0.1"  # node "<node>.x"
    made = (old, old_restarted, dead, mine, other)
    for d in made:
        d.mkdir()
    try:
        assert cgroup.remove_left_groups(node, live) == 2 and not old.exists() and not old_restarted.exists()
        assert cgroup.remove_left_groups(node, live, f"{node}.{live}.1.2") == 1 and not dead.exists()
        assert mine.exists() and other.exists()
    finally:
        for d in made:
            if d.exists():
                d.rmdir()


@pytest.mark.agents
def test_the_group_of_a_killed_slot_is_removed_by_its_agent(agents, grid, groups):
    a = agents("node-a", slots=1)
    grid.submit(JobSpec(command="sleep 30", resources=Resources(memory=64 * MB)))

    def running_group():
        return next((d for d in groups.base.iterdir()
                     if d.name.startswith("node-a.") and cgroup.JobCgroup(d, v2=False).pids()), None)

    group = eventually(running_group, message="the job running in its slot's group")
    slot = next(p for p in psutil.Process(a.proc.pid).children() if "agent.slotmain" in " ".join(p.cmdline()))
    os.kill(slot.pid, signal.SIGKILL)  # it cannot remove its group: its agent does, once the job is killed
    eventually(lambda: not group.exists(), message=f"{group.name} removed")


def test_a_limit_the_job_changed_is_written_again_for_the_next(r, tmp_path, groups):
    """A job (of the agent's user) can write its own group's limit files: the slot reads them
    back when it keeps the group, and the next job asking the same limit gets it written again."""
    assert _run(r, tmp_path, "true", 64 * MB).exit_code == 0
    kept = groups.idle
    assert kept is not None
    raise_own = (f"echo -1 > {kept.path}/memory.memsw.limit_in_bytes 2>/dev/null; "
                 f"echo -1 > {kept.path}/memory.limit_in_bytes")
    assert _run(r, tmp_path, raise_own, 64 * MB).exit_code == 0
    assert groups.idle is not None and groups.idle.path == kept.path  # reused
    assert int((kept.path / "memory.limit_in_bytes").read_text()) > 64 * MB  # the job did raise it
    result = _run(r, tmp_path, "true", 64 * MB)
    assert result.exit_code == 0, result
    assert int((kept.path / "memory.limit_in_bytes").read_text()) == 64 * MB
