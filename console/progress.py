"""The latest progress a job printed: `42%`, tqdm bars, `step 420/1000`."""

from __future__ import annotations

import re
from collections.abc import Iterable

from console.sanitize import strip_escapes

_PERCENT = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)\s?%")
# "step 420/1000", "epoch 3 / 10", "iter: 5/50"; a bare N/M could be a date or a path.
_STEP = re.compile(
    r"\b(?:step|steps|epoch|epochs|iter|iters|iteration|batch|sample|samples|item|items|task|tasks|file|files)"
    r"\b\s*[:=#]?\s*(\d+)\s*/\s*(\d+)\b",
    re.IGNORECASE,
)
# tqdm without a total percentage column still prints "| 42/100 [".
_TQDM_COUNT = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")

SCAN_CHARS = 8192
"""How much of the newest output is searched (progress lines are near the end)."""


def parse_line(line: str) -> float | None:
    """Progress in [0, 1] printed on one line, or None."""
    m = None
    for m in _PERCENT.finditer(line):
        pass
    if m is not None:
        value = float(m.group(1))
        if 0 <= value <= 100:
            return value / 100
    for pattern in (_STEP, _TQDM_COUNT):
        found = None
        for found in pattern.finditer(line):
            pass
        if found is not None:
            done, total = int(found.group(1)), int(found.group(2))
            if 0 < total and 0 <= done <= total:
                return done / total
    return None


def latest(text: str) -> float | None:
    """The newest progress in a piece of output (carriage-return redraws count as lines)."""
    text = strip_escapes(text[-SCAN_CHARS:])
    for line in reversed(re.split(r"[\r\n]+", text)):
        if line.strip():
            value = parse_line(line)
            if value is not None:
                return value
    return None


def latest_of_chunks(chunks: Iterable[tuple[str, bytes]]) -> float | None:
    """Newest progress in (stream, data) chunks given oldest first.

    Chunks of one stream are joined as they are (a line may span two flushes); a change of
    stream starts a new line so stdout and stderr never merge into one.
    """
    parts: list[str] = []
    previous = None
    for stream, data in chunks:
        if previous is not None and stream != previous:
            parts.append("\n")
        parts.append(data[-SCAN_CHARS:].decode("utf-8", "replace"))
        previous = stream
    return latest("".join(parts))


def label(value: float | None) -> str:
    """`42%`, or an empty string when there is no progress."""
    return "" if value is None else f"{value * 100:.0f}%"
