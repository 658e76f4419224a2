"""A job's output as lines: stdout/stderr kept apart, carriage returns redraw in place.

Fed raw byte chunks from the job's stream; UTF-8 split across chunks is decoded whole,
invalid bytes become U+FFFD, escape sequences are dropped (a sequence cut by a chunk
boundary is held back until the rest arrives), and at most `max_lines` lines are kept.
"""

from __future__ import annotations

import codecs
import re

from console.sanitize import clean_line, split_partial_escape, strip_escapes

MAX_LINES = 20_000
"""Lines kept in the pane; older ones are dropped and counted."""

STREAMS = ("stdout", "stderr")

_BREAKS = re.compile(r"(\r\n|\n|\r)")


class _Stream:
    """Decoder and the line being built for one of stdout/stderr."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending_escape = ""
        self.line = ""
        self.after_cr = False  # the next text overwrites the line (a redraw)


class OutputBuffer:
    """Lines of (stream, text) plus the unfinished line of each stream."""

    def __init__(self, max_lines: int = MAX_LINES):
        self.max_lines = max_lines
        self.lines: list[tuple[str, str]] = []
        self.trimmed = 0  # complete lines dropped from the front to respect max_lines
        self.cursor = "0-0"  # stream id of the last chunk fed
        self.ended = False
        self._streams = {s: _Stream() for s in STREAMS}
        self.version = 0  # bumped on every change, for cheap "did it change" checks

    def feed(self, stream: str, data: bytes, chunk_id: str | None = None) -> None:
        """Append one raw chunk of stdout or stderr."""
        if chunk_id:
            self.cursor = chunk_id
        st = self._streams.get(stream)
        if st is None:
            return
        text = st.pending_escape + st.decoder.decode(data)
        text, st.pending_escape = split_partial_escape(text)
        text = strip_escapes(text)
        for piece in _BREAKS.split(text):
            if piece in ("\n", "\r\n"):
                self._append(stream, st.line)
                st.line, st.after_cr = "", False
            elif piece == "\r":
                st.after_cr = True
            elif piece:
                if st.after_cr:
                    st.line, st.after_cr = piece, False
                else:
                    st.line += piece
                if len(st.line) > 4 * 4096:
                    # A "line" that never ends (binary, a huge JSON blob): cut it into rows.
                    self._append(stream, st.line)
                    st.line = ""
        self.version += 1

    def note(self, message: str, chunk_id: str | None = None) -> None:
        """A line of the console's or the agent's own (end of output, trimmed output)."""
        if chunk_id:
            self.cursor = chunk_id
        self._append("note", message)
        self.version += 1

    def finish(self) -> None:
        """Flush undecoded bytes and unfinished lines (the job's output ended)."""
        self._break()
        self.ended = True
        self.version += 1

    def gap(self, message: str) -> None:
        """Output was left out here: end the lines it cut, then say so."""
        self._break()
        self.note(message)

    def _break(self) -> None:
        for name, st in self._streams.items():
            tail = st.decoder.decode(b"", final=True)
            if tail:
                st.line += strip_escapes(tail)
            if st.line:
                self._append(name, st.line)
                st.line = ""
            st.pending_escape, st.after_cr = "", False

    def _append(self, stream: str, line: str) -> None:
        self.lines.append((stream, clean_line(line)))
        # Trim in batches so a steady stream doesn't shift the list on every line.
        if len(self.lines) > self.max_lines + self.max_lines // 10:
            drop = len(self.lines) - self.max_lines
            del self.lines[:drop]
            self.trimmed += drop

    @property
    def partials(self) -> list[tuple[str, str]]:
        """Unfinished lines (a progress bar being redrawn), shown after the complete ones."""
        return [(n, clean_line(st.line)) for n, st in self._streams.items() if st.line]

    def rows(self) -> list[tuple[str, str]]:
        return self.lines + self.partials

    def __len__(self) -> int:
        return len(self.lines) + sum(1 for st in self._streams.values() if st.line)

    def row(self, index: int) -> tuple[str, str]:
        n = len(self.lines)
        if index < n:
            return self.lines[index]
        partials = self.partials
        return partials[index - n] if 0 <= index - n < len(partials) else ("stdout", "")
