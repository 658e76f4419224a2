"""The history stream's entry: one ended attempt, compact, self-contained (it outlives the job's records)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from gridcore.records.base import ExitCode, JsonRecord, Line, Name, ReasonKind, Seconds, Signal, SlotIndex, Stamp, _text
from gridcore.records.jobs import ResourcesRecord, Usage

Outcome = Literal["finished", "failed", "canceled", "lost", "refused", "requeued"]
"""How an attempt ended: exit 0, a failure, canceled, its node lost, refused before running, or
handed back by an agent shutdown (it runs again)."""

FIELD = "r"
"""The one field of a history stream entry: the FinishedEntry's JSON."""


class FinishedEntry(JsonRecord):
    """One ended attempt as the history keeps it: who, where, what it asked for, how it ended, what it used.

    `attempt` is the attempt's run id; an end without a run (refused, lost) uses `<outcome>@<end>`.
    Together with `job_id` it is the entry's identity: the store keeps one row per pair.
    """

    MAX_BYTES: ClassVar[int] = 32 * 1024
    job_id: Name
    attempt: Name
    outcome: Outcome
    name: Line = ""
    command: Line = ""  # the start of the job's command (gridcore.history.COMMAND_KEPT)
    submitter: Name | None = None
    queue: Name = ""
    group: Name | None = None
    tags: Annotated[list[Name], Field(max_length=64)] = []
    requested: ResourcesRecord = ResourcesRecord()
    node: Name | None = None
    slot: SlotIndex | None = None
    gpus: Annotated[list[Name], Field(max_length=1024)] = []
    submitted: Stamp | None = None
    start: Stamp | None = None
    end: Stamp
    duration: Seconds | None = None
    exit_code: ExitCode | None = None
    signal: Signal | None = None
    reason: Line | None = None
    reason_kind: ReasonKind | None = None
    usage: Usage | None = None

    @property
    def user(self) -> str:
        """The submitter's account (`alice` of `alice@host`): usage is by person, not by machine."""
        return (self.submitter or "").partition("@")[0]

    @property
    def key(self) -> tuple[str, str]:
        return (self.job_id, self.attempt)

    def fields(self) -> dict[str, str]:
        return {FIELD: self.encode()}

    @classmethod
    def from_fields(cls, fields: dict, key: str) -> FinishedEntry:
        """The entry from a stream entry's fields (CorruptRecord if it is not one)."""
        raw = next((v for k, v in fields.items() if _text(k) == FIELD), None)
        return cls.decode(raw, f"{key} field {FIELD}")
