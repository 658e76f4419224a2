"""Sizes and durations as people write them ("16GB", "512MiB", "2h") and as we print them."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_size(text: str | int) -> int:
    """Bytes from "16GB" (decimal), "16GiB" (binary), "1.5G" or a plain number of bytes."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size can't be negative")
        return text
    m = _SIZE.match(text)
    if not m or (not m.group(2) and m.group(3)):
        raise ValueError(f'"{text}" is not a size like "16GB"')
    number, prefix, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    return int(number * (1024 if binary else 1000) ** _POWERS[prefix])


def parse_duration(text: str | float | int) -> float:
    """Seconds from "90s", "30m", "2h", "1d", "500ms" or a plain number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f'"{text}" is not a duration like "30m" or "2h"')
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _SECONDS[unit]


def format_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}PB"


def format_duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
