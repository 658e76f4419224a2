"""Entries of the two kinds of streams: a job's output and the grid's events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gridcore.models import OutputChunk
from gridcore.records.jobs import Attempt
from gridcore.records.base import CorruptRecord, _int, _positive, _text


OUTPUT_KINDS = {"o": "stdout", "e": "stderr", "n": "note"}
"""Output entry `s` values -> the stream names OutputChunk uses (the end marker is "x")."""

OUTPUT_ENTRY_MAX = 1024 * 1024
"""Bytes of one output entry's data a reader accepts (the agent writes at most ~80 KiB)."""

OFFSET_MAX = 2**62
"""Largest byte or line offset a reader accepts."""


@dataclass(frozen=True)
class OutputEntry:
    """Bytes of a job's stdout ("o"), stderr ("e"), or a note from the grid ("n").

    stdout and stderr entries carry where their bytes start in the attempt's output (both
    streams together, in the order they arrived): `at` bytes and `ln` newlines before them,
    so a reader sees exactly how much the broker did not keep between two entries.
    """

    kind: str
    data: bytes
    at: int | None = None
    ln: int | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"s": self.kind, "d": self.data}
        if self.at is not None:
            out["at"] = str(self.at)
            out["ln"] = str(self.ln or 0)
        return out

    @classmethod
    def note(cls, text: str) -> OutputEntry:
        return cls("n", text.encode())


@dataclass(frozen=True)
class EndMarker:
    """The last entry of an attempt's output: how it ended."""

    exit_code: int | None
    signal: int | None
    reason: str | None
    reason_kind: str | None

    def fields(self) -> dict[str, str]:
        return {"s": "x", "code": "" if self.exit_code is None else str(self.exit_code),
                "sig": "" if self.signal is None else str(self.signal),
                "reason": self.reason or "", "kind": self.reason_kind or ""}

    @classmethod
    def of(cls, result: Attempt) -> EndMarker:
        return cls(result.exit_code, result.signal, result.reason, result.reason_kind)


def decode_output(entry_id: bytes | str, fields: dict, key: str) -> OutputChunk:
    """One stream entry as an OutputChunk; an entry that is not one of ours becomes a note saying so."""
    eid = _text(entry_id)
    f = {_text(k): v for k, v in fields.items()}
    kind = _text(f.get("s") or b"o")
    if kind == "x":
        code, sig = _int(_text(f.get("code") or b"")), _int(_text(f.get("sig") or b""))
        reason = _text(f.get("reason") or b"")[:4096] or None
        return OutputChunk(id=eid, stream="end", exit_code=code, signal=sig if sig is None or 0 <= sig <= 255 else None,
                           reason=reason)
    stream = OUTPUT_KINDS.get(kind)
    data = f.get("d") or b""
    data = data if isinstance(data, bytes) else str(data).encode()
    if stream is None:
        return OutputChunk(id=eid, stream="note", data=str(CorruptRecord(key, "s", f"unknown kind {kind[:20]!r}")).encode())
    if len(data) > OUTPUT_ENTRY_MAX:
        note = CorruptRecord(key, "d", f"{len(data)} bytes in one entry; shown cut to {OUTPUT_ENTRY_MAX}")
        return OutputChunk(id=eid, stream=stream, data=data[:OUTPUT_ENTRY_MAX] + b"\n[grid] " + str(note).encode())
    at, ln = _offset(f.get("at")), _offset(f.get("ln"))
    if stream == "note" or at is None or ln is None:
        return OutputChunk(id=eid, stream=stream, data=data)
    return OutputChunk(id=eid, stream=stream, data=data, offset=at, line=ln)


def _offset(raw: Any) -> int | None:
    value = _int(_text(raw)[:20]) if raw is not None else None
    return value if value is not None and 0 <= value <= OFFSET_MAX else None


class Gaps:
    """Follows a job's output entries and says where the broker kept no bytes between two of them."""

    def __init__(self) -> None:
        self.at: int | None = None  # where the next entry should start, were nothing left out
        self.ln = 0
        self.bytes = 0  # every gap seen so far, together
        self.lines = 0

    def gap(self, chunk: OutputChunk) -> tuple[int, int] | None:
        """(bytes, lines) left out right before `chunk` (stdout or stderr), or None."""
        if chunk.offset is None or chunk.line is None:
            return None
        found = None
        if self.at is not None and chunk.offset > self.at:
            found = (chunk.offset - self.at, max(0, chunk.line - self.ln))
            self.bytes += found[0]
            self.lines += found[1]
        self.at = chunk.offset + len(chunk.data)
        self.ln = chunk.line + chunk.data.count(b"\n")
        return found


@dataclass(frozen=True)
class EventEntry:
    """One entry of the grid's event stream."""

    time: float
    kind: str
    job: str | None
    node: str | None
    message: str

    MAX_MESSAGE: ClassVar[int] = 500

    def fields(self) -> dict[str, str]:
        return {"t": f"{self.time:.6f}", "kind": self.kind, "job": self.job or "", "node": self.node or "",
                "msg": self.message[: self.MAX_MESSAGE]}

    @classmethod
    def decode(cls, fields: dict) -> EventEntry:
        f = {_text(k): _text(v) for k, v in fields.items()}
        return cls(time=_positive(f.get("t")) or 0.0, kind=(f.get("kind") or "")[:64], job=(f.get("job") or "")[:256] or None,
                   node=(f.get("node") or "")[:256] or None, message=(f.get("msg") or "")[: cls.MAX_MESSAGE])
