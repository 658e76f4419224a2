"""Records of a job: its signed envelope, its meta, a running attempt's entries, its attempts and result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, StringConstraints

from gridcore.models import Resources
from gridcore.records.base import Blob, Count, ExitCode, JobId, JsonRecord, Line, Name, Priority, ReasonKind, Seconds, Signal, SlotIndex, Stamp, _int, _text


class ResourcesRecord(JsonRecord):
    cpus: Annotated[float, Field(ge=0, le=1 << 20)] = 1.0
    gpus: Annotated[int, Field(ge=0, le=1024)] = 0
    memory: Count = 0
    labels: Annotated[list[Name], Field(max_length=64)] = []
    node: Name | None = None

    def resources(self) -> Resources:
        return Resources(cpus=self.cpus, gpus=self.gpus, memory=self.memory, labels=tuple(self.labels),
                         node=self.node)

    @classmethod
    def of(cls, res: Resources) -> ResourcesRecord:
        return cls(cpus=res.cpus, gpus=res.gpus, memory=res.memory, labels=list(res.labels), node=res.node)


ENVELOPE_VERSION = 2
"""Format of the signed envelope this code writes. v2: env values other than a sweep's
GRID_SWEEP_* are sealed outside the envelope (gridcore/secretenv.py), which signs their digest."""

ENVELOPE_VERSIONS_RUN = (1, 2)
"""Formats a node runs: v1 (env values inline) stays valid until its envelopes expire."""


class Envelope(JsonRecord):
    """What a submitter signed: everything that decides what runs, where and how often."""

    MAX_BYTES: ClassVar[int] = 1024 * 1024
    v: int
    job_id: JobId
    command: Annotated[str, StringConstraints(max_length=256 * 1024)] | None = None
    argv: Annotated[list[Annotated[str, StringConstraints(max_length=128 * 1024)]], Field(max_length=4096)] | None = None
    cwd: Line | None = None
    env: Annotated[dict[Name, Annotated[str, StringConstraints(max_length=128 * 1024)]], Field(max_length=1024)] = {}
    env_names: Annotated[list[Name], Field(max_length=1024)] = []  # variables sealed in SecretEnv (v2)
    env_digest: Annotated[str, StringConstraints(max_length=128)] | None = None  # its SecretEnv's digest
    timeout: Annotated[float, Field(gt=0, le=1e9)] | None = None
    resources: ResourcesRecord = ResourcesRecord()
    queue: Name  # where it was routed: the job's queue, or grid.pending for the placement pass
    job_queue: Name | None = None  # the queue the submitter chose (a node must serve it)
    after: Annotated[list[Name], Field(max_length=4096)] = []  # parents that must have ended first
    after_on: Literal["success", "any"] = "success"
    submitter: Name = ""
    issued_at: Stamp
    expires_at: Stamp
    nonce: Annotated[str, StringConstraints(min_length=16, max_length=128)]
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 1


class SecretEnv(JsonRecord):
    """A job's sealed env values (`gridsecret:env:<id>`): the salt keeps the signed digest from
    telling a reader of the envelope whether a guessed value is right."""

    MAX_BYTES: ClassVar[int] = 1024 * 1024
    salt: Annotated[str, StringConstraints(min_length=16, max_length=128)]
    env: Annotated[dict[Name, Annotated[str, StringConstraints(max_length=128 * 1024)]], Field(max_length=1024)]


class SignedEnvelope(JsonRecord):
    """The RQ job's only argument: the envelope's exact text, its signature and key id."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    MAX_BYTES: ClassVar[int] = 2 * 1024 * 1024
    envelope: Annotated[str, StringConstraints(max_length=1024 * 1024)]
    sig: Annotated[str, StringConstraints(max_length=256)]
    kid: Annotated[str, StringConstraints(max_length=256)]


class Placement(JsonRecord):
    """Where the placement pass put a job, and which GPU indices it holds there."""

    node: Name
    gpus: Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(max_length=1024)] = []


class ActiveEntry(JsonRecord):
    """A running attempt: which slot of which node runs it. The one owner of a job while it runs."""

    MAX_BYTES: ClassVar[int] = 4096
    node: Name
    slot: SlotIndex
    worker: Name
    started: Stamp
    gpus: Annotated[list[Name], Field(max_length=1024)] = []

    def owned_by(self, worker: str) -> bool:
        return self.worker == worker


OWNER_FN = """
local function owner_of(active_key, id)
  -- the worker name in the job's active entry; nil: no entry; false: an unreadable one
  local raw = redis.call('HGET', active_key, id)
  if not raw then return nil end
  local ok, run = pcall(cjson.decode, raw)
  if ok and type(run) == 'table' and type(run['worker']) == 'string' then return run['worker'] end
  return false
end
"""
"""Lua: the ownership check of ActiveEntry.owned_by, for every script that needs it."""


class JobMeta(JsonRecord):
    """The grid's part of an RQ job record (its `meta`): what listings show and placement reads.

    Not signed: what decides what runs is in the envelope. Written by the submitter, updated
    by the placement pass (`placement`), the slot (`run`) and node-loss recovery (`lost`,
    `lost_on`, `lost_at`).
    """

    MAX_BYTES: ClassVar[int] = 64 * 1024
    grid: int = 1
    name: Line = ""
    command: Blob = ""
    submitter: Name | None = None
    submitted: Stamp | None = None
    resources: ResourcesRecord = ResourcesRecord()
    tags: Annotated[list[Name], Field(max_length=64)] = []
    group: Name | None = None
    params: Annotated[dict[Name, Any], Field(max_length=256)] = {}
    priority: Priority = 0
    retries: Annotated[int, Field(ge=0, le=1000)] = 0
    retry_backoff: Annotated[list[Annotated[int, Field(ge=0, le=10**8)]], Field(max_length=1000)] = []
    after_on: Literal["success", "any"] = "success"
    timeout: Annotated[float, Field(gt=0, le=1e9)] | None = None
    queue: Name = "default"
    max_parallel: Annotated[int, Field(ge=0, le=1 << 20)] | None = None
    placement: Placement | None = None
    run: ActiveEntry | None = None
    lost: Annotated[int, Field(ge=0, le=1000)] = 0
    lost_on: Name | None = None  # the node of the last lost attempt: its rerun prefers another (agent/rerun.py)
    lost_at: Stamp | None = None
    reason: Line | None = None
    requeued_by: Name | None = None


class Usage(JsonRecord):
    """What one attempt used, measured on its node (absent figures: the node could not tell)."""

    wall: Seconds | None = None
    cpu_user: Seconds | None = None  # the whole process tree, waited-for children and not
    cpu_system: Seconds | None = None
    memory_peak: Count | None = None  # bytes resident, the tree's peak
    memory_source: Literal["cgroup", "sampled"] | None = None
    io_read: Count | None = None  # bytes
    io_write: Count | None = None
    gpu_memory_peak: Count | None = None  # bytes, the job's processes on its GPUs
    gpu_utilization: Annotated[float, Field(ge=0, le=100)] | None = None  # mean percent
    samples: Count | None = None


class AttemptProof(JsonRecord):
    """A node's signature over what it says about one attempt (gridcore/nodekeys.py)."""

    claim: Annotated[str, StringConstraints(max_length=8192)]
    sig: Annotated[str, StringConstraints(max_length=256)]
    kid: Annotated[str, StringConstraints(max_length=256)]


class CancelProof(JsonRecord):
    """An operator's signature over a cancel (gridcore/cancelproof.py): the job's cancel flag."""

    MAX_BYTES: ClassVar[int] = 8192
    statement: Annotated[str, StringConstraints(max_length=4096)]
    sig: Annotated[str, StringConstraints(max_length=256)]
    kid: Annotated[str, StringConstraints(max_length=256)]


class Attempt(JsonRecord):
    """How one attempt of a job ended (one per attempt, oldest first)."""

    node: Name | None = None
    slot: SlotIndex | None = None
    start: Stamp | None = None
    end: Stamp | None = None
    duration: Seconds | None = None
    exit_code: ExitCode | None = None
    signal: Signal | None = None
    reason: Line | None = None
    reason_kind: ReasonKind | None = None
    run_id: Name | None = None
    usage: Usage | None = None
    proof: AttemptProof | None = None  # the node's signature of this attempt's claim


class Result(Attempt):
    """The job's small result record: its last attempt's end, with the tails of its output."""

    MAX_BYTES: ClassVar[int] = 512 * 1024
    detail: Line | None = None
    stdout: Blob = ""
    stderr: Blob = ""
    stdout_bytes: Count = 0
    stderr_bytes: Count = 0
    dropped_bytes: Count = 0
    log_path: Line | None = None
    log_truncated: bool = False
    memory_peak: Count | None = None
    killed_processes: Count | None = None
    survivors: Annotated[list[Annotated[int, Field(ge=0, le=1 << 32)]], Field(max_length=1024)] = []
    oom_kills: Count | None = None
    gpus: Annotated[list[Name], Field(max_length=1024)] = []

    def attempt(self, **changes: Any) -> Attempt:
        """This result's Attempt record (the fields every attempt keeps)."""
        data = {name: getattr(self, name) for name in Attempt.model_fields}
        data.update(changes)
        return Attempt(**data)


class HeldEntry(JsonRecord):
    """What a running or placed job holds on its node. Lua sums these (gridcore/reservations.py)."""

    MAX_BYTES: ClassVar[int] = 4096
    cpus: Annotated[float, Field(ge=0, le=1 << 20)] = 0.0
    memory: Count = 0
    gpus: Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(max_length=1024)] = []


CLAIM = "claim:"
"""Running-hash value of a job a slot took off a queue and has not started yet: claim:<worker>."""
ENDED = "ended:"
"""Running-hash value of a job whose end is recorded, RQ's bookkeeping pending: ended:<worker>."""


@dataclass(frozen=True)
class RunningEntry:
    """A job's entry in its node's running hash: claimed -> started (slot index) -> ended -> gone."""

    phase: Literal["claimed", "started", "ended"]
    worker: str | None = None  # claimed and ended
    slot: int | None = None  # started

    def encode(self) -> str:
        if self.phase == "claimed":
            return CLAIM + (self.worker or "")
        if self.phase == "ended":
            return ENDED + (self.worker or "")
        return str(self.slot)

    @classmethod
    def decode(cls, raw: bytes | str) -> RunningEntry:
        v = _text(raw)
        if v.startswith(CLAIM):
            return cls("claimed", worker=v[len(CLAIM):])
        if v.startswith(ENDED):
            return cls("ended", worker=v[len(ENDED):])
        return cls("started", slot=_int(v))
