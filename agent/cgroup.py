"""Per-job memory cgroups: the job's whole tree in one group, an optional memory limit, and a
reliable "the kernel OOM-killed something of this job" signal.

Used where the agent may create cgroups: cgroup v1's memory hierarchy when writable (root,
most containers), or cgroup v2 in a delegated subtree (`grid-agent` under systemd with
`Delegate=yes`: the agent moves itself into a `grid-agent` leaf so its parent can hand the
memory controller to job groups). Elsewhere `JobCgroups.probe()` returns None and the runner
falls back to the node-wide OOM counter in /proc/vmstat.

On v1 a slot runs its jobs, one at a time, in one group it keeps (`JobCgroups.acquire` /
`release`): a job's OOM kills are counted from the group's count at its start, its peak
restarted at its start; a group that still holds a process or more than RESIDUE_MAX of
charges is not reused. On v2 (whose peak cannot simply be restarted) each job gets a fresh group.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent import procfs, slotnames

log = logging.getLogger("grid.cgroup")

AGENT_LEAF = "grid-agent"
"""cgroup v2: the leaf the agent moves itself into, so its parent can delegate `memory`."""
JOBS_DIR = "grid-jobs"
"""Directory (next to the agent's own cgroup) holding one group per running job."""


def _read(path: Path) -> str | None:
    # Raw, like /proc reads (agent/procfs.py): a memory job's slot reads and writes some ten
    # cgroup files per job, and `Path.read_text`'s text wrapper cost more than the kernel's work.
    try:
        return procfs.read(str(path)).decode(errors="replace")
    except OSError:
        return None


def _write(path: Path, value: str) -> bool:
    # A cgroup file takes a value in one write, and tells a refused one there (EINVAL, EBUSY):
    # no text wrapper. Opened as `Path.write_text` opens it (a cgroup directory refuses a new file).
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError:
        return False
    try:
        os.write(fd, value.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


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


RESIDUE_MAX = 2 << 20
"""Bytes a v1 group may stay charged with between two jobs (the kernel's per-CPU charge
batches, some cache): more is reclaimed, or the group replaced, before it is reused, since the
next job's peak starts from it."""


@dataclass
class JobCgroup:
    """One job's group (on cgroup v1, the slot's group, reused by its jobs one at a time)."""

    path: Path
    v2: bool
    oom_base: int = 0  # the group's OOM kills before this job (a reused group counts on)
    limit: int | None | bool = False  # the limit this object last set (None: unlimited; False: none set)
    limit_read: str | None = None  # the group's limit files as read right after that write

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
        """Processes of this job the kernel OOM killer killed (limit or whole node)."""
        return max(0, self._oom_total() - self.oom_base)

    def _oom_total(self) -> int:
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

    def usage(self) -> int | None:
        raw = _read(self.path / ("memory.current" if self.v2 else "memory.usage_in_bytes"))
        try:
            return int(raw) if raw else None
        except ValueError:
            return None

    def remove(self) -> bool:
        try:
            self.path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def set_limit(self, limit: int | None) -> bool:
        """Memory (and memory+swap, where counted) limited to `limit` bytes, or unlimited.

        A reused group (v1) that has this limit already is left as it is (a sweep's cells ask the
        same one, three writes each), if its files still say what they said after that write:
        the job, of the agent's user, could have written them (`recycle` reads them again)."""
        limit = int(limit) if limit else None
        if self.limit is not False and self.limit == limit:
            return True
        self.limit = False  # unknown until a write is told to have taken
        if self.v2:
            ok = _write(self.path / "memory.max", str(limit) if limit else "max")
        else:
            value = str(limit) if limit else "-1"
            # v1 keeps memory <= memory+swap at every step: lift the latter, set both.
            _write(self.path / "memory.memsw.limit_in_bytes", "-1")
            ok = _write(self.path / "memory.limit_in_bytes", value)
            memsw = self.path / "memory.memsw.limit_in_bytes"  # absent without swap accounting
            if not _write(memsw, value) and memsw.exists():
                return ok  # set, but not both: not kept as this limit, the next job writes again
        if ok:
            self.limit, self.limit_read = limit, self._limit_files()
        return ok

    def _limit_files(self) -> str | None:
        if self.v2:
            return _read(self.path / "memory.max")
        return f"{_read(self.path / 'memory.limit_in_bytes')}/{_read(self.path / 'memory.memsw.limit_in_bytes')}"

    def recycle(self) -> bool:
        """v1, after a job: make the group fit for the next one, or say it is not (then remove it).

        Fit: empty (kill by attempt left nothing), charged with no more than RESIDUE_MAX, its
        peak restarted from there and its OOM count taken as the next job's zero.
        """
        if self.v2 or self.pids():
            return False
        used = self.usage()
        if used is None:
            return False
        if used > RESIDUE_MAX:
            _write(self.path / "memory.force_empty", "0")  # reclaims the cache the last job left
            used = self.usage()
            if used is None or used > RESIDUE_MAX:
                return False
        if not _write(self.path / "memory.max_usage_in_bytes", "0"):
            return False
        _write(self.path / "memory.memsw.max_usage_in_bytes", "0")
        self.oom_base = self._oom_total()
        if self.limit is not False and self._limit_files() != self.limit_read:
            self.limit = False  # changed since this slot set it (by the job): written again
        return True


class JobCgroups:
    """Where this slot creates job groups."""

    def __init__(self, base: Path, v2: bool):
        self.base = base
        self.v2 = v2
        self.idle: JobCgroup | None = None  # v1: the group the slot's last job left fit for reuse
        self.made = 0  # groups this slot made (names a v1 slot group)
        self.why = ""  # why the last group could not be made or limited

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

    def acquire(self, job: str, tag: str, limit: int | None) -> JobCgroup | None:
        """An empty group for one job, with `limit` bytes of memory if given; None if it fails.

        cgroup v1: the slot's own group, reused job after job (`release` left it empty, its peak
        and OOM count restarted): resetting costs less than making one (bench/cgroup_steps.py),
        and a v1 memory group removed with cache still charged lingers in the kernel (a sweep
        of thousands of cells would leave thousands). v2: a fresh group named for the job.
        """
        self.why = ""  # a reason for this call's None only, never an earlier call's
        cg, self.idle = self.idle, None
        if cg is not None:
            if cg.set_limit(limit):
                return cg
            log.warning("cannot set a memory limit on %s: making a new group", cg.path)
            self.why = f"cannot set a memory limit on {cg.path}"
            cg.remove()
        if self.v2:
            return self.create(leaf_name(job, tag), limit)
        for _ in range(3):  # a name a dead slot of the same name left in use is skipped
            self.made += 1
            made = self.create(f"{tag}.{self.made}", limit, fresh=True)
            if made is not False:
                return made
        self.why = f"the names {tag}.{self.made - 2}..{self.made} are all taken under {self.base}"
        return None

    def release(self, cg: JobCgroup) -> bool:
        """After the job's end (its figures read): keep the group for the next job, or remove it.
        False if it could not be removed (processes left in it)."""
        if self.idle is None and cg.recycle():
            self.idle = cg
            return True
        return cg.remove()

    def close(self) -> None:
        """The slot is stopping: remove the group it kept."""
        if self.idle is not None:
            self.idle.remove()
            self.idle = None

    def create(self, name: str, limit: int | None, fresh: bool = False) -> JobCgroup | None | bool:
        """A group, with `limit` bytes of memory if given; None if it fails, False if `fresh`
        and the name is taken."""
        path = self.base / name
        try:
            path.mkdir()
        except FileExistsError:
            if fresh:
                return False
        except OSError as e:
            log.warning("cannot create job cgroup %s: %s", path, e)
            self.why = f"cannot create {path}: {e.strerror or e}"
            return None
        cg = JobCgroup(path, self.v2)
        if self.v2:
            _write(path / "memory.oom.group", "1")  # an OOM kill takes the whole job, not one child
            # Swap would turn a memory limit into thrashing instead of a clean OOM kill.
            _write(path / "memory.swap.max", "0")
        if limit and not cg.set_limit(limit):
            log.warning("cannot set a memory limit on %s", path)
            self.why = f"cannot set a memory limit on {path}"
            cg.remove()
            return None
        cg.oom_base = cg._oom_total()  # a name reused after a crash may have counted before
        return cg


NAME_MAX = 255
"""The longest name of a directory, a cgroup's included, in bytes."""


def leaf_name(job: str, tag: str) -> str:
    """A v2 job group's name: `<job>.<slot>`, or where that is longer than the kernel takes (a
    job id may have 256 characters), its digest: else every memory job with such an id would
    fail for want of a group on every node (and drain it). Nothing reads a v2 group's name
    back."""
    name = f"{job}.{tag}"
    return name if len(name.encode()) <= NAME_MAX else hashlib.sha256(name.encode()).hexdigest()


def remove_left_groups(node: str, agent_id: str, worker: str | None = None) -> int:
    """Remove the v1 slot groups (`<worker>.<n>`) of a dead slot `worker`, or without one, of
    earlier agents of `node` (any agent id but `agent_id`): those a killed slot could not remove
    itself. A group still holding processes stays (rmdir refuses). Returns how many went."""
    cgs = JobCgroups.probe()
    if cgs is None or cgs.v2:
        return 0
    # A slot's groups are <slot name>.<n> (agent/slotnames.py).
    earlier = re.compile(slotnames.pattern(node, "(" + slotnames.AGENT_ID + ")") + r"\.\d+")
    try:
        entries = list(cgs.base.iterdir())
    except OSError as e:
        log.warning("cannot list job cgroups in %s: %s", cgs.base, e)
        return 0
    gone = 0
    for d in entries:
        if worker is not None:
            owner, _, n = d.name.rpartition(".")
            if owner != worker or not n.isdigit():
                continue
        else:
            m = earlier.fullmatch(d.name)
            if m is None or m.group(1) == agent_id:
                continue
        gone += JobCgroup(d, v2=False).remove()
    return gone


def _make(path: Path) -> bool:
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def node_oom_kills() -> int | None:
    """The kernel's node-wide count of OOM kills (/proc/vmstat), or None where unreadable."""
    try:
        raw = b"\n" + procfs.read("/proc/vmstat")  # read at every job's start: raw bytes, no file object
    except OSError:
        return None
    at = raw.find(b"\noom_kill ")  # one search, not a split of its ~180 lines
    if at < 0:
        return None
    end = raw.find(b"\n", at + 1)
    return int(raw[at + len(b"\noom_kill ") : end if end >= 0 else None])
