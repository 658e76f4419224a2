"""Sizes ("16GB", "512MiB") and durations ("2h", "1h30m", "90") as written in descriptors."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MAX_BYTES = 2**63 - 1
"""Largest memory size a descriptor may ask for (fits a signed 64-bit counter)."""

MAX_SECONDS = 366 * 86400.0
"""Longest duration a descriptor may give: a year is already far past any sane timeout."""

# Decimal units are powers of 1000 and "i" units powers of 1024, as in Kubernetes; a bare
# letter ("16G") counts as decimal so that "64G" still fits a 64 GiB machine.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
    "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40, "pi": 2**50, "pib": 2**50,
}
_SIZE = re.compile(r"\s*(\d{1,20}(?:\.\d{1,20})?|\.\d{1,20})\s*([a-z]{0,3})\s*", re.IGNORECASE)

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}
_DURATION_PART = re.compile(r"(\d{1,12}(?:\.\d{1,9})?|\.\d{1,9})\s*([a-z]*)\s*", re.IGNORECASE)
_CLOCK = re.compile(r"(?:(\d{1,4}):)?(\d{1,2}):(\d{2})")  # [H:]MM:SS, as Slurm writes it


def parse_size(text: str) -> int | None:
    """Bytes for "16GB", "512MiB", "1.5G" or "1024"; None when it is not a size."""
    m = _SIZE.fullmatch(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        return None
    try:
        n = int(Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    except InvalidOperation:
        return None
    return n if n <= MAX_BYTES else None


def parse_duration(text: str) -> float | None:
    """Seconds for "90", "90s", "30m", "2h", "1h30m", "1.5d" or "2:00:00"; None otherwise."""
    s = text.strip()
    if not s:
        return None
    clock = _CLOCK.fullmatch(s)
    if clock:
        h, m, sec = clock.groups()
        if (h is not None and int(m) >= 60) or int(sec) >= 60:
            return None
        return float(int(h or 0) * 3600 + int(m) * 60 + int(sec))
    total, pos, units_seen = 0.0, 0, set()
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            return None
        unit = m.group(2).lower()
        if unit not in _DURATION_UNITS and not (unit == "" and m.end() == len(s) and not units_seen):
            return None
        if unit in units_seen:
            return None
        units_seen.add(unit)
        total += float(m.group(1)) * _DURATION_UNITS.get(unit, 1)
        pos = m.end()
    if pos != len(s):
        return None
    return total


def format_size(n: int) -> str:
    """Short decimal size for messages: 16000000000 -> "16GB", 1536 -> "1.5KB"."""
    for unit, scale in (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + unit
    return f"{n}B"


NEVER_BEAT = "never"
"""How every view shows the heartbeat age of a node that never sent a heartbeat (unknown, not 0)."""


def format_heartbeat_age(age: float | None) -> str:
    """A node's heartbeat age for tables and messages: "never" when it never sent one."""
    return NEVER_BEAT if age is None else format_duration(age)


def format_duration(s: float | None) -> str:
    """Short duration for tables: 4.2 -> "4.2s", 125 -> "2m05s", 7300 -> "2h01m"."""
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
