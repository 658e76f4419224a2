"""A job's shell forked while its start is recorded, held at its gate (agent/runner.py `hold`):
it runs its command only once released, and never when the start is refused, the job was
stopped before it ran, or the slot that holds it is gone. Real processes; the last test a real
agent and broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agent import runner
from agent.output import OutputSink
from agent.usage import is_zombie
from gridcore import keys
from gridcore.models import JobSpec, JobState


def _ctx(**kw) -> runner.RunContext:
    return runner.RunContext(job_id="j1", node="n", slot=0, kill_grace=1.0, marker_env={},
                             broker_time=time.time, run_id="r1", worker="w", **kw)


def _sink(r, tmp_path) -> OutputSink:
    return OutputSink(r, "j1", "n", time.time(), budget=1 << 20, log_dir=tmp_path, log_cap=1 << 20, ttl=60)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (a dead slot's orphan waits for whoever reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return is_zombie(pid)


def test_a_refused_start_never_runs_the_held_command(tmp_path):
    marker = tmp_path / "ran"
    held = runner.hold({"command": f"touch {marker}"}, _ctx())
    assert held is not None and held.waiting
    time.sleep(0.3)  # the shell is up and waits at its gate
    assert not marker.exists()
    held.abort()
    assert held.proc.returncode is not None and _gone(held.proc.pid)
    time.sleep(0.2)
    assert not marker.exists()


def test_a_released_shell_runs_as_its_attempt_with_its_marker(r, tmp_path):
    out = tmp_path / "env"
    held = runner.hold({"command": f'echo "$GRID_JOB_ATTEMPT $GRID_JOB_RUN $GRID_JOB_ID" > {out}; read x; echo "[$x]"'},
                       _ctx())
    result, outcome = runner.execute({"command": "unused: the held shell runs"}, _ctx(attempt=3), _sink(r, tmp_path),
                                     held)
    assert outcome is None and result.exit_code == 0
    assert out.read_text() == "3 r1 j1\n"
    assert result.stdout == "[]\n"  # stdin past the gate is /dev/null, as every job's


def test_a_job_stopped_before_its_release_never_runs(r, tmp_path):
    marker = tmp_path / "ran"
    held = runner.hold({"command": f"touch {marker}"}, _ctx())
    ctx = _ctx(attempt=1, stop_reason=["canceled"])
    ctx.cancel.set()
    result, outcome = runner.execute({"command": f"touch {marker}"}, ctx, _sink(r, tmp_path), held)
    assert outcome == "canceled" and result.reason_kind == "canceled" and result.exit_code is None
    assert _gone(held.proc.pid)
    time.sleep(0.2)
    assert not marker.exists()


SLOT = textwrap.dedent("""
    import sys, time
    from agent import runner
    ctx = runner.RunContext(job_id="j1", node="n", slot=0, kill_grace=1.0, marker_env={},
                            broker_time=time.time, run_id="r1", worker="w")
    held = runner.hold({"command": "touch " + sys.argv[1]}, ctx)
    print(held.proc.pid, flush=True)
    time.sleep(60)
""")


def test_a_held_shell_whose_slot_dies_never_runs(tmp_path):
    marker = tmp_path / "ran"
    slot = subprocess.Popen([sys.executable, "-c", SLOT, str(marker)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        shell = int(slot.stdout.readline())
        os.kill(slot.pid, signal.SIGKILL)
        slot.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(shell) and time.monotonic() < deadline:  # its gate at end of file: it exits
            time.sleep(0.02)
        assert _gone(shell)
        assert not marker.exists()
    finally:
        if slot.poll() is None:
            slot.kill()
            slot.wait()


@pytest.mark.parametrize("held", [True, False], ids=["shell-command", "argv"])
def test_a_job_whose_cancel_flag_is_up_at_its_start_never_runs_its_command(grid, agents, r, tmp_path, held):
    """The start's script reads the cancel flag in its atomic step; a job started with it up is
    stopped before its command runs, not a moment after (the command here would write a file).
    A shell command's shell is held at its gate; an argv job is not forked at all."""
    marker = tmp_path / "ran"
    script = f"touch {marker}; sleep 30"
    jid = grid.submit(JobSpec(command=script) if held else JobSpec(argv=("/bin/sh", "-c", script)))
    r.set(keys.cancel(jid), "1")  # a cancel that came after the job was queued, as the start sees it
    agents("node-a", slots=1)
    assert grid.wait([jid], timeout=30)[jid] is JobState.CANCELED
    assert grid.get(jid).reason == "canceled"
    time.sleep(0.3)
    assert not marker.exists()
