"""Waiting for jobs to end: woken by the grid's event stream, with a poll as the safety net.

Every end of a job (finished, failed, canceled, lost, refused) is an entry of `grid:events`,
written in the same transaction as the job's result. A waiter blocks on that stream (XREAD
BLOCK) and reads the jobs' states again when an end entry names one of them, so a result is
seen within a round trip of being written rather than at the next tick of a 100 ms poll. Other
entries (every start and end of a busy grid, the job's own start) only move the read on: a
re-read for each was a round trip per event, on the cores the awaited jobs run on. The newest
entry's id and the first states are read in one round trip; the states of a few jobs (FEW) are
sent with each blocking read, queued behind it, so the end is seen with its event. RQ's own
status can follow the end by a moment (the slot's bookkeeping): after an end event the states
are read again at short, doubling intervals until they agree. With no end seen for `poll`
seconds, or a broker that refuses the read (an ACL), the states are read anyway.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from gridcore import keys
from gridcore.errors import JobNotFound
from gridcore.models import JobState
from gridcore.records import EventEntry, text
from gridcore.views import job_state

END_EVENTS = frozenset({"finished", "failed", "canceled", "lost", "refused"})
"""Event kinds that may mean a job is over (a lost job may also be retried)."""

SOON = 0.002
"""Seconds before the first re-read after an end event whose state has not caught up."""

FEW = 32
"""Up to this many jobs, their states come back with every wake of the waiter's XREAD, in its
round trip: a job's end is seen with the event that woke the waiter, with no read after it.
Beyond, a wake by other jobs' events would read every state for nothing."""


def states(conn: redis.Redis, job_ids: Sequence[str]) -> dict[str, JobState]:
    """The jobs' states, in one round trip; a job that does not exist raises JobNotFound."""
    with conn.pipeline(transaction=False) as pipe:
        for jid in job_ids:
            pipe.hget(keys.rq_job(jid), "status")
        return _decoded(job_ids, pipe.execute())


def _first_read(conn: redis.Redis, job_ids: Sequence[str]) -> tuple[str | None, dict[str, JobState]]:
    """The newest event's id (None: not allowed to read events) and the jobs' states, in one
    round trip: the event id first, so an end written between the two reads is in the states
    or after that id."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.xrevrange(keys.EVENTS, count=1)
        for jid in job_ids:
            pipe.hget(keys.rq_job(jid), "status")
        newest, *raw = pipe.execute(raise_on_error=False)
    for reply in raw:
        if isinstance(reply, Exception):
            raise reply
    if isinstance(newest, redis.ResponseError):  # not allowed to read events: poll
        after = None
    elif isinstance(newest, Exception):
        raise newest
    else:
        after = text(newest[0][0]) if newest else "0-0"
    return after, _decoded(job_ids, raw)


def _decoded(job_ids: Sequence[str], raw: Sequence[bytes | None]) -> dict[str, JobState]:
    found: dict[str, JobState] = {}
    for jid, s in zip(job_ids, raw, strict=True):
        if s is None:
            raise JobNotFound(f"no job {jid!r} on this grid")
        found[jid] = job_state(jid, s)
    return found


def _next_events(conn: redis.Redis, after: str, block_ms: int,
                 job_ids: Sequence[str]) -> tuple[list, dict[str, JobState] | None]:
    """The events after `after` (blocking up to `block_ms`) and, when `job_ids` are given, their
    states read right after the events came: in one round trip, the reads queued on the
    connection behind the blocking XREAD, which the broker answers as soon as it returns."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.xread({keys.EVENTS: after}, count=1000, block=block_ms)
        for jid in job_ids:
            pipe.hget(keys.rq_job(jid), "status")
        got, *raw = pipe.execute(raise_on_error=False)
    for reply in (got, *raw):
        if isinstance(reply, Exception):
            raise reply
    return got or [], (_decoded(job_ids, raw) if job_ids else None)


def wait(conn: redis.Redis, job_ids: Sequence[str], timeout: float | None = None,
         poll: float = 0.5, since: str | None = None) -> dict[str, JobState]:
    """Block until every job is terminal (or `timeout` seconds); return their states.

    `since`: the id of an event written in the step that queued every one of these jobs (their
    submission's, gridcore/submission.py): none had ended then and every change since is an
    event after it, so the first read is skipped and the first blocking read starts there, their
    states coming with it (the round trip of the first read came while the job was being taken)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    guessed = since is not None and (timeout is None or timeout > 0)
    if guessed:
        # Not terminal, as known at `since`; read at the first wake (or at `poll`), never returned.
        after, now_states = since, dict.fromkeys(job_ids, JobState.QUEUED)
    else:
        after, now_states = _first_read(conn, job_ids)
    few = job_ids if len(job_ids) <= FEW else ()
    block = poll
    while True:
        pending = {j for j, s in now_states.items() if not s.terminal}
        if not pending:
            return now_states
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return states(conn, job_ids) if guessed else now_states
        due = time.monotonic() + (block if left is None else min(block, left))
        ended = False
        read: dict[str, JobState] | None = None
        # Beyond FEW jobs the states are read again only when an end of one of them is seen, or
        # at `due`: the events of other jobs (and these jobs' own starts) wake the read, not a
        # re-read of every state.
        while after is not None and not ended and read is None:
            rest = due - time.monotonic()
            if rest <= 0:
                break
            try:
                got, read = _next_events(conn, after, max(1, int(rest * 1000)), few)
            except redis.ResponseError:
                after = None
                break
            if not got and read is None:
                break  # `due`
            for _stream, entries in got:
                for eid, fields in entries:
                    after = text(eid)
                    event = EventEntry.decode(fields)
                    if event.job in pending and event.kind in END_EVENTS:
                        ended = True
        if after is None:
            time.sleep(max(0.0, due - time.monotonic()))
        # An end seen whose state has not caught up yet: look again soon, then less often.
        # A wake by other events that came with the states keeps the interval as it was.
        if ended or read is None or due <= time.monotonic():
            block = SOON if ended else (min(block * 2, poll) if block < poll else poll)
        now_states = read if read is not None else states(conn, job_ids)
        guessed = False
