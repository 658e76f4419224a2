"""Records of a node (its hash: inventory, load, heartbeat fields) and of a sweep group."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import Field

from gridcore.models import GpuInfo
from gridcore.records.base import CorruptRecord, Count, JsonRecord, Line, Name, _count, _json_list, _positive, _text, lenient


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


NODE_SLOTS = "slots"
"""The field of a node's hash with its number of worker slots (its agent writes it)."""
NODE_DRAINING = "draining"
"""The field of a node's hash that is "1" while the node takes no new job (`NodeRecord.drain_fields`)."""
NODE_FIELDS = ("inventory", "load", NODE_SLOTS, "hb_interval", "node_timeout", "agent_pid", "agent_id", "hostname",
               "queues", "started", "ready", NODE_DRAINING, "drain_reason", "version", "beat")
"""The fields of a node's hash."""


@dataclass(frozen=True)
class NodeRecord:
    """A node's hash: inventory and load (JSON), heartbeat settings, slots, drain flag.

    Decoded field by field: one bad field (its node or an operator may write anything there) blanks that
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
    beat: float | None = None  # the last heartbeat (broker time): written by the node alone
    problems: tuple[str, ...] = ()

    def encode(self) -> dict[str, str]:
        """The heartbeat's fields (without `draining`, which operators set)."""
        return {
            "inventory": self.inventory.encode(), "load": self.load.encode(), NODE_SLOTS: str(self.slots),
            "hb_interval": repr(self.hb_interval), "node_timeout": repr(self.node_timeout),
            "agent_pid": "" if self.agent_pid is None else str(self.agent_pid), "agent_id": self.agent_id or "",
            "hostname": self.hostname or "", "queues": json.dumps(list(self.queues)),
            "started": "" if self.started is None else repr(self.started), "ready": self.ready,
            "version": self.version or "", "beat": "" if self.beat is None else repr(self.beat),
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
        for name, conv in ((NODE_SLOTS, _count), ("hb_interval", _positive), ("node_timeout", _positive),
                           ("agent_pid", _count), ("started", _positive), ("beat", _positive)):
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
        out["draining"] = h.get(NODE_DRAINING) == "1"
        return cls(**out, problems=tuple(problems))

    def age(self, now: float, registered: float | None = None) -> float | None:
        """Seconds since the node's last heartbeat at broker time `now`; None if it never beat.

        An agent of an earlier version (mid rolling upgrade) writes no `beat`, only the registry
        score `registered`: that is believed for a node whose own hash has an agent's `agent_id`
        and no `beat` (a name anyone added, with no hash of its own, stays down)."""
        if self.beat is not None:
            return now - self.beat
        return now - registered if registered is not None and self.agent_id else None

    @staticmethod
    def drain_fields(draining: bool, reason: str = "") -> dict[str, str]:
        """The fields an operator sets to drain a node (with why) or to let it take jobs again."""
        if not draining:  # the reason goes too (HDEL): see gridcore/control.py
            return {NODE_DRAINING: "0"}
        return {NODE_DRAINING: "1", "drain_reason": reason[:256]}

    @staticmethod
    def draining_read(raw: bytes | None) -> bool:
        """Whether the raw `draining` field read off a node's hash says it drains."""
        return raw == b"1"

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
            except (ValueError, RecursionError):  # deep nesting: written by no agent
                parsed = None
        return cls(name=(h.get("name") or group_id)[:256], size=_count(h.get("size")) or 0,
                   submitted=_positive(h.get("submitted")) or 0.0, max_parallel=_count(h.get("max_parallel")) or 0,
                   submitter=(h.get("submitter") or "")[:256],
                   axes=parsed if isinstance(parsed, (dict, list)) else {})
