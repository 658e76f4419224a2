"""The job runner: one shell command in its own session, its output handed to the attempt's
sink (agent/output.py), cancel and timeout enforced, the whole process tree killed at the end.

`run_task` is the RQ job function name every grid job carries; only a grid-agent slot runs
it (through `execute`, with a verified envelope and a RunContext), never a plain RQ worker.
The loop that reads the job's pipes never talks to the broker (agent/output.py's BrokerLink
does), so a broker outage of any length neither stalls nor fails the job.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from agent import cgroup, metrics, proctree
from agent.output import FLUSH_INTERVAL, BrokerLink, OutputSink
from gridcore.records import Result

log = logging.getLogger("grid.runner")

READ_SIZE = 64 * 1024
CGROUP_SHIM = '{ echo 0 > "$0"; } 2>&0 || exit 1; . /proc/self/fd/0; exec "$@" </dev/null'
"""`sh -c` script that moves itself into the job's cgroup (`$0`: JobCgroup.enter_file), then
becomes the job. It starts with `shim_env`, not the job's environment: its stdin is the job's
part of it (`job_part`, as `env_file`), which it sources only once moved, and a failed move's report is
written there after it (dash takes only descriptors 0-9 in a redirection; the job gets
/dev/null as every job does): a failed move is not run, since unconfined it would run past the
memory limit its node promises."""
REPORT_MAX = 4096
"""Bytes of a failed move's report the runner reads."""
CGROUP_ENTER = '{{ echo 0 > {file}; }} 2>&0 || exit 1\n. /proc/self/fd/0; exec </dev/null\n'
"""The first lines of a shell command's `sh -c` script that moves the shell itself into the job's
cgroup before the command runs, as the shim does (its environment from stdin, then /dev/null)."""
def shim_env(ctx: RunContext) -> dict[str, str]:
    """The environment a shell starts with before it has the job's (the cgroup shim, a held
    shell): the agent's own (the operator's, as every job's starts from it) and the attempt's
    marker variables, so that the shell is found by its attempt as every process of the job is
    (agent/proctree.py). The job's own variables (its envelope's, the grid's for it) come
    later, sourced (`job_part`): read by the shell and its loader at its start (LD_PRELOAD,
    ENV...) they would be code of the job's, run unconfined before the move, or for a start
    that is then refused (a replayed envelope, a cancel), and could write a failed move's report
    and so have the attempt handed back as the node's fault, uncounted, the node drained."""
    env = _agent_env()
    env.update(ctx.marker_env)
    env.update(proctree.attempt_marker(ctx.job_id, ctx.run_id))
    env[proctree.ENV_WORKER] = ctx.worker
    return env


def job_part(env: dict[str, str], start: dict[str, str]) -> dict[str, str]:
    """What of the job's environment `env` a shell started with `start` must still be given:
    the variables it lacks or has otherwise (a job's env adds and overrides, never removes)."""
    return {k: v for k, v in env.items() if start.get(k) != v}


SHELL_SETS = frozenset({"PWD", "IFS", "OPTIND", "PPID", "UID", "EUID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO"})
"""Variables the shell sets itself as it starts, whatever its environment says (the last five:
bash's, read-only where /bin/sh is bash: exporting one would fail the sourcing, and the job)."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
GATE_OPEN = "GRID_GATE_OPEN"
"""The shell variable (not exported) the gate's last line sets: the shell runs the command only
once it has read all of what the slot writes at the release."""
GATE = f'. /proc/self/fd/0 || exit 1\n[ "${{{GATE_OPEN}-}}" = 1 ] || exit 1\nunset {GATE_OPEN}\nexec </dev/null\n'
"""The first lines of a held shell command's `sh -c` script (`hold`). The shell starts with
`shim_env`, and waits on its stdin, the gate pipe, for the job's part of its environment (`job_part`: its attempt's number
in it), which the slot writes only once the start is recorded, then closes. Nothing of the job's
(its LD_PRELOAD, its commands) runs before that: a start refused (a replayed envelope, a cancel,
no room) or a slot gone closes the gate with nothing written, and the shell exits. Then stdin is
/dev/null, as every job's is."""
REASON_MAX = 4096
"""Characters of a reason a result keeps (a program name in one may be long)."""
SURVIVORS_MAX = 1024
"""Pids of processes that outlived a kill a result lists."""


def run_task(signed: Any) -> None:
    """RQ's view of the job function; refuses to run outside a grid-agent slot."""
    raise RuntimeError("grid jobs run only in a grid-agent slot, which verifies them first")


@dataclass
class RunContext:
    """What a slot gives the runner for one job."""

    job_id: str
    node: str
    slot: int
    kill_grace: float
    marker_env: dict[str, str]
    broker_time: Callable[[], float]  # must not raise while the broker is away (see outage.OutageClock)
    heartbeat: Callable[[], str | None] = lambda: None  # returns a reason to stop, or None
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: list[str] = field(default_factory=list)  # why `cancel` was set: canceled/shutdown/fenced
    extra_env: dict[str, str] = field(default_factory=dict)
    cgroup_tag: str = ""  # makes the job's cgroup name unique per agent incarnation
    attempt: int = 1  # which attempt of its envelope this is (1 for the first)
    run_id: str = ""  # the attempt's run id: its processes are killed by it (agent/proctree.py)
    worker: str = ""  # the slot's RQ worker name
    children_before: set[int] | None = None  # the slot's children just before the job (read here if None)
    # Set by the runner: the slot's children after the job, when nothing of the job was left to
    # kill or reap; the meter (agent/usage.py) then need not look again.
    children_after: set[int] | None = None


_cgroups: cgroup.JobCgroups | None = None
_cgroups_probed = False


def job_cgroups() -> cgroup.JobCgroups | None:
    """This slot's job cgroups, probed once per process."""
    global _cgroups, _cgroups_probed
    if not _cgroups_probed:
        _cgroups_probed = True
        _cgroups = cgroup.JobCgroups.probe()
        if _cgroups is None:
            log.info("no job cgroups here: OOM kills are told from the node-wide OOM counter")
    return _cgroups


def close_cgroups() -> None:
    """The slot is stopping: remove the job cgroup it kept for its next job."""
    if _cgroups is not None:
        _cgroups.close()


_base_env: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def _agent_env() -> dict[str, str]:
    """The agent's environment less GRID_*, a copy. Filtered again only when the environment
    changed (compared as os.environ's raw dict, in C): decoding every variable at each job cost
    a trivial job more than its Popen's environment block."""
    global _base_env
    raw = getattr(os.environ, "_data", None)
    if raw is None or _base_env is None or _base_env[0] != raw:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRID_")}
        if raw is None:
            return env
        _base_env = (dict(raw), env)
    return dict(_base_env[1])


def build_env(envelope: dict[str, Any], ctx: RunContext) -> dict[str, str]:
    """The job's environment: the agent's (less GRID_*), the envelope's, then the grid's own
    variables (documented in agent/deploy/README.md, "What a job gets")."""
    env = _agent_env()
    env.update({str(k): str(v) for k, v in (envelope.get("env") or {}).items()})
    env.update(ctx.extra_env)
    env.update(ctx.marker_env)
    env.update(proctree.attempt_marker(ctx.job_id, ctx.run_id))
    env[proctree.ENV_WORKER] = ctx.worker
    env.update(GRID_JOB_SLOT=str(ctx.slot), GRID_JOB_ATTEMPT=str(ctx.attempt))
    return env


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux >= 5.3), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def describe_signal(sig: int) -> str:
    try:
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    except ValueError:
        return f"killed by signal {sig}"


def _check_program(argv0: str, cwd: str | None, env: dict[str, str]) -> None:
    """Fail like exec would, before the cgroup shim hides the error behind `sh`."""
    if cwd and not os.path.isdir(cwd):
        return  # Popen reports the cwd itself
    if "/" in argv0:
        path = os.path.join(cwd or os.getcwd(), argv0)
    else:
        path = shutil.which(argv0, mode=os.F_OK, path=env.get("PATH", os.defpath))
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), argv0)


def _memory_limit(envelope: dict[str, Any]) -> int | None:
    try:
        mem = int((envelope.get("resources") or {}).get("memory") or 0)
    except (TypeError, ValueError):
        return None
    return mem if mem > 0 else None


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _entering(argv: list[str], envelope: dict[str, Any], enter_file: str) -> list[str]:
    """`argv` started in the job's cgroup: the process moves itself in before the job's own
    code runs. A shell command (`sh -c COMMAND`, what most jobs are) does so in its own shell,
    by first lines before the command (CGROUP_ENTER): one exec less than the shim (~0.7 ms of
    CPU a memory job, next to ~1 ms for a trivial one). The command's text, `$0` and `$@` are
    as signed; only `$LINENO` counts the lines before it."""
    if not envelope.get("argv"):
        return ["/bin/sh", "-c", CGROUP_ENTER.format(file=shlex.quote(enter_file)) + argv[2]]
    return ["/bin/sh", "-c", CGROUP_SHIM, enter_file, *argv]


def env_lines(env: dict[str, str]) -> bytes:
    """`env` as the `export` lines a shell sources (the cgroup shim's environment file, a held
    shell's gate). Only names a shell can export are written, as a shell would pass on (dash
    drops the others from its environment too); the gate's own variable never comes from a job."""
    lines = []
    for k, v in env.items():
        if "\0" in k or "\0" in v:
            raise ValueError("embedded null byte")  # as Popen says of an environment
        if k not in SHELL_SETS and k != GATE_OPEN and _NAME.fullmatch(k):
            lines.append(f"export {k}={shlex.quote(v)}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def env_file(env: dict[str, str]) -> int:
    """A memory file (its descriptor, at its end) of `export` lines the shim sources once moved:
    the job's environment reaches its command without being in the shim's own environment, nor
    in any argv (/proc/PID/cmdline is world-readable)."""
    data = env_lines(env)
    fd = os.memfd_create("grid-job-env", os.MFD_CLOEXEC)
    try:
        while data:
            data = data[os.write(fd, data):]
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Held:
    """A job's shell, forked while its start is being admitted and recorded, held at the gate
    (GATE) until `release` or `execute` lets it run: the fork and the shell's own start-up run
    beside the slot's admission and the start's script (`Forker`), off the job's path.
    `before`: the slot's children before it."""

    proc: subprocess.Popen
    gate: int  # write end of the shell's stdin
    before: set[int]
    env: bytes  # the job's part of its environment as `env_lines`, all but its attempt's number

    def release(self, attempt: int) -> None:
        """Let the command run, as attempt `attempt` of its envelope."""
        data = self.env + env_lines({"GRID_JOB_ATTEMPT": str(attempt)}) + f"{GATE_OPEN}=1\n".encode()
        try:
            while data:  # more than a pipe holds: the shell reads as it is written
                data = data[os.write(self.gate, data):]
        except OSError:
            pass  # the shell is gone already (killed from outside): its exit is the job's
        finally:
            self._close_gate()

    @property
    def waiting(self) -> bool:
        """Neither released nor ended yet."""
        return self.gate >= 0

    def abort(self) -> None:
        """The start was refused (or not sent): the shell ends without running the command."""
        if self.waiting:
            self.kill()

    def kill(self) -> None:
        """End the shell and its session, released or not, and reap it."""
        self._close_gate()  # end of file at the gate: an unreleased shell exits, even if the kill failed
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None and not f.closed:
                f.close()

    def _close_gate(self) -> None:
        if self.gate >= 0:
            os.close(self.gate)
            self.gate = -1


def holdable(envelope: dict[str, Any]) -> bool:
    """Whether a job's command can be forked before its start is recorded (`hold`): a shell
    command with no memory limit (a limited one enters its cgroup first; an argv job would need
    a shim's exec more, about as much as it saves)."""
    return not envelope.get("argv") and isinstance(envelope.get("command"), str) and not _memory_limit(envelope)


def hold(envelope: dict[str, Any], ctx: RunContext) -> Held | None:
    """Fork a `holdable` job's shell, held at its gate; None if it is not forked (the ordinary
    start then runs it, or reports why it cannot, after the start is recorded): an environment
    a shell cannot take in whole (a name no shell can export, such as bash's exported functions,
    reaches a command only through exec's environment; a NUL byte), a bad cwd, no descriptors.
    It never raises: it runs on the slot's forking thread (`Forker`), while the slot admits and
    starts the job."""
    gate_r = gate_w = -1
    try:
        start = shim_env(ctx)
        env = build_env(envelope, ctx)
        env.pop("GRID_JOB_ATTEMPT", None)  # not known before the start: the gate gives it
        part = job_part(env, start)
        if any(not _NAME.fullmatch(k) for k in part):
            return None
        lines = env_lines(part)  # here, not at the release: a value it refuses is the ordinary start's to report
        before = proctree.own_children()
        gate_r, gate_w = os.pipe()
        proc = subprocess.Popen(["/bin/sh", "-c", GATE + envelope["command"]], cwd=envelope.get("cwd") or None,
                                env=start, stdin=gate_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
    except Exception:  # noqa: BLE001 - a bad cwd, a NUL byte, no descriptors: reported by the ordinary start
        if gate_w >= 0:
            os.close(gate_w)
        return None
    finally:
        if gate_r >= 0:
            os.close(gate_r)
    return Held(proc, gate_w, before, lines)


def release(held: Held, ctx: RunContext) -> tuple[float, float] | None:
    """Let a held shell run its command now, as attempt `ctx.attempt`: (its start by the broker's
    clock, and by the monotonic one), for `execute`; None, the gate left shut, if the job was
    stopped before it ran (`execute` ends it unreleased). A slot calls this as soon as the start
    is recorded, and makes what only the running job needs (its output sink, its meter) while
    the shell runs the command: not before, on the job's way."""
    if ctx.cancel.is_set():
        return None
    start = ctx.broker_time()
    t0 = time.monotonic()
    held.release(ctx.attempt)
    return start, t0


class Forking:
    """A `hold` under way on the slot's forking thread."""

    def __init__(self, envelope: dict[str, Any], ctx: RunContext):
        self.envelope, self.ctx = envelope, ctx
        self._held: Held | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            self._held = hold(self.envelope, self.ctx)
        finally:
            self._done.set()

    def result(self) -> Held | None:
        """The held shell (None: not forked, the ordinary start runs the job), once forked."""
        self._done.wait()
        return self._held


class Forker:
    """The slot's one thread that forks held shells (`hold`), started with its first. The
    kernel's fork and exec of the shell are most of a hold, and Python releases the GIL for
    them: on a thread of their own they run beside the slot's admission and start of the job
    (its journal, the start's script built and sent) instead of after them, on its way."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._todo: list[Forking] = []
        self._thread: threading.Thread | None = None

    def hold(self, envelope: dict[str, Any], ctx: RunContext) -> Forking:
        """Fork the job's shell held at its gate, on the forking thread; its `result` is the Held."""
        forking = Forking(envelope, ctx)
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="held-shell-forker", daemon=True)
                self._thread.start()
            self._todo.append(forking)
            self._cv.notify()
        return forking

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._todo:
                    self._cv.wait()
                forking = self._todo.pop(0)
            forking.run()


def execute(envelope: dict[str, Any], ctx: RunContext, sink: OutputSink,
            held: Held | None = None, released: tuple[float, float] | None = None) -> tuple[Result, str | None]:
    """Run the envelope's command to completion (or cancel/timeout), its output into `sink`;
    `held`: its shell, forked by `hold`, released here (or ended unreleased if the job was
    stopped before it ran), or before by `release`, which gave `released`.

    Returns the result record and why the job was stopped when that is not a job failure
    (canceled, shutdown, fenced), else None.
    """
    if held is not None and released is not None:
        start, t0 = released
        record: dict[str, Any] = {"node": ctx.node, "slot": ctx.slot, "start": start}
        return _watch(envelope, ctx, sink, held.proc, None, None, None, held.before, record, start, t0)
    argv = envelope.get("argv") or ["/bin/sh", "-c", envelope["command"]]
    cwd = envelope.get("cwd") or None
    limit = _memory_limit(envelope)
    start = ctx.broker_time()
    t0 = time.monotonic()
    record = {"node": ctx.node, "slot": ctx.slot, "start": start}
    if ctx.cancel.is_set():
        # Stopped before its command ran (canceled at its start, shutdown): it never runs, not
        # even for the moment a kill takes to land.
        if held is not None:
            held.abort()
        stopped = ctx.stop_reason[0] if ctx.stop_reason else "canceled"
        end = ctx.broker_time()
        record.update(exit_code=None, signal=None, reason=stopped, end=end,
                      reason_kind="canceled" if stopped == "canceled" else None,
                      duration=max(0.0, round(end - start, 6)))
        return _finish(record, sink, ctx, stopped)
    if held is not None:
        held.release(ctx.attempt)
        return _watch(envelope, ctx, sink, held.proc, None, None, None, held.before, record, start, t0)
    env = build_env(envelope, ctx)
    # A group costs a job about a millisecond (the shim's exec, the group's files; see
    # bench/cgroup_steps.py), a lot next to a short job: only a job with a memory limit gets one.
    cgroups = job_cgroups() if limit else None
    cg = cgroups.acquire(ctx.job_id, ctx.cgroup_tag or str(os.getpid()), limit) if cgroups else None
    if cgroups is not None and cg is None:  # a node that makes memory cgroups runs no limited job outside one
        return _not_run(record, sink, ctx, start, f"no memory cgroup for its {_mib(limit)} limit: {cgroups.why}")
    # This slot is the subreaper of what its jobs start (agent/usage.py): a child that
    # escaped the job's session becomes a child of ours, one we did not have before.
    before = ctx.children_before if ctx.children_before is not None else proctree.own_children()
    report: int | None = None  # the shim's environment file, where it reports a failed move into the group
    report_at = 0  # where the report starts in it: after the environment
    charged: int | None = None
    try:
        if cg is not None:
            _check_program(argv[0], cwd, env)
            start_env = shim_env(ctx)
            report = env_file(job_part(env, start_env))
            report_at = os.lseek(report, 0, os.SEEK_CUR)
            charged = cg.peak()  # what the group held before the job: a member's pages raise it
            proc = subprocess.Popen(
                _entering(argv, envelope, str(cg.enter_file)),
                cwd=cwd, env=start_env, stdin=report, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True,
            )
        else:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    except BaseException as e:
        # Whatever failed, nothing started: the environment file and the group go back now,
        # or each such job would keep a descriptor and a group for the agent's life.
        if report is not None:
            os.close(report)
        if cg is not None:
            cgroups.release(cg)
        if not isinstance(e, (OSError, ValueError)):
            raise
        end = ctx.broker_time()
        if isinstance(e, ValueError):  # a NUL byte in the command, an argument, the environment or cwd
            msg = f"cannot start {argv[0]!r}: {e} in its command, arguments, environment or working directory"
        elif cwd and (e.filename == cwd or not os.path.isdir(cwd)):
            msg = f"cannot use the working directory {cwd!r} on {ctx.node}: {e.strerror or e}"
        else:
            msg = f"cannot start {argv[0]!r}: {e.strerror or e}"
        sink.add("e", (msg + "\n").encode())
        record.update(exit_code=127, signal=None, reason=msg, reason_kind="exit", end=end,
                      duration=max(0.0, round(end - start, 6)))
        return _finish(record, sink, ctx, None)
    return _watch(envelope, ctx, sink, proc, cg, cgroups,
                  (report, report_at, charged) if report is not None else None, before, record, start, t0)


def _watch(envelope: dict[str, Any], ctx: RunContext, sink: OutputSink, proc: subprocess.Popen,
           cg: cgroup.JobCgroup | None, cgroups: cgroup.JobCgroups | None,
           report: tuple[int, int, int | None] | None, before: set[int], record: dict[str, Any], start: float,
           t0: float) -> tuple[Result, str | None]:
    """The running job, from its start to its result: its output, cancel and timeout, its end.
    `report`: the cgroup shim's environment file, where a failed move's report starts in it, and
    the group's memory peak before the job."""
    timeout = envelope.get("timeout")
    limit = _memory_limit(envelope)
    log.info("started: pid %d, slot %d, attempt %d", proc.pid, ctx.slot, ctx.attempt, extra={"job": ctx.job_id})
    # Most jobs in a big sweep end within milliseconds; their output goes out with the end
    # record. The flusher thread costs a few ms to start and join, so it starts only once a
    # job has run for a flush interval or has output to send early.
    # The node's OOM-kill count, to tell an OOM kill of a job without a cgroup: read once the
    # process runs (a /proc read is not worth delaying its start for).
    node_ooms = cgroup.node_oom_kills() if cg is None else None
    link = BrokerLink(ctx.job_id, sink, ctx.heartbeat, ctx.cancel, ctx.stop_reason)
    members = cg.pids if cg is not None else None
    killed_for: str | None = None
    kill_info: tuple[int, list[int]] | None = None
    sel = selectors.DefaultSelector()
    for f, name in ((proc.stdout, "o"), (proc.stderr, "e")):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ, name)
    open_fds = 2
    # The pipes close a moment before the process can be reaped; a pidfd wakes the loop at
    # the exit itself instead of a polling sleep (most jobs of a big sweep end right here).
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, "x")
    exited_at: float | None = None
    try:
        while True:
            if open_fds or pidfd is not None:
                for key, _ in sel.select(timeout=FLUSH_INTERVAL / 2):
                    if key.data == "x":  # exited: readable from now on, so stop watching it
                        sel.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
                        continue
                    try:
                        data = os.read(key.fileobj.fileno(), READ_SIZE)
                    except BlockingIOError:
                        continue
                    if data:
                        sink.add(key.data, data)
                    else:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        open_fds -= 1
                if sink.urgent():
                    link.start_once()
                    link.wake.set()
            else:
                time.sleep(0.01)
            now = time.monotonic()
            if now - t0 >= FLUSH_INTERVAL:
                link.start_once()
            if proc.poll() is not None:
                if not open_fds:
                    break
                # The main process is gone but something still holds the pipes: give it a moment.
                exited_at = exited_at or now
                if now - exited_at > 0.5:
                    break
            if killed_for is None:
                if ctx.cancel.is_set():
                    killed_for = ctx.stop_reason[0] if ctx.stop_reason else "canceled"
                elif timeout and now - t0 > timeout:
                    killed_for = "timeout"
                if killed_for:
                    link.start_once()
                    link.wake.set()
                    kill_info = proctree.kill_tree(
                        proc.pid, psutil.Process(proc.pid) if proc.poll() is None else None,
                        proctree.attempt_marker(ctx.job_id, ctx.run_id), ctx.kill_grace, reap=proc.poll,
                        members=members,
                    )
    finally:
        link.stop()
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        for f in (proc.stdout, proc.stderr):
            if not f.closed:
                f.close()
    rc = proc.wait()
    not_moved = _moved_report(*report[:2]) if report is not None else ""
    if not_moved and not _never_charged(cg, report[2]):
        # Pages were charged to the group, so something of the job ran in it: the report is not
        # the shim's (the channel is the slot's, open to the agent's user through /proc). The
        # job's own result stands; a false report must not hand its attempt back uncounted as
        # the node's fault, nor drain the node.
        log.warning("job %s: a failed move into %s was reported, but the job ran in it: ignored (%s)",
                    ctx.job_id, cg.path, not_moved, extra={"job": ctx.job_id})
        not_moved = ""
    # Leftovers of a finished job (background children, escaped or not) are part of the job:
    # end them too, whatever way it ended.
    after = proctree.own_children()
    escaped = after - before - {proc.pid}
    if kill_info is None and (escaped or proctree.group_alive(proc.pid) or (cg is not None and cg.pids())):
        kill_info = proctree.kill_tree(proc.pid, None, proctree.attempt_marker(ctx.job_id, ctx.run_id),
                                       ctx.kill_grace, members=members, reap=lambda: proctree.reap(escaped))
    if escaped:  # reparented to this slot: collect the exit of every one, killed or not
        proctree.reap(proctree.own_children() - before)
    elif kill_info is None:
        ctx.children_after = after
    oom_kills = 0
    if not_moved:
        cgroups.release(cg)  # the shim exited before the job ran: nothing of it in the group
        return _not_run(record, sink, ctx, start, f"cannot move the job into its memory cgroup {cg.path}: {not_moved}")
    if cg is not None:
        oom_kills = cg.oom_kills()
        peak = cg.peak()
        if peak:
            record["memory_peak"] = peak
        if not cgroups.release(cg):
            log.warning("job %s: cgroup %s not removed (processes left?)", ctx.job_id, cg.path)
    elif node_ooms is not None and (rc == -signal.SIGKILL or rc == 128 + signal.SIGKILL) and not killed_for:
        # No cgroup of our own: a SIGKILL we did not send while the node's OOM counter moved.
        oom_kills = max(0, (cgroup.node_oom_kills() or 0) - node_ooms)
    end = ctx.broker_time()
    record.update(end=end, duration=max(0.0, round(end - start, 6)))  # a re-anchored clock may step back
    if rc < 0:
        record.update(exit_code=None, signal=-rc)
    else:
        record.update(exit_code=rc, signal=None)
    if kill_info is not None:
        record["killed_processes"] = kill_info[0]
        record["survivors"] = kill_info[1][:SURVIVORS_MAX]
    if oom_kills:
        record["oom_kills"] = oom_kills
    failed = rc != 0
    if killed_for == "timeout":
        record.update(reason=f"timeout after {timeout:g}s", reason_kind="timeout")
    elif killed_for:
        record.update(reason=killed_for, reason_kind="canceled" if killed_for == "canceled" else None)
    elif failed and oom_kills:
        where = f"the job's {_mib(limit)} memory limit" if (limit and cg is not None) else "node out of memory"
        record.update(reason=f"out of memory: killed by the kernel OOM killer ({where})", reason_kind="oom")
    elif rc < 0:
        record.update(reason=describe_signal(-rc), reason_kind="signal")
    elif rc != 0:
        record.update(reason=f"exit code {rc}", reason_kind="exit")
    else:
        record.update(reason=None, reason_kind=None)
    # canceled / shutdown / fenced: not a job failure
    return _finish(record, sink, ctx, killed_for if killed_for and killed_for != "timeout" else None)


def _never_charged(cg: cgroup.JobCgroup, before: int | None) -> bool:
    """Whether nothing was charged to `cg` since its memory peak was `before`: no process ever
    ran in it (a member's first page raises the peak; a failed move leaves it as it was).
    Unknown peaks count as never charged, as the shim's report then says all there is."""
    after = cg.peak()
    return before is None or after is None or after <= before


def _moved_report(fd: int, at: int) -> str:
    """What the cgroup shim reported in its environment file `fd` from offset `at` (closed
    here): '' when the job was moved into its group, else why not (the error's last part:
    "Is a directory", "I/O error")."""
    try:
        raw = os.pread(fd, REPORT_MAX, at)
    finally:
        os.close(fd)
    text = raw.decode("utf-8", "replace").strip()
    return text.rpartition(": ")[2] or text


NODE_FAULT = "node_fault"
"""The outcome of a job this node could not run through no fault of the job's (its memory
cgroup could not be made, or the job not moved into it): the attempt is handed back, counting
against none of the job's retries, and the node drains itself (agent/attempt.py)."""


def _not_run(record: dict[str, Any], sink: OutputSink, ctx: RunContext, start: float,
             why: str) -> tuple[Result, str | None]:
    """The job's command did not run: a node's failure (`why`), not the job's exit."""
    end = ctx.broker_time()
    msg = f"not run: {why}"
    log.error("job %s: %s", ctx.job_id, msg)
    sink.add("e", (msg + "\n").encode())
    record.update(exit_code=None, signal=None, reason=msg, reason_kind="error", end=end,
                  duration=max(0.0, round(end - start, 6)))
    return _finish(record, sink, ctx, NODE_FAULT)


def _finish(record: dict[str, Any], sink: OutputSink, ctx: RunContext, outcome: str | None) -> tuple[Result, str | None]:
    sink.close()
    log.info("ended: %s after %.3fs, %d bytes of output", record.get("reason") or "exit code 0",
             record.get("duration") or 0.0, sink.counts["o"] + sink.counts["e"], extra={"job": ctx.job_id})
    record.update(
        stdout=sink.tail_text("o"),
        stderr=sink.tail_text("e"),
        stdout_bytes=sink.counts["o"],
        stderr_bytes=sink.counts["e"],
        dropped_bytes=sink.dropped,
        log_path=str(sink.log_path) if sink.log is not None else None,
        log_truncated=sink.log_truncated,
    )
    if record.get("reason"):
        record["reason"] = record["reason"][:REASON_MAX]
    metrics.job_ended(record, outcome)
    return Result(**record), outcome
