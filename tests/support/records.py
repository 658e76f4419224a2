"""Broker records for tests to plant, built through gridcore.records (never hand-written JSON),
so a test's record has the shape the agent's has, and changes with it.

Deliberately malformed records (tests/console/test_hostile.py) are the exception: they are
written raw on purpose.
"""

from __future__ import annotations

from typing import Any

import redis

from gridcore import history, keys
from gridcore.records import FinishedEntry, GpuRecord, Inventory, Load, NodeRecord, ResourcesRecord, Result, Usage


def node_record(**over: Any) -> NodeRecord:
    """A node as its agent describes it: 8 CPUs, 16 GiB, one Test GPU at 40 %, label "big",
    4 slots serving "default", heartbeat every 2 s; fields overridden by `over`."""
    gpu = GpuRecord(index=0, name="Test GPU", memory_total=2**33)
    fields: dict[str, Any] = dict(
        inventory=Inventory(cpus=8, memory_total=2**34, labels=["big"], gpus=[gpu]),
        # The load repeats the GPU's name and size: Grid.nodes lays every load field over the inventory's.
        load=Load(loadavg=[0.5, 0.4, 0.3], memory_used=2**30, gpus=[gpu.model_copy(update={"utilization": 40})]),
        slots=4, hb_interval=2.0, node_timeout=30.0, agent_pid=123, agent_id="abc", hostname="h",
        queues=("default",), started=1.0,
    )
    return NodeRecord(**(fields | over))


def put_node(r: redis.Redis, name: str, heartbeat: float, record: NodeRecord | None = None) -> None:
    """Node `name`'s hash from `record` (node_record() if None) with its last heartbeat at broker
    time `heartbeat`; its drain flag and reason written as an operator's drain writes them."""
    record = record or node_record()
    fields = record.encode() | {"draining": "1" if record.draining else "0", "beat": repr(heartbeat)}
    if record.drain_reason:
        fields["drain_reason"] = record.drain_reason
    with r.pipeline() as pipe:
        pipe.zadd(keys.NODES, {name: heartbeat})
        pipe.hset(keys.node(name), mapping=fields)
        pipe.execute()


def put_result(r: redis.Redis, job_id: str, **fields: Any) -> Result:
    """Job `job_id`'s result record with `fields` (the rest their defaults); returns it."""
    result = Result(**fields)
    r.set(keys.result(job_id), result.encode())
    return result


def get_result(r: redis.Redis, job_id: str) -> Result:
    """Job `job_id`'s result record as the broker holds it, decoded (CorruptRecord if it is not one)."""
    return Result.decode(r.get(keys.result(job_id)), keys.result(job_id))


def finished_entry(job_id: str, **over: Any) -> FinishedEntry:
    """An attempt of job `job_id` as the history keeps it: alice's 10-minute job on node-a, exit 0,
    asking 2 CPUs and 4 GiB, that used 900 CPU-seconds and a 1 GiB peak; fields overridden by `over`."""
    fields: dict[str, Any] = dict(
        job_id=job_id, attempt=f"run-{job_id}", outcome="finished", name=f"job {job_id}", command="python train.py",
        submitter="alice@ws1", queue="default", node="node-a", slot=0, submitted=1000.0, start=1000.0, end=1600.0,
        duration=600.0, exit_code=0, requested=ResourcesRecord(cpus=2, memory=4 * 2**30),
        usage=Usage(wall=600.0, cpu_user=800.0, cpu_system=100.0, memory_peak=2**30, memory_source="sampled"),
    )
    return FinishedEntry(**(fields | over))


def put_finished(r: redis.Redis, *entries: FinishedEntry) -> None:
    """Append ended attempts to the broker's history stream, as the agent does at each end."""
    with r.pipeline() as pipe:
        for e in entries:
            history.append(pipe, e)
        pipe.execute()
