"""Untrusted text from Redis made safe to show: no markup, no escapes, bounded size.

The one sanitizer of the CLI and the console. Anyone who can write to the broker controls
job names, commands, output and node inventories, so nothing read from it may move the
cursor, retitle the terminal, set the clipboard, reorder text (bidi overrides) or be parsed
as Rich/Textual markup (callers wrap the cleaned string in a plain `Text`, never markup).
"""

from __future__ import annotations

import codecs
import re

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


# SGR (colours, bold): the only sequence a job's output may send to the operator's terminal.
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
# Every other escape, and the controls a terminal acts on; newline, tab, CR and backspace stay
# (progress bars redraw with CR).
_OUTPUT_CONTROLS = re.compile("[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _keep_sgr(m: re.Match) -> str:
    return m.group(0) if _SGR.fullmatch(m.group(0)) else ""


class TerminalFilter:
    """A job's output bytes made safe for the operator's terminal, chunk by chunk: colours (SGR)
    kept; OSC (title, clipboard 52, hyperlinks 8), DCS/APC/PM strings, cursor movement, other
    escapes and C1 controls removed. Escapes and UTF-8 characters cut between chunks are held
    until the next chunk. `grid logs --raw` and piped output bypass it (exact bytes)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""

    def feed(self, data: bytes, final: bool = False) -> bytes:
        s = self._held + self._decoder.decode(data, final)
        s, self._held = (s, "") if final else split_partial_escape(s)
        s = _ESCAPES.sub(_keep_sgr, s)
        # A lone ESC (the start of nothing known) must not survive to combine with what follows.
        s = "".join(_split_keep_sgr(s))
        return s.encode("utf-8", "replace")

    def flush(self) -> bytes:
        return self.feed(b"", final=True)


def _split_keep_sgr(s: str):
    """`s` with controls removed outside the SGR sequences it still holds."""
    pos = 0
    for m in _SGR.finditer(s):
        yield _OUTPUT_CONTROLS.sub("", s[pos:m.start()]).replace("\x1b", "")
        yield m.group(0)
        pos = m.end()
    yield _OUTPUT_CONTROLS.sub("", s[pos:]).replace("\x1b", "")
