"""Display formatting shared by the screens: ages, durations, sizes, state colours."""

from __future__ import annotations

import time

from gridcore.models import JobState, NodeState
from gridcore.units import format_size

STATE_STYLE = {
    JobState.QUEUED: "cyan",
    JobState.SCHEDULED: "cyan",
    JobState.WAITING: "yellow",
    JobState.RUNNING: "bold green",
    JobState.FINISHED: "green",
    JobState.FAILED: "bold red",
    JobState.CANCELED: "magenta",
}
"""Colour is a second cue only: the state's word is always shown too."""

NODE_STYLE = {
    NodeState.UP: "green",
    NodeState.DRAINING: "yellow",
    NodeState.STALE: "bold yellow",
    NodeState.DOWN: "bold red",
}


def num(value: object) -> float | None:
    """A finite number from an untrusted value (job meta is anyone's JSON), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) < 1e15 else None


def duration(seconds: object) -> str:
    """Compact duration: 45s, 12m03s, 3h07m, 2d04h."""
    seconds = num(seconds)
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(then: object, now: float) -> str:
    """Age relative to broker time `now` (never this machine's clock)."""
    then = num(then)
    if then is None or not now:
        return ""
    return duration(now - then)


def stamp(t: object) -> str:
    """A broker timestamp as local date and time."""
    t = num(t)
    if not t:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return "?"


def size(n: object) -> str:
    """Bytes as the CLI and descriptors write them (decimal units: 512B, 3.2KB, 25.3GB)."""
    n = num(n)
    return "?" if n is None or n < 0 else format_size(int(n))


def runtime(job, now: float) -> str:
    started, ended = num(job.started_at), num(job.ended_at)
    if num(job.duration) is not None:
        return duration(job.duration)
    if started and ended:
        return duration(ended - started)
    if started and job.state is JobState.RUNNING:
        return duration(now - started)
    return ""


def exit_status(job) -> str:
    code, sig = num(job.exit_code), num(job.signal)
    if code is not None:
        return str(int(code))
    if sig:
        return f"sig{int(sig)}"  # the exit column is wide enough for sig15
    return ""


def fixed(value: object, digits: int = 1, missing: str = "-") -> str:
    """A number with `digits` decimals, or `missing` when it isn't one."""
    v = num(value)
    return missing if v is None else f"{v:.{digits}f}"


def bar(fraction: object, width: int = 8) -> str:
    """A progress bar `width` cells wide, in whole cells: ███░░░░░."""
    f = num(fraction)
    f = 0.0 if f is None else min(1.0, max(0.0, f))
    full = int(f * width + 1e-9)
    return "█" * full + "░" * (width - full)


def percent(fraction: object) -> str:
    """0.4567 -> ' 45%'; a bar's number, floor so 100% means every cell is done."""
    f = num(fraction)
    f = 0.0 if f is None else min(1.0, max(0.0, f))
    return f"{int(f * 100 + 1e-9):3d}%"
