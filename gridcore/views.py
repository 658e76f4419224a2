"""The display models built from broker records: a `Job` from its RQ hash, meta, result,
attempts and dependencies; a `Node` from its hash.

Anyone who can write to the broker can write any of these records, so each one is decoded
through gridcore/records/ and a bad one never fails the read: the model is built from what
could be read, and each problem (naming key and field) goes into its `problems`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gridcore import keys
from gridcore.models import RQ_TO_STATE, Job, JobState, Node, NodeState, node_state
from gridcore.records import NODE_DRAINING, Attempt, CorruptRecord, JobMeta, NodeRecord, Result, salvage, text
from gridcore.signedview import Signed, disagreements, signed_params

JOB_FIELDS = ("status", "origin", "meta", "description", "retries_left")
"""The fields of RQ's job hash a `Job` is made of."""

STATE_FIELDS = ("hb_interval", "node_timeout", NODE_DRAINING, "beat", "agent_id")
"""The node hash fields its state needs besides the heartbeat age."""


def job_state(job_id: str, status: bytes | str | None, problems: list[str] | None = None) -> JobState:
    """The grid's state for RQ's status; an unknown one reads as queued (and is named in `problems`)."""
    value = text(status)
    state = RQ_TO_STATE.get(value)
    if state is None:
        if problems is not None:
            problems.append(str(CorruptRecord(keys.rq_job(job_id), "status", f"unknown status {value[:40]!r}")))
        return JobState.QUEUED
    return state


def job_view(job_id: str, fields: Sequence[bytes | None], result: bytes | None,
             attempts: Sequence[bytes] | None = None, waiting_on: Sequence[bytes] = (),
             signed: Signed | None = None) -> Job:
    """One job from RQ's hash (`JOB_FIELDS`, in order), its result and, for detail, its attempts
    and the ids it waits on. With `signed` (its envelope as read and verified here) the job shows
    the signed command and sweep values, and a meta that disagrees is one of its problems."""
    problems: list[str] = []
    status, origin, meta_raw, description, retries_left = fields
    state = job_state(job_id, status, problems)
    meta = salvage(JobMeta, meta_raw or None, f"{keys.rq_job(job_id)} meta", problems)
    res = salvage(Result, result, keys.result(job_id), problems) or Result()
    # An unreadable attempt stays in the list (empty), so the attempts keep their numbers.
    tried = tuple((salvage(Attempt, a, keys.attempts(job_id), problems) or Attempt()).model_dump(mode="json")
                  for a in attempts or ())
    m = meta or JobMeta()
    run = m.run
    name, command, params = m.name or text(description)[:4096], m.command, dict(m.params)
    if signed is not None and signed.command is not None:
        problems += disagreements(job_id, signed, m.command, params)
        if name == m.command[:80]:  # a name made from the command: the signed one's
            name = signed.command[:80]
        command = signed.command
        params.update(signed_params(signed, params))
    queue = m.queue if meta is not None and "queue" in meta.model_fields_set else text(origin)
    return Job(
        id=job_id,
        name=name,
        state=state,
        queue=queue,
        command=command,
        node=res.node or (run.node if run else None),
        slot=res.slot if res.slot is not None else (run.slot if run else None),
        submitter=m.submitter,
        exit_code=res.exit_code,
        signal=res.signal,
        reason=res.reason or m.reason,
        reason_kind=res.reason_kind,
        enqueued_at=m.submitted,
        started_at=res.start or (run.started if run else None),
        ended_at=res.end,
        duration=res.duration,
        stdout=res.stdout,
        stderr=res.stderr,
        stdout_bytes=res.stdout_bytes,
        stderr_bytes=res.stderr_bytes,
        dropped_bytes=res.dropped_bytes,
        log_path=res.log_path,
        group=m.group,
        params=params,
        tags=tuple(m.tags),
        resources=m.resources.model_dump() if meta is not None else {},
        timeout=m.timeout,
        # RQ counts retries down as it schedules them; a job without retries has no counter.
        retries_left=_count(retries_left, m.retries if meta is not None else None),
        attempts=tried,
        waiting_on=tuple(sorted(text(x) for x in waiting_on)) if state is JobState.WAITING else (),
        gpus=tuple((run.gpus if run else None) or res.gpus),
        usage=res.usage.model_dump(mode="json", exclude_none=True) if res.usage is not None else None,
        problems=tuple(problems),
        signature=signed.signature if signed is not None else "",
        env_names=signed.env_names if signed is not None else (),
    )


def _count(raw: bytes | None, default: int | None) -> int | None:
    value = text(raw)
    return int(value) if value.isdigit() and len(value) < 10 else default


def node_view(name: str, fields: dict, running: Sequence[bytes], now: float, registered: float | None = None) -> Node:
    """One node from its hash (any of records.NODE_FIELDS) and its running jobs, at broker time
    `now` (`registered`: its registry score, see NodeRecord.age)."""
    rec = NodeRecord.decode(fields, keys.node(name))
    inv, load = rec.inventory, rec.load
    age = rec.age(now, registered)
    state = node_state(age, rec.hb_interval, rec.node_timeout, rec.draining)
    if state is NodeState.DOWN:
        # What a down node's keys still say it runs is no longer so: recovery reran those jobs
        # elsewhere without writing its keys, and the node drops the stale entries when it is back.
        running = ()
    return Node(
        name=name,
        state=state,
        heartbeat_age=None if age is None else max(age, 0.0),
        cpus=inv.cpus,
        cpus_physical=inv.cpus_physical,
        cpu_model=inv.cpu_model,
        load=tuple(load.loadavg),
        cpu_percent=load.cpu_percent,
        memory_total=inv.memory_total,
        memory_used=load.memory_used or 0,
        disk_total=inv.disk_total,
        disk_used=load.disk_used or 0,
        gpus=rec.gpus(),
        driver_version=inv.driver_version,
        cuda_version=inv.cuda_version,
        labels=tuple(inv.labels),
        slots_total=rec.slots,
        slots_busy=len(running),
        running=tuple(sorted(text(k) for k in running)),
        draining=rec.draining,
        drain_reason=rec.drain_reason,
        agent_pid=rec.agent_pid,
        hostname=rec.hostname,
        queues=rec.queues,
        started_at=rec.started,
        version=rec.version,
        problems=rec.problems,
    )


def node_view_state(name: str, fields: dict, now: float, registered: float | None = None) -> NodeState:
    """A node's state from its `STATE_FIELDS` alone at broker time `now`, as `node_view` gives it."""
    rec = NodeRecord.decode(fields, keys.node(name))
    return node_state(rec.age(now, registered), rec.hb_interval, rec.node_timeout, rec.draining)
