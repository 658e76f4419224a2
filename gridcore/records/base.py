"""The base of every record: CorruptRecord, bounded field types, JsonRecord and its decodings."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import re

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError



class CorruptRecord(ValueError):
    """A record read from the broker is too large, not of its shape, or has a bad field."""

    def __init__(self, key: str, field: str, problem: str):
        self.key, self.field, self.problem = key, field, problem
        where = f"{key} field {field}" if field else key
        super().__init__(f"corrupt record {where}: {problem}")


# ---- field types ---------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(max_length=256)]
"""Ids, node, queue, worker and label names."""
JOB_ID_PATTERN = r"[A-Za-z0-9_-]{1,256}"
"""A job id: what RQ accepts as one (bounded), so also a name a node can make a file or a
cgroup of (no `/`, no `..`, nothing a terminal or a shell reads)."""
JobId = Annotated[str, StringConstraints(pattern=f"^{JOB_ID_PATTERN}$")]
_JOB_ID = re.compile(JOB_ID_PATTERN)


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None
Line = Annotated[str, StringConstraints(max_length=4096)]
"""A reason, a path, a command preview line."""
Blob = Annotated[str, StringConstraints(max_length=64 * 1024)]
"""Output tails and commands."""
Count = Annotated[int, Field(ge=0, le=2**53)]
Stamp = Annotated[float, Field(ge=0, le=1e11)]
"""Seconds since the epoch by the broker's clock."""
Seconds = Annotated[float, Field(ge=0, le=1e11)]
ExitCode = Annotated[int, Field(ge=-(2**31), le=2**31)]
Signal = Annotated[int, Field(ge=0, le=255)]
SlotIndex = Annotated[int, Field(ge=0, le=1 << 20)]
Priority = Annotated[int, Field(ge=-(2**31), le=2**31)]

ReasonKind = Literal["exit", "signal", "timeout", "oom", "lost", "dependency", "refused", "canceled", "error"]
REASON_KINDS: tuple[str, ...] = ReasonKind.__args__
"""Values of a result's `reason_kind`: why a job did not finish with exit code 0."""

R = TypeVar("R", bound="JsonRecord")


class JsonRecord(BaseModel):
    """A record stored as one JSON object; subclasses set MAX_BYTES."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False, defer_build=True)
    MAX_BYTES: ClassVar[int] = 16 * 1024

    def encode(self) -> str:
        return self.model_dump_json()

    @classmethod
    def decode(cls: type[R], raw: bytes | str | None, key: str) -> R:
        """The record from its stored bytes; CorruptRecord names what is wrong."""
        if raw is None:
            raise CorruptRecord(key, "", "missing")
        if len(raw) > cls.MAX_BYTES:
            raise CorruptRecord(key, "", f"{len(raw)} bytes, more than the {cls.MAX_BYTES} a {cls.__name__} may have")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            raise _corrupt(key, e) from None

    @classmethod
    def from_dict(cls: type[R], data: Any, key: str) -> R:
        """The record from an already parsed value (a field of a larger record)."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise _corrupt(key, e) from None


def _corrupt(key: str, e: ValidationError) -> CorruptRecord:
    first = e.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    return CorruptRecord(key, field, first["msg"])


def lenient(cls: type[R], raw: bytes | str | None, key: str, problems: list[str] | None = None) -> R | None:
    """`cls.decode`, or None for a missing or corrupt record (its problem appended to `problems`)."""
    if raw is None:
        return None
    try:
        return cls.decode(raw, key)
    except CorruptRecord as e:
        if problems is not None:
            problems.append(str(e))
        return None


def salvage(cls: type[R], raw: bytes | str | None, key: str, problems: list[str]) -> R | None:
    """`cls.decode`, keeping what can be read: each bad top-level field is dropped and named in
    `problems`; None for a missing record, or one that is not a readable JSON object at all."""
    if raw is None:
        return None
    try:
        return cls.decode(raw, key)
    except CorruptRecord as first:
        data = None
        if len(raw) <= cls.MAX_BYTES:
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                data = None
        if not isinstance(data, dict):
            problems.append(str(first))
            return None
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        bad = {str(err["loc"][0]): err["msg"] for err in e.errors() if err["loc"]}
    problems.extend(str(CorruptRecord(key, field, msg)) for field, msg in bad.items())
    try:
        return cls.model_validate({k: v for k, v in data.items() if k not in bad})
    except ValidationError:
        return None  # a required field is among the bad ones


def text(v: bytes | str | None) -> str:
    """A string from the broker (ids, names, RQ's own fields) as text; bad UTF-8 replaced."""
    return _text(v)


def _text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v not in (None, "") and len(v) <= 20 else None
    except ValueError:
        return None


def _count(v: str | None) -> int | None:
    n = _int(v)
    return n if n is not None and 0 <= n <= 2**53 else None


def _positive(v: str | None) -> float | None:
    try:
        f = float(v) if v not in (None, "") and len(v) <= 40 else None
    except ValueError:
        return None
    return f if f is not None and 0 <= f <= 1e11 else None


def _json_list(v: str) -> list | None:
    if len(v) > 64 * 1024:
        return None
    try:
        parsed = json.loads(v)
    except (ValueError, RecursionError):  # deep nesting: written by no agent
        return None
    return parsed if isinstance(parsed, list) else None
