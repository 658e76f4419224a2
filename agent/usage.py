"""What one attempt used, measured on its node: wall time, CPU, peak memory, disk IO and GPU.

A slot runs one job at a time, so everything the slot process reaps while a job runs is that
job's. The slot makes itself a child subreaper (PR_SET_CHILD_SUBREAPER): a process of the job
whose parent exits without waiting for it (`setsid cmd &`, a double fork, nohup) is re-parented
to the slot instead of to init, and the slot reaps it at the job's end. So the kernel's
RUSAGE_CHILDREN of the slot, before and after the job, counts the CPU time and block IO of the
whole tree exactly, waited-for children and not, with no sampling loss.

Peak memory is the job cgroup's peak where the runner made one (a job with a memory limit);
else the summed resident size of the tree sampled by one thread per slot (kept across jobs), at 0.1 s, then every
0.5 s backing off to every 2 s, less often for a tree so large that a sample would cost more
than 0.5% of a core (a few /proc reads per process per sample), and never
below the largest reaped process's maxrss. GPU figures come from NVML for the job's own GPUs;
where NVML is missing or refuses, they are absent, not an error.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import resource
import threading
import time
from collections.abc import Iterable
from typing import Any

from agent import procfs
from gridcore.records import Result, Usage

log = logging.getLogger("grid.usage")

FIRST_SAMPLE = 0.1
"""Seconds after its start a job's tree is first sampled (many sweep cells last under a second)."""
FIRST_INTERVAL = 0.5
"""Seconds between the next samples of a job's tree."""
MAX_INTERVAL = 2.0
"""Seconds between samples once a job has run a while (the interval doubles up to this)."""
BACKOFF_AFTER = 10
"""Samples taken at a given interval before it doubles."""
KEEP_AWAKE = 1.0
"""Seconds the sampling thread keeps looking for a next job after the last one started."""
MAX_SHARE = 0.005
"""Share of one core the sampler may use: a large tree is sampled less often to stay within it."""
PR_SET_CHILD_SUBREAPER = 36
BLOCK = 512
"""Bytes per block of getrusage's ru_inblock/ru_oublock (the kernel's read_bytes >> 9)."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_subreaper: bool | None = None


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (once per process; Linux)."""
    global _subreaper
    if _subreaper is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            _subreaper = False
        if not _subreaper:
            log.info("cannot become a child subreaper: CPU time of jobs' orphaned processes is not counted")
    return _subreaper


@functools.cache
def io_accounting() -> bool:
    """Whether the kernel counts per-task block IO (CONFIG_TASK_IO_ACCOUNTING); asked once."""
    return os.path.exists("/proc/self/io")


def _read(path: str) -> bytes | None:
    try:
        return procfs.read(path)
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from every thread's /proc children list (any thread may be the
    parent: a re-parented orphan goes to some live thread of the subreaper)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        raw = _read(f"/proc/{pid}/task/{tid}/children")
        if raw:
            out.extend(int(c) for c in raw.split())
    return out


@functools.cache
def have_children_lists() -> bool:
    """Whether the kernel has /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN); asked once."""
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def tree(roots: Iterable[int]) -> list[int]:
    """`roots` and all their descendants that are still there."""
    seen: dict[int, None] = {}
    todo = list(roots)
    while todo and len(seen) < 100_000:
        pid = todo.pop()
        if pid in seen:
            continue
        seen[pid] = None
        todo.extend(children(pid))
    return list(seen)


def rss(pid: int) -> int:
    """Resident bytes of one process (0 for one that is gone or a zombie)."""
    raw = _read(f"/proc/{pid}/statm")
    if not raw:
        return 0
    parts = raw.split()
    return int(parts[1]) * _PAGE if len(parts) > 1 else 0


def is_zombie(pid: int) -> bool:
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return False
    return raw[raw.rfind(b")") + 2:].startswith(b"Z")


class Gpus:
    """NVML readings of one job's GPUs: memory of the job's processes, utilization."""

    def __init__(self, indices: Iterable[int], nv: Any = None):
        self.nv = nv
        self.handles: list[Any] = []
        self.util_sum = 0.0
        self.util_n = 0
        self.memory_peak: int | None = None
        if nv is None:
            return
        for i in indices:
            try:
                self.handles.append(nv.nvmlDeviceGetHandleByIndex(i))
            except Exception as e:  # noqa: BLE001 - NVML raises its own error classes per board
                log.info("no NVML handle for GPU %s: %s", i, e)

    def sample(self, pids: set[int]) -> None:
        used = 0
        seen = False
        for h in self.handles:
            try:
                procs = self.nv.nvmlDeviceGetComputeRunningProcesses(h)
            except Exception:  # noqa: BLE001 - not supported on this board: memory stays absent
                procs = None
            if procs is not None:
                seen = True
                used += sum(int(p.usedGpuMemory or 0) for p in procs if p.pid in pids)
            try:
                # The grid hands out whole GPUs: the device's utilization is the job's.
                self.util_sum += float(self.nv.nvmlDeviceGetUtilizationRates(h).gpu)
                self.util_n += 1
            except Exception:  # noqa: BLE001 - utilization unsupported: absent
                pass
        if seen:
            self.memory_peak = max(self.memory_peak or 0, used)

    @property
    def utilization(self) -> float | None:
        return min(100.0, self.util_sum / self.util_n) if self.util_n else None


_nvml: Any = None
_nvml_tried = False


def nvml() -> Any:
    """The pynvml module, initialised once per process; None where there is no NVML."""
    global _nvml, _nvml_tried
    if not _nvml_tried:
        _nvml_tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception as e:  # noqa: BLE001 - no library, no driver, no GPU: no GPU figures
            log.info("no NVML here (%s): jobs' GPU figures are absent", e)
    return _nvml


class Meter:
    """Measures the job this slot process runs from now until `finish` (one per attempt).

    `gpus`: the GPU indices the job holds (NVML is asked only about those).
    """

    def __init__(self, gpus: Iterable[int] = (), *, nv: Any = None, first: float = FIRST_INTERVAL,
                 most: float = MAX_INTERVAL, before: Iterable[int] | None = None):
        become_subreaper()
        self.me = os.getpid()
        self.first, self.most = first, most
        # Children the slot already had (RQ's scheduler process): not the job's. `before`: read
        # by the caller before it forked the job (agent/runner.py `hold`).
        self.before = set(children(self.me) if before is None else before)
        self.walk = have_children_lists()
        gpus = list(gpus)
        self.gpus = Gpus(gpus, nv if nv is not None else (nvml() if gpus else None)) if gpus else None
        self.peak = 0
        self.samples = 0
        self.vanished = 0  # processes seen in one sample and gone by the next
        self.sampler_cpu = 0.0
        self._last: set[int] = set()
        self.t0 = time.monotonic()
        self.ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        _SAMPLER.arm(self)

    def job_pids(self) -> list[int]:
        """The job's processes now: the slot's children it did not have before, and theirs."""
        if self.walk:
            return tree(c for c in children(self.me) if c not in self.before)
        import psutil  # no children lists in /proc: psutil's scan of every process (slower)

        try:
            kids = psutil.Process(self.me).children(recursive=True)
        except psutil.Error:
            return []
        skip = set(self.before)
        for c in kids:
            if c.pid in self.before:
                skip.update(k.pid for k in _descendants(c))
        return [c.pid for c in kids if c.pid not in skip]

    def sample(self) -> None:
        pids = self.job_pids()
        total = sum(rss(p) for p in pids)
        self.peak = max(self.peak, total)
        now = set(pids)
        self.vanished += len(self._last - now)
        self._last = now
        if self.gpus is not None:
            self.gpus.sample(now)
        self.samples += 1

    def reap(self, now: Iterable[int] | None = None) -> int:
        """Reap the job's orphans that ended while re-parented to this slot (their CPU time and
        IO then count in RUSAGE_CHILDREN). Only new children, never the slot's own. `now`: the
        slot's children as the caller just read them, after the job's tree was gone."""
        n = 0
        if now is None:
            now = children(self.me) if self.walk else []
        for pid in now:
            if pid in self.before or not is_zombie(pid):
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    n += 1
            except ChildProcessError:
                continue
        return n

    def finish(self, result: Result, children_after: Iterable[int] | None = None) -> Result:
        """Stop sampling and return `result` with its `usage` (call after the runner ended the tree;
        `children_after`: the slot's children it read then, if nothing was left to kill or reap)."""
        _SAMPLER.disarm(self)
        wall = time.monotonic() - self.t0
        self.reap(children_after)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures: dict[str, Any] = {
            "wall": round(result.duration if result.duration is not None else wall, 6),
            "cpu_user": round(max(0.0, ru.ru_utime - self.ru0.ru_utime), 6),
            "cpu_system": round(max(0.0, ru.ru_stime - self.ru0.ru_stime), 6),
            "samples": self.samples,
        }
        if io_accounting():
            figures["io_read"] = max(0, ru.ru_inblock - self.ru0.ru_inblock) * BLOCK
            figures["io_write"] = max(0, ru.ru_oublock - self.ru0.ru_oublock) * BLOCK
        if result.memory_peak:
            figures.update(memory_peak=result.memory_peak, memory_source="cgroup")
        else:
            # ru_maxrss (KiB) is the largest single reaped process over the slot's life: it
            # speaks for this job only if it grew during it (a job too short to be sampled).
            grown = ru.ru_maxrss * 1024 if ru.ru_maxrss > self.ru0.ru_maxrss else 0
            peak = max(self.peak, grown)
            if peak:
                figures.update(memory_peak=peak, memory_source="sampled")
        if self.gpus is not None:
            if self.gpus.memory_peak is not None:
                figures["gpu_memory_peak"] = self.gpus.memory_peak
            if self.gpus.utilization is not None:
                figures["gpu_utilization"] = round(self.gpus.utilization, 1)
        log.debug("usage: %s; %d processes vanished between samples; sampler used %.3fs CPU", figures,
                  self.vanished, self.sampler_cpu)
        return result.model_copy(update={"usage": Usage(**figures)})


class _Sampler:
    """The slot's one sampling thread, started with its first job and kept: a thread started
    and joined per job cost a trivial job more than its samples (two hand-overs of the GIL on
    a busy node). It samples the armed meter, one at a time (a slot runs one job at a time).

    Arming and disarming do not wake it unless it would otherwise sleep past the new meter's
    first sample (it is asleep, no job having come for a while): a wake per job's start and end
    cost a trivial job two GIL hand-overs, for a sample that job never lived to take. While
    jobs come it looks every FIRST_SAMPLE seconds instead, finding the meter of the moment."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._meter: Meter | None = None
        self._thread: threading.Thread | None = None
        self._wake_at = float("inf")  # when the thread's current wait ends (inf: until woken)
        self._armed_at = 0.0

    def arm(self, meter: Meter) -> None:
        with self._cv:
            self._meter = meter
            self._armed_at = meter.t0
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
                self._thread.start()
            elif self._wake_at > meter.t0 + min(FIRST_SAMPLE, meter.first):
                self._cv.notify()

    def disarm(self, meter: Meter) -> None:
        """Stop sampling `meter`; returns once no sample of it is under way (they run under the
        lock). The thread finds it gone when it next wakes."""
        with self._cv:
            if self._meter is meter:
                self._meter = None

    def _wait(self, until: float) -> None:
        self._wake_at = until
        self._cv.wait(None if until == float("inf") else max(0.0, until - time.monotonic()))
        self._wake_at = time.monotonic()  # awake: an arm now needs no notify

    def _run(self) -> None:
        with self._cv:
            while True:
                m = self._meter
                if m is not None:
                    self._measure(m)
                    continue
                now = time.monotonic()
                # No job now: look again shortly while jobs come, else sleep until one is armed.
                self._wait(now + FIRST_SAMPLE if now - self._armed_at < KEEP_AWAKE else float("inf"))

    def _measure(self, m: Meter) -> None:
        """Sample `m` until it is disarmed (called holding the lock, which `wait` gives up)."""
        interval = min(FIRST_SAMPLE, m.first)
        taken = 0
        due = m.t0 + interval
        while self._meter is m:
            if due > time.monotonic():
                self._wait(due)
                continue
            interval = max(interval, m.first)
            spent = time.thread_time()
            try:
                m.sample()
            except Exception:  # noqa: BLE001 - a sampling bug costs figures, never the job
                log.exception("sampling a job's processes failed; its usage figures stop here")
                self._meter = None
                return
            cost = time.thread_time() - spent
            m.sampler_cpu += cost
            taken += 1
            if taken >= BACKOFF_AFTER and interval < m.most:
                interval, taken = min(m.most, interval * 2), 0
            # A tree of thousands of processes costs more per sample: sample it less often.
            interval = max(interval, cost / MAX_SHARE)
            due = time.monotonic() + interval


_SAMPLER = _Sampler()


def _descendants(p: Any) -> list[Any]:
    try:
        return p.children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil.Error: gone
        return []
