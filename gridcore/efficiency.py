"""What a job used against what it asked for, and the request it should have made.

One place for the arithmetic `grid show`, `grid groups`, the console's job detail and sweep
grid all show: `memory 1.2 GiB of 16 GiB (7%)`, `CPU 3.6 of 4 cores (90%)`, a flag for a job
that used far less than it asked or was killed for using more, and per sweep the median and
the maximum over its cells, so the next sweep's `resources` can be written from them.

Inputs are a job's `usage` (records.Usage as a dict, figures may be absent) and its
`resources` (records.ResourcesRecord as a dict); both come from the broker and are checked
for type here, never trusted to be numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gridcore import keys
from gridcore.units import format_duration

LOW_SHARE = 0.25
"""A job that used less than this share of what it asked is flagged as asking too much."""
MIN_MEMORY_FLAG = 256 * 2**20
"""Requests of memory below this are not worth a flag (bytes)."""
MIN_WALL_CPU = 1.0
"""Seconds a job must have run before its CPU share means anything (start-up dominates before)."""
HEADROOM = 1.25
"""A suggested request: what was used, times this, rounded up."""
OOM_FACTOR = 2.0
"""A job killed for memory should ask this many times what it had (it did not get to its peak)."""

FIGURES = ("memory", "cores", "wall", "gpu_memory")
"""What a sweep keeps per cell (gridcore/keys.py group_usage): peak bytes, cores used, seconds, GPU bytes."""


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def size_text(n: float) -> str:
    """Binary sizes as people read them: `512 MiB`, `1.2 GiB`, `31 GiB`."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            v = n / scale
            return f"{v:.1f}".removesuffix(".0") + f" {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def size_request(n: float) -> str:
    """A request written as a descriptor takes it (gridcore/units.py): `768MiB`, `3GiB`, never
    below what is given (rounded up to 256 MiB steps below 4 GiB, whole GiB above)."""
    mib = math.ceil(n / 2**20)
    if mib < 4096:
        return f"{max(256, math.ceil(mib / 256) * 256)}MiB"
    return f"{math.ceil(mib / 1024)}GiB"


def percent(share: float) -> str:
    return f"{share * 100:.0f}%"


def cores_used(usage: Mapping[str, Any]) -> float | None:
    """Mean cores busy over the attempt: CPU seconds (user + system) over wall seconds."""
    wall = _num(usage.get("wall"))
    user, system = _num(usage.get("cpu_user")), _num(usage.get("cpu_system"))
    if not wall or user is None or system is None:
        return None
    return (user + system) / wall


def gpu_memory_of(held: Iterable[Any], gpus: Iterable[Any]) -> int | None:
    """The memory of the GPUs a job held (`held`: their indices), from its node's GpuInfo list."""
    want = {str(i) for i in held}
    sizes = [g.memory_total for g in gpus if str(g.index) in want and g.memory_total]
    return sum(sizes) if want and len(sizes) == len(want) else None


@dataclass(frozen=True)
class Used:
    """One figure of a job: what it used, what it asked (None: not asked), the share."""

    label: str
    text: str
    share: float | None = None


def used_lines(usage: Mapping[str, Any] | None, resources: Mapping[str, Any] | None,
               gpu_memory: int | None = None) -> list[Used]:
    """Each figure the node measured, against the request where there is one.

    `gpu_memory`: the memory of the GPUs the job held, where the caller knows it (node inventory).
    """
    if not isinstance(usage, Mapping):
        return []
    res = resources if isinstance(resources, Mapping) else {}
    out: list[Used] = []
    peak, asked = _num(usage.get("memory_peak")), _num(res.get("memory"))
    if peak is not None:
        src = " (sampled)" if usage.get("memory_source") == "sampled" else ""
        if asked:
            out.append(Used("memory", f"{size_text(peak)} of {size_text(asked)} ({percent(peak / asked)}){src}",
                            peak / asked))
        else:
            out.append(Used("memory", f"{size_text(peak)}, none asked{src}"))
    cores, cpus = cores_used(usage), _num(res.get("cpus", 1))
    if cores is not None:
        user, system = _num(usage.get("cpu_user")) or 0.0, _num(usage.get("cpu_system")) or 0.0
        detail = f"; {user:.1f}s user, {system:.1f}s system"
        if cpus:
            out.append(Used("CPU", f"{cores:.1f} of {cpus:g} core{'s' if cpus != 1 else ''} ({percent(cores / cpus)})"
                            + detail, cores / cpus))
        else:
            out.append(Used("CPU", f"{cores:.1f} cores" + detail))
    gmem = _num(usage.get("gpu_memory_peak"))
    util = _num(usage.get("gpu_utilization"))
    if gmem is not None or util is not None:
        parts = []
        if gmem is not None:
            parts.append(f"{size_text(gmem)} of {size_text(gpu_memory)} ({percent(gmem / gpu_memory)})"
                         if gpu_memory else size_text(gmem))
        if util is not None:
            parts.append(f"{util:.0f}% busy")
        out.append(Used("GPU mem" if gmem is not None else "GPU", ", ".join(parts),
                        gmem / gpu_memory if gmem is not None and gpu_memory else None))
    read, written = _num(usage.get("io_read")), _num(usage.get("io_write"))
    if read is not None or written is not None:
        out.append(Used("disk IO", f"{size_text(read or 0)} read, {size_text(written or 0)} written"))
    return out


def advice(usage: Mapping[str, Any] | None, resources: Mapping[str, Any] | None,
           reason_kind: str | None = None) -> list[str]:
    """What to ask for next time: for a job killed for memory, or one that used far less."""
    u = usage if isinstance(usage, Mapping) else {}
    res = resources if isinstance(resources, Mapping) else {}
    peak, asked = _num(u.get("memory_peak")), _num(res.get("memory"))
    out: list[str] = []
    if reason_kind == "oom":
        if asked:
            out.append(f"killed for using more than the {size_text(asked)} it asked: ask for memory "
                       f"{size_request(max(asked, peak or 0) * OOM_FACTOR)} or more")
        else:
            seen = f" after {size_text(peak)}" if peak else ""
            out.append(f"the node ran out of memory{seen} and none was asked: ask for memory "
                       f"{size_request((peak or 2**30) * OOM_FACTOR)} so it runs where that fits")
        return out
    if peak is not None and asked and asked >= MIN_MEMORY_FLAG and peak < LOW_SHARE * asked:
        out.append(f"used {percent(peak / asked)} of the memory asked: memory {size_request(peak * HEADROOM)} "
                   "would do")
    cores, cpus = cores_used(u), _num(res.get("cpus", 1))
    wall = _num(u.get("wall")) or 0.0
    if cores is not None and cpus and cpus >= 2 and wall >= MIN_WALL_CPU and cores < LOW_SHARE * cpus:
        out.append(f"used {cores:.1f} of {cpus:g} cores: cpus {max(1, math.ceil(cores * HEADROOM))} would do")
    return out


def cell_figures(usage: Mapping[str, Any] | None) -> dict[str, float]:
    """What one sweep cell adds to its sweep's figures (FIGURES), those it has."""
    if not isinstance(usage, Mapping):
        return {}
    out = {"memory": _num(usage.get("memory_peak")), "cores": cores_used(usage), "wall": _num(usage.get("wall")),
           "gpu_memory": _num(usage.get("gpu_memory_peak"))}
    return {k: round(v, 4) for k, v in out.items() if v is not None}


def record_cell(pipe, group: str, job_id: str, usage: Mapping[str, Any] | None, ttl: int) -> None:
    """Queue on `pipe` a finished cell's figures into its sweep's (a retry's replace its last)."""
    for figure, value in cell_figures(usage).items():
        key = keys.group_usage(group, figure)
        pipe.zadd(key, {job_id: value})
        pipe.expire(key, ttl)


@dataclass(frozen=True)
class Spread:
    """One figure over a sweep's measured cells."""

    cells: int
    median: float
    max: float


def spread(values: Iterable[float]) -> Spread | None:
    vs = sorted(values)
    if not vs:
        return None
    n = len(vs)
    mid = vs[n // 2] if n % 2 else (vs[n // 2 - 1] + vs[n // 2]) / 2
    return Spread(n, mid, vs[-1])


def spread_of(value: Any) -> Spread | None:
    """A Spread from its fields as a read gives them (`{"cells", "median", "max"}`), checked."""
    if isinstance(value, Spread):
        return value
    if not isinstance(value, Mapping):
        return None
    n, med, top = _num(value.get("cells")), _num(value.get("median")), _num(value.get("max"))
    return Spread(int(n), med, top) if n and med is not None and top is not None else None


def _spreads(figures: Any) -> dict[str, Spread]:
    if not isinstance(figures, Mapping):
        return {}
    return {f: s for f in FIGURES if (s := spread_of(figures.get(f))) is not None}


def sweep_lines(figures: Mapping[str, Any] | None, resources: Mapping[str, Any] | None) -> list[Used]:
    """Per sweep: median and max per cell of each figure, against the cells' request.
    `figures`: FIGURES -> Spread or its fields (gridcore/reads.py, a group's `usage`)."""
    figures = _spreads(figures)
    res = resources if isinstance(resources, Mapping) else {}
    out: list[Used] = []
    mem, asked = figures.get("memory"), _num(res.get("memory"))
    if mem is not None:
        of = f" of {size_text(asked)} ({percent(mem.max / asked)} at most)" if asked else ""
        out.append(Used("memory", f"median {size_text(mem.median)}, max {size_text(mem.max)}{of}",
                        mem.max / asked if asked else None))
    cores, cpus = figures.get("cores"), _num(res.get("cpus", 1))
    if cores is not None:
        of = f" of {cpus:g}" if cpus else ""
        out.append(Used("CPU", f"median {cores.median:.1f}, max {cores.max:.1f} cores{of}",
                        cores.max / cpus if cpus else None))
    wall = figures.get("wall")
    if wall is not None:
        out.append(Used("runtime", f"median {format_duration(wall.median)}, max {format_duration(wall.max)}"))
    gmem = figures.get("gpu_memory")
    if gmem is not None:
        out.append(Used("GPU mem", f"median {size_text(gmem.median)}, max {size_text(gmem.max)}"))
    return out


def sweep_request(figures: Mapping[str, Any] | None) -> str | None:
    """`resources` for the next sweep: enough for its largest cell, with headroom."""
    figures = _spreads(figures)
    parts = []
    mem, cores = figures.get("memory"), figures.get("cores")
    if cores is not None:
        parts.append(f'"cpus": {max(1, math.ceil(cores.max * HEADROOM))}')
    if mem is not None:
        parts.append(f'"memory": "{size_request(mem.max * HEADROOM)}"')
    return "{" + ", ".join(parts) + "}" if parts else None

