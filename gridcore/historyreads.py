"""Jobs read from the history: for `grid ls --history` and `grid show` once the broker no longer
holds a job. The history is the store's rows plus the broker's history stream entries the
store has not taken yet (`grid history collect` not run since), each attempt once."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from gridcore import history
from gridcore.errors import AmbiguousId, JobNotFound
from gridcore.historystore import HistoryStore
from gridcore.models import Job, JobState
from gridcore.records import FinishedEntry

OUTCOME_STATE = {
    "finished": JobState.FINISHED, "failed": JobState.FAILED, "lost": JobState.FAILED, "refused": JobState.FAILED,
    "canceled": JobState.CANCELED, "requeued": JobState.QUEUED,
}
"""The state a job is shown in when its last recorded attempt ended so."""

STATE_OUTCOMES = {
    state: tuple(o for o, s in OUTCOME_STATE.items() if s is state) for state in set(OUTCOME_STATE.values())
}

SHORT_ID_MIN = 6
"""A short id names a job in the history as on the broker: 6 characters or more."""


def job_of(entries: Sequence[FinishedEntry]) -> Job:
    """A job as `grid show` prints it, from its attempts in the history (oldest first)."""
    last = entries[-1]
    return Job(
        id=last.job_id, name=last.name, state=OUTCOME_STATE[last.outcome], queue=last.queue, command=last.command,
        node=last.node, slot=last.slot, submitter=last.submitter, exit_code=last.exit_code, signal=last.signal,
        reason=last.reason, reason_kind=last.reason_kind, enqueued_at=last.submitted, started_at=last.start,
        ended_at=last.end, duration=last.duration, group=last.group, tags=tuple(last.tags),
        resources=last.requested.model_dump(), gpus=tuple(last.gpus),
        attempts=tuple(_attempt(e) for e in entries),
    )


def _attempt(e: FinishedEntry) -> dict:
    return {"node": e.node, "slot": e.slot, "start": e.start, "end": e.end, "duration": e.duration,
            "exit_code": e.exit_code, "signal": e.signal, "reason": e.reason, "reason_kind": e.reason_kind,
            "run_id": e.attempt, "usage": e.usage.model_dump(mode="json") if e.usage is not None else None}


def uncollected(conn: redis.Redis | None, store: HistoryStore, problems: list[str] | None = None) -> list[FinishedEntry]:
    """The stream's entries after the store's position, oldest first."""
    if conn is None:
        return []
    return [e for _, e in history.read(conn, store.position(), problems) if e is not None]


def get(conn: redis.Redis | None, store: HistoryStore, job_id: str) -> Job:
    """The job `job_id` (or the one job whose id starts with it) as the history has it; JobNotFound."""
    fresh = uncollected(conn, store)
    entries = _attempts_of(store, fresh, job_id)
    if not entries and len(job_id) >= SHORT_ID_MIN:
        ids = sorted(set(store.ids_starting(job_id)) | {e.job_id for e in fresh if e.job_id.startswith(job_id)})
        if len(ids) > 1:
            raise AmbiguousId(job_id, ids)
        if ids:
            entries = _attempts_of(store, fresh, ids[0])
    if not entries:
        raise JobNotFound(f"no job {job_id!r} on this grid or in its history ({store.path})")
    return job_of(entries)


def _attempts_of(store: HistoryStore, fresh: list[FinishedEntry], job_id: str) -> list[FinishedEntry]:
    seen = {e.key: e for e in store.job(job_id)}
    for e in fresh:
        if e.job_id == job_id:
            seen.setdefault(e.key, e)
    return sorted(seen.values(), key=lambda e: e.end)


def jobs(conn: redis.Redis | None, store: HistoryStore, state: JobState | None = None, queue: str | None = None,
         node: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Job], int]:
    """(a page of the history's jobs by their last attempt, newest end first; how many match)."""
    outcomes = STATE_OUTCOMES.get(state, ("-",)) if state is not None else ()
    kept, total = store.latest(outcomes, queue, node, limit=offset + limit)
    latest = {e.job_id: e for e in kept}
    stream = uncollected(conn, store)
    fresh = {e.job_id: e for e in stream}  # oldest first: each job's last one stays
    for jid, e in fresh.items():
        if (outcomes and e.outcome not in outcomes) or (queue is not None and e.queue != queue) or \
                (node is not None and e.node != node):
            continue
        if jid not in latest and not store.job(jid):
            total += 1
        if jid not in latest or latest[jid].end <= e.end:
            latest[jid] = e
    page = sorted(latest.values(), key=lambda e: e.end, reverse=True)[offset:offset + limit]
    return [job_of(_attempts_of(store, stream, e.job_id)) for e in page], total
