"""The grid's history: every ended attempt, written with its end to a capped stream (`grid:history`),
from which `grid history collect` copies it to an append-only store off the broker
(gridcore/historystore.py). The broker's own records expire after `result_ttl`; the stream keeps
the last MAX_HISTORY ends; the store keeps everything it collected.

Writers: the attempt's end (agent/attempt.py), in the same transaction as the end itself, so an
end is in the history exactly when it is on the broker.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from redis.client import Pipeline

from gridcore import keys
from gridcore.records import CorruptRecord, FinishedEntry, JobMeta, Result, Usage, text
from gridcore.records.history import Outcome

MAX_HISTORY = 50_000
"""Approximate length the history stream is trimmed to: at most ~100 MB of broker memory (an
entry is ~0.6 KB, at most ~2 KB), and at 5,000 ended attempts a day ten days of slack for a
collector that was down."""

COMMAND_KEPT = 1024
"""Characters of a job's command its history entry keeps."""

READ_BATCH = 1000
"""Entries read from the stream per round trip."""


def entry(job_id: str, meta: JobMeta, result: Result, outcome: Outcome) -> FinishedEntry:
    """The history entry of an attempt of job `job_id` that ended as `result` (run id, or end stamp)."""
    end = result.end or 0.0
    return FinishedEntry(
        job_id=job_id, attempt=result.run_id or f"{outcome}@{end:.6f}", outcome=outcome,
        name=meta.name[:COMMAND_KEPT], command=meta.command[:COMMAND_KEPT], submitter=meta.submitter, queue=meta.queue,
        group=meta.group, tags=list(meta.tags), requested=meta.resources, node=result.node, slot=result.slot,
        gpus=list(result.gpus), submitted=meta.submitted, start=result.start, end=end, duration=result.duration,
        exit_code=result.exit_code, signal=result.signal, reason=result.reason, reason_kind=result.reason_kind,
        usage=result.usage or _cgroup_only(result),
    )


def _cgroup_only(result: Result) -> Usage | None:
    """An agent that measures no usage still records a job's cgroup peak (with a memory limit): keep it."""
    if result.memory_peak is None:
        return None
    return Usage(wall=result.duration, memory_peak=result.memory_peak, memory_source="cgroup")


def append(pipe: Pipeline | redis.Redis, finished: FinishedEntry) -> None:
    """Add one ended attempt to the history stream, in the caller's pipeline."""
    pipe.xadd(keys.HISTORY, finished.fields(), maxlen=MAX_HISTORY, approximate=True)


def id_order(sid: str) -> tuple[int, int]:
    """A stream id as a sortable pair (milliseconds, sequence); a leading "(" is ignored."""
    ms, _, seq = sid.lstrip("(").partition("-")
    return int(ms), int(seq or 0)


def stream_id(stamp: float) -> str:
    """The first history stream id at or after broker time `stamp` (ids are the broker's milliseconds)."""
    return f"{max(0, int(stamp * 1000))}-0"


def read(conn: redis.Redis, after: str = "0-0", problems: list[str] | None = None,
         batch: int = READ_BATCH) -> Iterator[tuple[str, FinishedEntry | None]]:
    """(stream id, entry) for every entry after stream id `after`, oldest first; a corrupt entry
    comes as (its id, None) and is named in `problems`."""
    return _range(conn, "(" + after, problems, batch)


def since(conn: redis.Redis, stamp: float, problems: list[str] | None = None,
          after: str = "0-0") -> list[FinishedEntry]:
    """Every entry the stream still holds that was written at or after broker time `stamp`
    (and after stream id `after`, when given: what a store has taken is not read again)."""
    start = stream_id(stamp)
    first = start if id_order(start) > id_order(after) else "(" + after
    return [e for _, e in _range(conn, first, problems, READ_BATCH) if e is not None]


def _range(conn: redis.Redis, first: str, problems: list[str] | None,
           batch: int) -> Iterator[tuple[str, FinishedEntry | None]]:
    lower = first
    while True:
        got = conn.xrange(keys.HISTORY, min=lower, max="+", count=batch)
        for eid, fields in got:
            at = text(eid)
            lower = "(" + at
            try:
                yield at, FinishedEntry.from_fields(fields, f"{keys.HISTORY} entry {at}")
            except CorruptRecord as e:
                if problems is not None:
                    problems.append(str(e))
                yield at, None
        if len(got) < batch:
            return
