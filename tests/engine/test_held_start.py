"""A job's shell forked while its start is recorded, held at its gate (agent/runner.py `hold`):
it runs its command only once released, and never when the start is refused, the job was
stopped before it ran, or the slot that holds it is gone. Real processes; the last test a real
agent and broker."""

from __future__ import annotations

import os
import shutil
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
    base = dict(job_id="j1", node="n", slot=0, kill_grace=1.0, marker_env={}, broker_time=time.time, run_id="r1",
                worker="w")
    return runner.RunContext(**{**base, **kw})


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


def _environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def _exec_done(proc: subprocess.Popen) -> None:
    """Wait until the forked child is the shell (its environment is the one it was started with)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{proc.pid}/exe").endswith(("sh", "dash", "bash")):
                return
        except OSError:
            pass
        time.sleep(0.01)


def test_a_held_shell_has_only_its_attempts_markers_until_released(r, tmp_path):
    """Before its start is recorded the held shell has none of the job's own environment (a
    job's LD_PRELOAD would run in it, for a start that may then be refused): the agent's and the
    grid's markers, so that a stale copy is still found by its attempt. Released, the command
    has all of it."""
    out = tmp_path / "out"
    envelope = {"command": f'echo "$SECRET_VALUE $GRID_JOB_ATTEMPT $GRID_JOB_RUN" > {out}',
                "env": {"SECRET_VALUE": "s3cr3t", "LD_PRELOAD": "/nonexistent/x.so"}}
    ctx = _ctx(marker_env={"GRID_JOB_GRID": "g1"})
    held = runner.hold(envelope, ctx)
    assert held is not None
    _exec_done(held.proc)
    env = _environ(held.proc.pid)
    assert "SECRET_VALUE" not in env and "LD_PRELOAD" not in env, env
    assert {k: env.get(k) for k in ("GRID_JOB_GRID", "GRID_JOB_ID", "GRID_JOB_RUN", "GRID_JOB_WORKER")} == \
        {"GRID_JOB_GRID": "g1", "GRID_JOB_ID": "j1", "GRID_JOB_RUN": "r1", "GRID_JOB_WORKER": "w"}
    assert env.get("PATH") == os.environ.get("PATH")  # the agent's own environment, as every job's starts from
    assert b"s3cr3t" not in open(f"/proc/{held.proc.pid}/cmdline", "rb").read()
    result, outcome = runner.execute(envelope, _ctx(attempt=2, marker_env={"GRID_JOB_GRID": "g1"}),
                                     _sink(r, tmp_path), held)
    assert outcome is None and result.exit_code == 0, result
    assert out.read_text() == "s3cr3t 2 r1\n"


_MARK_ON_LOAD = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
/* Loaded into every program of the job's env: it leaves a file behind when it runs. */
__attribute__((constructor)) static void mark(void) {
    const char *path = getenv("MARK_FILE");
    if (path) close(open(path, O_CREAT | O_WRONLY, 0600));
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the preloaded library")
def test_a_refused_start_runs_nothing_of_the_jobs_environment(tmp_path):
    """A job's LD_PRELOAD is code of the job's: held at the gate, refused, none of it runs."""
    src, lib, marker = tmp_path / "mark.c", tmp_path / "mark.so", tmp_path / "loaded"
    src.write_text(_MARK_ON_LOAD)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    # the library works: a program started with it leaves the file
    subprocess.run(["/bin/true"], env={"LD_PRELOAD": str(lib), "MARK_FILE": str(marker)}, check=True)
    assert marker.exists()
    marker.unlink()
    held = runner.hold({"command": "true", "env": {"LD_PRELOAD": str(lib), "MARK_FILE": str(marker)}}, _ctx())
    assert held is not None
    _exec_done(held.proc)
    time.sleep(0.2)
    held.abort()
    assert not marker.exists()


@pytest.mark.parametrize("env", [{"BASH_FUNC_module%%": "() { :; }"}, {"NUL": "a\0b"}], ids=["non-shell-name", "nul"])
def test_an_environment_a_shell_cannot_take_in_is_not_held(env):
    """A name no shell can export (bash's exported functions) would be lost by a sourcing shell,
    a NUL byte refused at the release: such a job is started the ordinary way, after its start."""
    assert runner.hold({"command": "true", "env": env}, _ctx()) is None


def test_the_names_a_shell_sets_itself_are_not_sourced():
    """bash as /bin/sh makes these read-only: an `export UID=...` would end the sourcing shell."""
    lines = runner.env_lines({"UID": "5", "EUID": "5", "SHELLOPTS": "x", "BASHOPTS": "x", "PPID": "1", "KEEP": "1"})
    assert lines == b"export KEEP=1\n"


# ---- the forking thread (agent/runner.py Forker): a shell forked beside the job's admission ----


def _slow_forks(monkeypatch, seconds: float) -> list[int]:
    """Every hold on the forking thread takes `seconds` more before its fork; the shells' pids."""
    pids: list[int] = []
    hold = runner.hold

    def slow(envelope, ctx):
        time.sleep(seconds)
        held = hold(envelope, ctx)
        if held is not None:
            pids.append(held.proc.pid)
        return held

    monkeypatch.setattr(runner, "hold", slow)
    return pids


def test_a_job_the_journal_refuses_while_its_shell_is_forked_never_runs(r, grid, settings, tmp_path, monkeypatch):
    """The journal refuses the job (a replay) while its shell is still being forked on the slot's
    forking thread: the slot waits for that fork and ends the shell at its gate; the command
    never runs, the shell is reaped, the job is refused."""
    from agent.admission import Admission
    from gridcore.signing import Refused
    from tests.engine.test_reconcile import _slot, _take

    marker = tmp_path / "ran"
    jid = grid.submit(JobSpec(command=f"touch {marker}"))
    pids = _slow_forks(monkeypatch, 0.3)

    def refusing(self, *a, **kw):
        raise Refused("replayed: this envelope's start is in the node's journal")

    monkeypatch.setattr(Admission, "admit", refusing)
    slot = _slot(r, settings, "n1")
    slot.perform(*_take(r, slot, "default"))
    assert len(pids) == 1 and _gone(pids[0])
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # reaped: no zombie left behind
    time.sleep(0.2)
    assert not marker.exists()
    assert grid.state(jid) is JobState.FAILED and "replayed" in (grid.get(jid).attempts[-1].get("reason") or "")


def test_a_fast_job_released_at_its_start_keeps_its_output_and_exit_code(r, grid, settings, monkeypatch):
    """A command that ends at once, released before its output sink and meter are made: its
    output and exit code are all there (the pipe holds what it wrote, the exit waits to be
    reaped), and it ran once."""
    from tests.engine.test_reconcile import _slot, _take

    jid = grid.submit(JobSpec(command="printf 'a line\\n'; printf 'to stderr' >&2; exit 3"))
    slot = _slot(r, settings, "n1")
    slot.perform(*_take(r, slot, "default"))
    job = grid.get(jid)
    assert job.state is JobState.FAILED and [a.get("exit_code") for a in job.attempts] == [3]
    chunks = grid.tail(jid)
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"a line\n"
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"to stderr"
