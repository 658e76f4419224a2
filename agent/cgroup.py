"""Per-job memory cgroups: the job's whole tree in one group, an optional memory limit, and a
reliable "the kernel OOM-killed something of this job" signal.

Used where the agent may create cgroups: cgroup v1's memory hierarchy when writable (root,
most containers), or cgroup v2 in a delegated subtree (`grid-agent` under systemd with
`Delegate=yes`: the agent moves itself into a `grid-agent` leaf so its parent can hand the
memory controller to job groups). Elsewhere `JobCgroups.probe()` returns None and the runner
falls back to the node-wide OOM counter in /proc/vmstat.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("grid.cgroup")

AGENT_LEAF = "grid-agent"
"""cgroup v2: the leaf the agent moves itself into, so its parent can delegate `memory`."""
JOBS_DIR = "grid-jobs"
"""Directory (next to the agent's own cgroup) holding one group per running job."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _mounts() -> tuple[Path | None, Path | None, str]:
    """(cgroup v2 mount, v1 memory mount, v1 memory mount root)."""
    v2 = v1 = None
    v1_root = "/"
    for line in (_read(Path("/proc/self/mountinfo")) or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        if rest[0] == "cgroup2" and v2 is None:
            v2 = Path(fields[4])
        elif rest[0] == "cgroup" and "memory" in rest[2].split(","):
            v1, v1_root = Path(fields[4]), fields[3]
    return v2, v1, v1_root


def _own_paths() -> tuple[str | None, str | None]:
    """This process's cgroup path in v2 and in v1's memory hierarchy."""
    v2 = v1 = None
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _under(mount: Path, root: str, path: str) -> Path:
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return mount / rel.lstrip("/")


def adopt_v2() -> bool:
    """cgroup v2, agent start: move into a `grid-agent` leaf and delegate memory to job groups.

    Only when the agent is alone in a writable cgroup with the memory controller (a
    systemd unit with Delegate=yes); never reshuffles a cgroup other processes share.
    """
    mount, _, _ = _mounts()
    own, _ = _own_paths()
    if mount is None or own is None:
        return False
    here = _under(mount, "/", own)
    if here.name == AGENT_LEAF:
        return True
    if "memory" not in (_read(here / "cgroup.controllers") or "").split() or not os.access(here, os.W_OK):
        return False
    procs = (_read(here / "cgroup.procs") or "").split()
    if procs != [str(os.getpid())]:
        return False
    leaf = here / AGENT_LEAF
    try:
        leaf.mkdir(exist_ok=True)
    except OSError:
        return False
    if not _write(leaf / "cgroup.procs", str(os.getpid())):
        return False
    return _write(here / "cgroup.subtree_control", "+memory")


@dataclass
class JobCgroup:
    """One job's group."""

    path: Path
    v2: bool

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    @property
    def enter_file(self) -> Path:
        """Where a process writes "0" to move itself in.

        cgroup v1: the `tasks` file moves only the writing thread, and the kernel then skips
        the global threadgroup lock whose write side waits for an RCU grace period (~10 ms
        here, most of a short job's cost); for a single-threaded process (the runner's `sh`
        shim) that thread is the whole process. v2 has no such file: `cgroup.procs`.
        """
        return self.path / ("cgroup.procs" if self.v2 else "tasks")

    def oom_kills(self) -> int:
        """Processes of this group the kernel OOM killer killed (limit or whole node)."""
        text = _read(self.path / ("memory.events" if self.v2 else "memory.oom_control")) or ""
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return 0

    def peak(self) -> int | None:
        raw = _read(self.path / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes"))
        try:
            return int(raw) if raw else None
        except ValueError:
            return None

    def pids(self) -> list[int]:
        return [int(p) for p in (_read(self.procs_file) or "").split()]

    def remove(self) -> bool:
        try:
            self.path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False


class JobCgroups:
    """Where this slot creates job groups."""

    def __init__(self, base: Path, v2: bool):
        self.base = base
        self.v2 = v2

    @classmethod
    def probe(cls) -> JobCgroups | None:
        v2_mount, v1_mount, v1_root = _mounts()
        own_v2, own_v1 = _own_paths()
        if v1_mount is not None and own_v1 is not None:
            base = _under(v1_mount, v1_root, own_v1) / JOBS_DIR
            if _make(base) and (base / "memory.limit_in_bytes").exists():
                return cls(base, v2=False)
        if v2_mount is not None and own_v2 is not None:
            here = _under(v2_mount, "/", own_v2)
            parent = here.parent
            if here.name == AGENT_LEAF and "memory" in (_read(parent / "cgroup.subtree_control") or "").split():
                base = parent / JOBS_DIR
                if _make(base):
                    _write(base / "cgroup.subtree_control", "+memory")
                    if "memory" in (_read(base / "cgroup.subtree_control") or "").split():
                        return cls(base, v2=True)
        return None

    def create(self, name: str, limit: int | None) -> JobCgroup | None:
        """A fresh group for one job, with `limit` bytes of memory if given; None if it fails."""
        path = self.base / name
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            log.warning("cannot create job cgroup %s: %s", path, e)
            return None
        cg = JobCgroup(path, self.v2)
        if self.v2:
            _write(path / "memory.oom.group", "1")  # an OOM kill takes the whole job, not one child
            # Swap would turn a memory limit into thrashing instead of a clean OOM kill.
            _write(path / "memory.swap.max", "0")
        if limit:
            ok = _write(path / ("memory.max" if self.v2 else "memory.limit_in_bytes"), str(int(limit)))
            if not self.v2:
                _write(path / "memory.memsw.limit_in_bytes", str(int(limit)))
            if not ok:
                log.warning("cannot set a memory limit on %s", path)
                cg.remove()
                return None
        return cg


def _make(path: Path) -> bool:
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def node_oom_kills() -> int | None:
    """The kernel's node-wide count of OOM kills (/proc/vmstat), or None where unreadable."""
    for line in (_read(Path("/proc/vmstat")) or "").splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return None
