"""Waiting for jobs to end: woken by the grid's event stream, with a poll as the safety net.

Every end of a job (finished, failed, canceled, lost, refused) is an entry of `grid:events`,
written in the same transaction as the job's result. A waiter blocks on that stream (XREAD
BLOCK) and reads the jobs' states again when an entry names one of them, so a result is seen
within a round trip of being written rather than at the next tick of a 100 ms poll. RQ's own
status can follow the end by a moment (the slot's bookkeeping): after an end event the states
are read again at short, doubling intervals until they agree. With no event for `poll`
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


def states(conn: redis.Redis, job_ids: Sequence[str]) -> dict[str, JobState]:
    """The jobs' states, in one round trip; a job that does not exist raises JobNotFound."""
    with conn.pipeline(transaction=False) as pipe:
        for jid in job_ids:
            pipe.hget(keys.rq_job(jid), "status")
        raw = pipe.execute()
    found: dict[str, JobState] = {}
    for jid, s in zip(job_ids, raw, strict=True):
        if s is None:
            raise JobNotFound(f"no job {jid!r} on this grid")
        found[jid] = job_state(jid, s)
    return found


def wait(conn: redis.Redis, job_ids: Sequence[str], timeout: float | None = None,
         poll: float = 0.5) -> dict[str, JobState]:
    """Block until every job is terminal (or `timeout` seconds); return their states."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        newest = conn.xrevrange(keys.EVENTS, count=1)
        after: str | None = text(newest[0][0]) if newest else "0-0"
    except redis.ResponseError:  # not allowed to read events: poll
        after = None
    block = poll
    while True:
        now_states = states(conn, job_ids)
        pending = {j for j, s in now_states.items() if not s.terminal}
        if not pending:
            return now_states
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return now_states
        wait_s = block if left is None else min(block, left)
        if after is None:
            time.sleep(wait_s)
            continue
        try:
            got = conn.xread({keys.EVENTS: after}, count=1000, block=max(1, int(wait_s * 1000)))
        except redis.ResponseError:
            after = None
            continue
        ended = False
        for _stream, entries in got or ():
            for eid, fields in entries:
                after = text(eid)
                event = EventEntry.decode(fields)
                if event.job in pending and event.kind in END_EVENTS:
                    ended = True
        # An end seen whose state has not caught up yet: look again soon, then less often.
        block = SOON if ended else (min(block * 2, poll) if block < poll else poll)
