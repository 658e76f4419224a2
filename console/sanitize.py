"""Untrusted text from Redis made safe to show: no markup, no escapes, bounded size.

Anyone who can write to the broker controls job names, commands, output and node
inventories, so nothing read from it may move the cursor, retitle the terminal,
reorder text (bidi overrides) or be parsed as Rich/Textual markup.
"""

from __future__ import annotations

import re

from rich.text import Text

MAX_FIELD = 200
"""Characters kept of a table cell or one-line field (names, queues, labels)."""

MAX_LINE = 4000
"""Characters kept of one output line; past that a marker says how much was cut."""

# CSI, OSC (ended by BEL or ST), DCS/SOS/PM/APC strings, and two-byte ESC sequences.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
# C0 (but tab), DEL, C1, and the bidi embedding/override/isolate controls.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f]")
# An escape sequence cut at the end of a chunk: held back until the next chunk.
_PARTIAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*|[PX^_][^\x1b]*)?$")


def strip_escapes(s: str) -> str:
    """Remove terminal escape sequences (they are never interpreted)."""
    return _ESCAPES.sub("", s)


def strip_controls(s: str) -> str:
    """Remove control characters; tabs become spaces so cells keep their width."""
    return _CONTROLS.sub("", s.expandtabs(4) if "\t" in s else s)


def split_partial_escape(s: str) -> tuple[str, str]:
    """Split off an escape sequence that a chunk boundary cut in two (at most 256 chars)."""
    m = _PARTIAL_ESCAPE.search(s, max(0, len(s) - 256))
    if m is None:
        return s, ""
    return s[: m.start()], s[m.start() :]


def truncate(s: str, limit: int) -> str:
    if len(s) <= limit:
        return s
    return s[: max(limit - 1, 0)] + "…"


def clean(value: object, limit: int = MAX_FIELD) -> str:
    """One display-safe line from any untrusted value (None becomes '')."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    s = str(value)
    if len(s) > 16 * limit:
        s = s[: 16 * limit]  # bound the regex work on absurd inputs
    s = strip_controls(strip_escapes(s.replace("\r", " ").replace("\n", " ")))
    return truncate(s, limit)


def clean_line(s: str) -> str:
    """One output line (already split on newlines): escapes and controls out, length capped."""
    s = strip_controls(strip_escapes(s))
    if len(s) > MAX_LINE:
        return f"{s[:MAX_LINE]}… [+{len(s) - MAX_LINE} chars]"
    return s


def text(value: object, limit: int = MAX_FIELD, style: str = "") -> Text:
    """A Rich Text (never markup) holding a cleaned value."""
    return Text(clean(value, limit), style=style, no_wrap=True, overflow="ellipsis")
