"""Finding and killing whole process trees, including processes that left their group.

Every process an agent starts carries marker variables in its environment (inherited by
children unless they scrub it), so a job's tree — and anything an earlier incarnation of
the agent left behind — can be found again after setsid(), double forks or an agent crash.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable

import psutil

from agent import procfs

ENV_GRID = "GRID_JOB_GRID"
"""Identity of the grid (broker) the agent serves: `grid:id`."""
ENV_NODE = "GRID_JOB_NODE"
"""Node name of the agent that started the process."""
ENV_AGENT = "GRID_JOB_AGENT"
"""Incarnation id of the agent that started the process."""
ENV_AGENT_PID = "GRID_JOB_AGENT_PID"
"""Pid of that agent (to tell a live earlier agent from a dead one)."""
ENV_JOB = "GRID_JOB_ID"
"""Job id, set in a job's own environment only."""
ENV_RUN = "GRID_JOB_RUN"
"""Run id of the job's attempt (job environment only): a stale copy of a job is killed by
its attempt, never by the job id, which a fresh rerun on the same node shares."""
ENV_WORKER = "GRID_JOB_WORKER"
"""Name of the slot (its RQ worker) that started the attempt (job environment only)."""


def attempt_marker(job_id: str, run_id: str) -> dict[str, str]:
    """The marker variables of one attempt of a job: what its kill selects by."""
    return {ENV_JOB: job_id, ENV_RUN: run_id}


def tagged(match: dict[str, str], exclude: dict[str, str] | None = None) -> list[psutil.Process]:
    """Processes whose environment has every `match` pair and none of the `exclude` pairs."""
    me = os.getpid()
    out = []
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue  # gone, a zombie, or another user's
        if all(env.get(k) == v for k, v in match.items()) and not any(
            env.get(k) == v for k, v in (exclude or {}).items()
        ):
            out.append(p)
    return out


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def group_alive(pgid: int) -> bool:
    """True if any process is left in the group (cheap: one signal-0)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(True for _ in group_members(pgid))


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def collect(pgid: int | None, root: psutil.Process | None, marker: dict[str, str] | None,
            members: Callable[[], Iterable[int]] | None = None) -> list[psutil.Process]:
    """Everything that belongs to a tree: group members, descendants, marked processes, and
    the pids `members` lists (the job's cgroup, which nothing can leave)."""
    found: dict[int, psutil.Process] = {}
    if members is not None:
        for pid in members():
            try:
                found[pid] = psutil.Process(pid)
            except psutil.Error:
                continue
    if pgid is not None:
        for p in group_members(pgid):
            found[p.pid] = p
    if root is not None:
        try:
            found.setdefault(root.pid, root)
            for c in root.children(recursive=True):
                found.setdefault(c.pid, c)
        except psutil.Error:
            pass
    if marker:
        for p in tagged(marker):
            found.setdefault(p.pid, p)
    return list(found.values())


def kill_tree(
    pgid: int | None,
    root: psutil.Process | None = None,
    marker: dict[str, str] | None = None,
    grace: float = 3.0,
    reap=None,
    members: Callable[[], Iterable[int]] | None = None,
) -> tuple[int, list[int]]:
    """TERM the tree, wait `grace`, KILL what is left, rescan; return (signaled, survivors).

    `reap` is called while waiting so the caller can collect its own child (else it stays
    a zombie and looks alive). Before KILL the tree is stopped, so a process that keeps
    forking cannot add children between a scan and the kill.
    """
    procs = collect(pgid, root, marker, members)
    signaled = len(procs)
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap:
            reap()
        procs = _alive(procs)
        if not procs and (pgid is None or not group_alive(pgid)):
            break
        time.sleep(0.02)
    for _ in range(8):
        if reap:
            reap()
        procs = _alive(collect(pgid, None, marker, members) + procs)
        if not procs:
            return signaled, []
        signaled += len(procs)
        _signal_all(procs, signal.SIGSTOP)
        procs = _alive(collect(pgid, None, marker, members) + procs)  # children forked before the stop
        _signal_all(procs, signal.SIGSTOP)
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _signal_all(procs, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=1.0)
    if reap:
        reap()
    return signaled, [p.pid for p in _alive(collect(pgid, None, marker, members) + procs)]


def own_children() -> set[int]:
    """Pids of this process's children (zombies included), from /proc: cheap, a few reads."""
    me = os.getpid()
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{me}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            out.update(int(p) for p in procfs.read(f"/proc/{me}/task/{tid}/children").split())
        except FileNotFoundError:
            continue  # the thread has exited
        except OSError:  # no /proc/<pid>/task/<tid>/children on this kernel: ask psutil
            return {c.pid for c in psutil.Process(me).children()}
    return out


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those of `pids` that are this process's exited children."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
