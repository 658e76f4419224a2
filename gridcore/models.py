"""Models shared by the client, the agent and the console: frozen dataclasses and enums."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class JobState(str, enum.Enum):
    """States shown to users (RQ's statuses mapped onto the grid's words)."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELED)


# RQ status string -> grid state. "stopped" is a job killed by a stop command that the grid
# did not record as canceled (e.g. a plain `rq` user); it is a failure.
RQ_TO_STATE = {
    "queued": JobState.QUEUED,
    "scheduled": JobState.SCHEDULED,
    "deferred": JobState.WAITING,
    "started": JobState.RUNNING,
    "finished": JobState.FINISHED,
    "failed": JobState.FAILED,
    "stopped": JobState.FAILED,
    "canceled": JobState.CANCELED,
}


class NodeState(str, enum.Enum):
    UP = "up"
    STALE = "stale"
    DOWN = "down"
    DRAINING = "draining"


LOST_RETRIES = 1
"""Extra attempts a job gets when its node is lost (on top of its own retries)."""


def node_state(age: float | None, hb_interval: float, node_timeout: float, draining: bool) -> NodeState:
    """up / stale / down from heartbeat age (broker time); draining only while alive."""
    if age is None or age > node_timeout:
        return NodeState.DOWN
    if age > max(3 * hb_interval, 2.0):
        return NodeState.STALE
    return NodeState.DRAINING if draining else NodeState.UP


@dataclass(frozen=True)
class Resources:
    """What a job needs from a node."""

    cpus: float = 1.0
    gpus: int = 0
    memory: int = 0  # bytes; 0 = no requirement
    labels: tuple[str, ...] = ()
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Resources:
        d = d or {}
        return cls(
            cpus=float(d.get("cpus", 1.0)),
            gpus=int(d.get("gpus", 0)),
            memory=int(d.get("memory", 0)),
            labels=tuple(d.get("labels", ())),
            node=d.get("node"),
        )


@dataclass(frozen=True)
class JobSpec:
    """Everything a submitter decides about one job. Exactly one of command/argv is set."""

    command: str | None = None
    argv: tuple[str, ...] | None = None
    name: str | None = None
    queue: str = "default"
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # seconds; None = the grid default
    retries: int = 0
    retry_backoff: tuple[int, ...] = ()  # seconds between attempts (last value repeats)
    resources: Resources = field(default_factory=Resources)
    after: tuple[str, ...] = ()  # job ids this job waits for
    after_on: str = "success"  # "success" | "any"
    priority: int = 0
    tags: tuple[str, ...] = ()
    group: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # sweep cell parameters

    def __post_init__(self) -> None:
        if (self.command is None) == (self.argv is None):
            raise ValueError("a job needs exactly one of command or argv")
        if self.command is not None and not self.command.strip():
            raise ValueError("command is empty")
        if self.argv is not None and not self.argv:
            raise ValueError("argv is empty")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.after_on not in ("success", "any"):
            raise ValueError('after_on must be "success" or "any"')

    @property
    def display_command(self) -> str:
        if self.command is not None:
            return self.command
        import shlex

        return shlex.join(self.argv or ())


@dataclass(frozen=True)
class Job:
    """A job as read back from the broker (display-ready, untrusted strings)."""

    id: str
    name: str
    state: JobState
    queue: str
    command: str
    node: str | None = None
    slot: int | None = None
    submitter: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    reason_kind: str | None = None  # exit, signal, timeout, oom, lost, dependency, refused, canceled
    enqueued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    duration: float | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    dropped_bytes: int = 0
    log_path: str | None = None
    group: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retries_left: int | None = None
    attempts: tuple[dict[str, Any], ...] = ()
    waiting_on: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    usage: dict[str, Any] | None = None  # what its last attempt used (records.Usage), measured on the node
    problems: tuple[str, ...] = ()  # corrupt records read for this job, each naming its key and field
    signature: str = ""  # "verified: <signer>" / "NOT verified: <why>" for the envelope; "" not checked
    env_names: tuple[str, ...] = ()  # the variables its envelope sets: names only, never values
    cancel: str = ""  # a canceled job's cancel: "canceled by <key> (signature verified)" / "NOT verified: <why>"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        for k in ("tags", "attempts", "waiting_on", "gpus", "problems", "env_names"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str = ""
    uuid: str | None = None
    memory_total: int | None = None
    memory_used: int | None = None
    utilization: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuInfo:
        return cls(
            index=int(d.get("index", 0)),
            name=str(d.get("name", "")),
            uuid=d.get("uuid"),
            memory_total=d.get("memory_total"),
            memory_used=d.get("memory_used"),
            utilization=d.get("utilization"),
        )


@dataclass(frozen=True)
class Node:
    """A node as seen from its heartbeat and inventory hash."""

    name: str
    state: NodeState
    heartbeat_age: float | None
    cpus: int = 0
    cpus_physical: int | None = None
    cpu_model: str = ""
    load: tuple[float, ...] = ()
    cpu_percent: float | None = None
    memory_total: int = 0
    memory_used: int = 0
    disk_total: int = 0
    disk_used: int = 0
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    labels: tuple[str, ...] = ()
    slots_total: int = 0
    slots_busy: int = 0
    running: tuple[str, ...] = ()
    draining: bool = False
    drain_reason: str | None = None
    agent_pid: int | None = None
    hostname: str | None = None
    queues: tuple[str, ...] = ()
    started_at: float | None = None
    problems: tuple[str, ...] = ()  # fields of its hash that could not be read, each named
    version: str | None = None  # the node's grid-agent package version

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        for k in ("load", "labels", "running", "queues", "problems"):
            d[k] = list(d[k])
        d["gpus"] = [asdict(g) for g in self.gpus]
        return d


@dataclass(frozen=True)
class OutputChunk:
    """One entry of a job's output stream: stdout/stderr bytes, or the end marker."""

    id: str  # stream id, pass back to tail() to resume
    stream: str  # "stdout" | "stderr" | "end" | "note"
    data: bytes = b""
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    offset: int | None = None  # stdout/stderr: bytes of output (both streams) before this chunk
    line: int | None = None  # and newlines before it


@dataclass(frozen=True)
class QueueStats:
    """One queue's job counts by state and the workers listening on it."""

    name: str
    queued: int
    running: int
    scheduled: int
    waiting: int
    finished: int
    failed: int
    canceled: int
    workers: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Event:
    """One entry of the grid's event log, with its stream id."""

    id: str
    time: float
    kind: str
    job: str | None
    node: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
