"""Every record that crosses the broker: one class each, its encoding, and a bounded,
validating decoding.

Whoever can write to the broker can write any of these, so a decoding checks the size before
it parses, then the shape and every field's type and range, and raises one `CorruptRecord`
naming the key and the field. Unknown fields are ignored (a newer agent may add some while
nodes are upgraded one at a time); missing optional ones take their defaults.

Where each record lives (keys in gridcore/keys.py) and its wire form:

| record        | key                                   | form                                  |
|---------------|---------------------------------------|---------------------------------------|
| `SignedEnvelope` | the RQ job's single argument       | {"envelope": JSON text, "sig", "kid"} |
| `Envelope`    | inside it (the signed text)           | JSON object                           |
| `JobMeta`     | `rq:job:<id>` field `meta`            | JSON object                           |
| `ActiveEntry` | `grid:active` field `<id>`            | JSON object                           |
| `Attempt`     | `grid:attempts:<id>` list items       | JSON object                           |
| `Result`      | `grid:result:<id>`                    | JSON object (an Attempt and more)     |
| `HeldEntry`   | `grid:node:<n>:held` field `<id>`     | JSON object, also read by Lua         |
| `NodeRecord`  | `grid:node:<n>` hash                  | fields below; inventory/load JSON     |
| `GroupRecord` | `grid:group:<id>` hash                | fields below                          |
| `EventEntry`  | `grid:events` stream entries          | t, kind, job, node, msg               |
| `OutputEntry`, `EndMarker` | `grid:out:<id>` stream entries | one-letter fields, below        |
| `RunningEntry`| `grid:node:<n>:running` field `<id>`  | "claim:<worker>", "<slot>", "ended:<worker>" |

Output stream entry fields (one letter: there are millions of these):
    s     what the entry is: "o" stdout bytes, "e" stderr bytes, "n" a note from the grid
          (plain text), "x" the end marker
    d     the bytes (o, e, n)
    code  end marker: exit code, "" when killed by a signal or never started
    sig   end marker: signal number, "" when none
    reason, kind   end marker: why it failed (plain words) and the reason kind, "" when none
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gridcore.models import GpuInfo, OutputChunk, Resources


class CorruptRecord(ValueError):
    """A record read from the broker is too large, not of its shape, or has a bad field."""

    def __init__(self, key: str, field: str, problem: str):
        self.key, self.field, self.problem = key, field, problem
        where = f"{key} field {field}" if field else key
        super().__init__(f"corrupt record {where}: {problem}")


# ---- field types ---------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(max_length=256)]
"""Ids, node, queue, worker and label names."""
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

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)
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


# ---- jobs ----------------------------------------------------------------------------------


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


ENVELOPE_VERSION = 1
"""Format of the signed envelope this code writes and the only one it runs."""


class Envelope(JsonRecord):
    """What a submitter signed: everything that decides what runs, where and how often."""

    MAX_BYTES: ClassVar[int] = 1024 * 1024
    v: int
    job_id: Name
    command: Annotated[str, StringConstraints(max_length=256 * 1024)] | None = None
    argv: Annotated[list[Annotated[str, StringConstraints(max_length=128 * 1024)]], Field(max_length=4096)] | None = None
    cwd: Line | None = None
    env: Annotated[dict[Name, Annotated[str, StringConstraints(max_length=128 * 1024)]], Field(max_length=1024)] = {}
    timeout: Annotated[float, Field(gt=0, le=1e9)] | None = None
    resources: ResourcesRecord = ResourcesRecord()
    queue: Name
    submitter: Name = ""
    issued_at: Stamp
    expires_at: Stamp
    nonce: Annotated[str, StringConstraints(min_length=16, max_length=128)]
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 1


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
    by the placement pass (`placement`), the slot (`run`) and node-loss recovery (`lost`).
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


# ---- nodes ---------------------------------------------------------------------------------


class GpuRecord(JsonRecord):
    index: Annotated[int, Field(ge=0, le=1024)]
    name: Line = ""
    uuid: Name | None = None
    memory_total: Count | None = None
    memory_used: Count | None = None
    utilization: Annotated[int, Field(ge=0, le=100)] | None = None


class Inventory(JsonRecord):
    """What a node has; published at the agent's start."""

    MAX_BYTES: ClassVar[int] = 256 * 1024
    cpus: Annotated[int, Field(ge=0, le=1 << 20)] = 0
    cpus_physical: Annotated[int, Field(ge=0, le=1 << 20)] | None = None
    cpu_model: Line = ""
    memory_total: Count = 0
    disk_total: Count = 0
    gpus: Annotated[list[GpuRecord], Field(max_length=1024)] = []
    driver_version: Name | None = None
    cuda_version: Name | None = None
    labels: Annotated[list[Name], Field(max_length=1024)] = []
    os: Line = ""
    python: Name = ""


class Load(JsonRecord):
    """How busy a node is; published with every heartbeat."""

    MAX_BYTES: ClassVar[int] = 256 * 1024
    loadavg: Annotated[list[Annotated[float, Field(ge=0, le=1e9)]], Field(max_length=3)] = []
    cpu_percent: Annotated[float, Field(ge=0, le=1e6)] | None = None
    memory_used: Count | None = None
    memory_available: Count | None = None
    disk_used: Count | None = None
    gpus: Annotated[list[GpuRecord], Field(max_length=1024)] = []


NODE_FIELDS = ("inventory", "load", "slots", "hb_interval", "node_timeout", "agent_pid", "agent_id", "hostname",
               "queues", "started", "ready", "draining", "drain_reason", "version")
"""The fields of a node's hash."""


@dataclass(frozen=True)
class NodeRecord:
    """A node's hash: inventory and load (JSON), heartbeat settings, slots, drain flag.

    Decoded field by field: one bad field (any agent may write any node's hash) blanks that
    field and is named in `problems`, never the whole node or the node list.
    """

    inventory: Inventory = Inventory()
    load: Load = Load()
    slots: int = 0
    hb_interval: float = 2.0
    node_timeout: float = 30.0
    agent_pid: int | None = None
    agent_id: str | None = None
    hostname: str | None = None
    queues: tuple[str, ...] = ()
    started: float | None = None
    ready: str = ""
    draining: bool = False
    drain_reason: str | None = None
    version: str | None = None  # the agent's package version (nodes are upgraded one at a time)
    problems: tuple[str, ...] = ()

    def encode(self) -> dict[str, str]:
        """The heartbeat's fields (without `draining`, which operators set)."""
        return {
            "inventory": self.inventory.encode(), "load": self.load.encode(), "slots": str(self.slots),
            "hb_interval": repr(self.hb_interval), "node_timeout": repr(self.node_timeout),
            "agent_pid": "" if self.agent_pid is None else str(self.agent_pid), "agent_id": self.agent_id or "",
            "hostname": self.hostname or "", "queues": json.dumps(list(self.queues)),
            "started": "" if self.started is None else repr(self.started), "ready": self.ready,
            "version": self.version or "",
        }

    @classmethod
    def decode(cls, fields: dict[bytes | str, bytes | str | None], key: str) -> NodeRecord:
        h = {_text(k): _text(v) for k, v in fields.items() if v is not None}
        problems: list[str] = []
        out: dict[str, Any] = {}
        inv = lenient(Inventory, h.get("inventory") or None, f"{key} inventory", problems)
        if inv is not None:
            out["inventory"] = inv
        load = lenient(Load, h.get("load") or None, f"{key} load", problems)
        if load is not None:
            out["load"] = load
        for name, conv in (("slots", _count), ("hb_interval", _positive), ("node_timeout", _positive),
                           ("agent_pid", _count), ("started", _positive)):
            raw = h.get(name)
            if raw in (None, ""):
                continue
            value = conv(raw)
            if value is None:
                problems.append(str(CorruptRecord(key, name, f"not a number: {raw[:40]!r}")))
            else:
                out[name] = value
        for name in ("agent_id", "hostname", "drain_reason", "ready", "version"):
            if h.get(name):
                out[name] = h[name][:256]
        if h.get("queues"):
            queues = _json_list(h["queues"])
            if queues is None:
                problems.append(str(CorruptRecord(key, "queues", "not a JSON list of names")))
            else:
                out["queues"] = tuple(str(q)[:256] for q in queues[:256])
        out["draining"] = h.get("draining") == "1"
        return cls(**out, problems=tuple(problems))

    @staticmethod
    def drain_fields(draining: bool, reason: str = "") -> dict[str, str]:
        """The fields an operator sets to drain a node (with why) or to let it take jobs again."""
        return {"draining": "1" if draining else "0", "drain_reason": reason[:256] if draining else ""}

    def gpus(self) -> tuple[GpuInfo, ...]:
        """The inventory's GPUs with their live memory and utilization from the load."""
        live = {g.index: g for g in self.load.gpus}
        out = []
        for g in self.inventory.gpus:
            now = live.get(g.index)
            out.append(GpuInfo(index=g.index, name=g.name or (now.name if now else ""), uuid=g.uuid,
                               memory_total=g.memory_total,
                               memory_used=now.memory_used if now else g.memory_used,
                               utilization=now.utilization if now else g.utilization))
        return tuple(out)


@dataclass(frozen=True)
class GroupRecord:
    """A sweep group's hash: its name, size, throttle, submitter and parameter axes."""

    name: str
    size: int
    submitted: float
    max_parallel: int
    submitter: str
    axes: dict[str, Any]

    def encode(self) -> dict[str, str]:
        return {"name": self.name, "size": str(self.size), "submitted": repr(self.submitted),
                "max_parallel": str(self.max_parallel), "submitter": self.submitter,
                "axes": json.dumps(self.axes)}

    @classmethod
    def decode(cls, fields: dict, key: str, group_id: str) -> GroupRecord:
        h = {_text(k): _text(v) for k, v in fields.items() if v is not None}
        axes = h.get("axes") or "{}"
        parsed = None
        if len(axes) <= 64 * 1024:
            try:
                parsed = json.loads(axes)
            except ValueError:
                parsed = None
        return cls(name=(h.get("name") or group_id)[:256], size=_count(h.get("size")) or 0,
                   submitted=_positive(h.get("submitted")) or 0.0, max_parallel=_count(h.get("max_parallel")) or 0,
                   submitter=(h.get("submitter") or "")[:256],
                   axes=parsed if isinstance(parsed, (dict, list)) else {})


# ---- streams -------------------------------------------------------------------------------

OUTPUT_KINDS = {"o": "stdout", "e": "stderr", "n": "note"}
"""Output entry `s` values -> the stream names OutputChunk uses (the end marker is "x")."""

OUTPUT_ENTRY_MAX = 1024 * 1024
"""Bytes of one output entry's data a reader accepts (the agent writes at most ~80 KiB)."""


@dataclass(frozen=True)
class OutputEntry:
    """Bytes of a job's stdout ("o"), stderr ("e"), or a note from the grid ("n")."""

    kind: str
    data: bytes

    def fields(self) -> dict[str, Any]:
        return {"s": self.kind, "d": self.data}

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
    return OutputChunk(id=eid, stream=stream, data=data)


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


# ---- the node's running hash ---------------------------------------------------------------

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


# ---- small coercions -----------------------------------------------------------------------


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
    except ValueError:
        return None
    return parsed if isinstance(parsed, list) else None
