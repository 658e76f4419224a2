"""Where `grid logs` writes a job's bytes: exact when piped or `--raw`, made safe on a terminal."""

from __future__ import annotations

from typing import BinaryIO, TextIO

from gridcore.sanitize import TerminalFilter


class SafeStream:
    """A terminal's byte stream behind the one sanitizer's TerminalFilter: a job's output keeps
    its colours but cannot retitle the terminal, set the clipboard (OSC 52), plant hyperlinks
    (OSC 8) or move the cursor."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._filter = TerminalFilter()

    def write(self, data: bytes) -> None:
        self._stream.write(self._filter.feed(data))

    def flush(self) -> None:
        self._stream.flush()


def safe_stream(stream: TextIO, raw: bool) -> BinaryIO | SafeStream:
    """`stream`'s bytes: exact when `raw` or not a terminal, else behind a SafeStream."""
    if raw or not stream.isatty():
        return stream.buffer
    return SafeStream(stream.buffer)
