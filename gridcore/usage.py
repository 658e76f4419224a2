"""Usage reports: what ended attempts used, summed by user, node, group, queue or label.

One place for the arithmetic, used by `grid usage` and the console's usage view. The input is
the history (gridcore/history.py): the store's rows and the broker's history stream, each
attempt counted once. Figures, per attempt:

    wall           the attempt's measured wall time, else its recorded duration
    CPU-hours      (user + system CPU seconds of its process tree) / 3600, where measured
    GPU-hours      GPUs it held x wall / 3600 (held, as a scheduler accounts them)
    memory-hours   peak resident memory (GiB) x wall / 3600, where measured
    failures       attempts that failed, were lost or refused, by reason kind (a retried job's
                   failed attempts each count; canceled and handed-back ones are not failures)

`jobs` counts distinct jobs; `unmeasured` the attempts without usage figures (old records, or
an agent that could not measure), whose CPU and memory add nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import redis

from gridcore import history
from gridcore.historystore import HistoryStore
from gridcore.records import FinishedEntry

BY = ("user", "node", "group", "queue", "label")
"""What a report can be split by."""

NONE = "(none)"
"""The row of attempts that have no value for the split (no group, no label...)."""

FAILED_OUTCOMES = ("failed", "lost", "refused")

GiB = 2**30


@dataclass
class UsageRow:
    """The sums of one row of a report."""

    key: str
    jobs: int = 0
    attempts: int = 0
    wall_hours: float = 0.0
    cpu_hours: float = 0.0
    gpu_hours: float = 0.0
    memory_gib_hours: float = 0.0
    unmeasured: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    _jobs: set[str] = field(default_factory=set, repr=False)

    def add(self, e: FinishedEntry) -> None:
        wall = wall_seconds(e)
        self._jobs.add(e.job_id)
        self.jobs = len(self._jobs)
        self.attempts += 1
        self.wall_hours += wall / 3600
        self.gpu_hours += gpus_held(e) * wall / 3600
        cpu = cpu_seconds(e)
        if cpu is None:
            self.unmeasured += 1
        else:
            self.cpu_hours += cpu / 3600
        if e.usage is not None and e.usage.memory_peak is not None:
            self.memory_gib_hours += e.usage.memory_peak / GiB * wall / 3600
        if e.outcome in FAILED_OUTCOMES:
            why = e.reason_kind or e.outcome
            self.failures[why] = self.failures.get(why, 0) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_jobs")
        d["failed"] = sum(self.failures.values())
        return d


@dataclass
class UsageReport:
    """A report over attempts that ended in [since, until], split `by` (None: the total only)."""

    since: float
    until: float
    by: str | None
    rows: list[UsageRow]
    total: UsageRow
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"since": self.since, "until": self.until, "by": self.by, "rows": [r.to_dict() for r in self.rows],
                "total": self.total.to_dict(), "problems": list(self.problems)}


def wall_seconds(e: FinishedEntry) -> float:
    """The attempt's wall time: measured, else recorded, else its start to its end, else 0."""
    if e.usage is not None and e.usage.wall is not None:
        return e.usage.wall
    if e.duration is not None:
        return e.duration
    return max(0.0, e.end - e.start) if e.start is not None else 0.0


def cpu_seconds(e: FinishedEntry) -> float | None:
    """User plus system CPU seconds of the attempt's tree; None when not measured."""
    u = e.usage
    if u is None or (u.cpu_user is None and u.cpu_system is None):
        return None
    return (u.cpu_user or 0.0) + (u.cpu_system or 0.0)


def gpus_held(e: FinishedEntry) -> int:
    """GPUs the attempt held: the ones recorded, else as many as it asked for (it ran only with them)."""
    return len(e.gpus) or (e.requested.gpus if e.start is not None else 0)


def keys_of(e: FinishedEntry, by: str) -> Sequence[str]:
    """The rows an attempt counts in when split `by` (a job with two labels counts in both)."""
    if by == "user":
        return (e.user or NONE,)
    if by == "node":
        return (e.node or NONE,)
    if by == "group":
        return (e.group or NONE,)
    if by == "queue":
        return (e.queue or NONE,)
    if by == "label":
        return tuple(dict.fromkeys(e.requested.labels)) or (NONE,)
    raise ValueError(f"cannot split usage by {by!r} (one of {', '.join(BY)})")


def report(entries: Iterable[FinishedEntry], since: float, until: float, by: str | None = None) -> UsageReport:
    """The report over `entries` that ended in [since, until]."""
    if by is not None and by not in BY:
        raise ValueError(f"cannot split usage by {by!r} (one of {', '.join(BY)})")
    total = UsageRow("total")
    rows: dict[str, UsageRow] = {}
    for e in entries:
        if not since <= e.end <= until:
            continue
        total.add(e)
        for k in keys_of(e, by) if by else ():
            rows.setdefault(k, UsageRow(k)).add(e)
    ordered = sorted(rows.values(), key=lambda r: (-r.cpu_hours, -r.gpu_hours, -r.attempts, r.key))
    return UsageReport(since=since, until=until, by=by, rows=ordered, total=total)


def gather(conn: redis.Redis | None, store: HistoryStore | None, since: float,
           problems: list[str] | None = None) -> list[FinishedEntry]:
    """Every attempt that ended at or after `since` in the store and in the broker's history stream
    (what the collector has not taken yet), each once, oldest first."""
    seen: dict[tuple[str, str], FinishedEntry] = {}
    if store is not None:
        for e in store.since(since, problems):
            seen[e.key] = e
    if conn is not None:
        after = store.position() if store is not None else "0-0"
        for e in history.since(conn, since, problems, after):
            seen.setdefault(e.key, e)
    return sorted(seen.values(), key=lambda e: e.end)


def usage(conn: redis.Redis | None, store: HistoryStore | None, since: float, until: float,
          by: str | None = None) -> UsageReport:
    """The report of the attempts that ended in [since, until], from the store and the broker."""
    problems: list[str] = []
    out = report(gather(conn, store, since, problems), since, until, by)
    out.problems = problems
    return out


WINDOWS = {"day": 24 * 3600.0, "week": 7 * 24 * 3600.0}
"""The console's usage view windows: the last day or week."""


def recent(conn: redis.Redis, history_path, window: str, by: str | None, now: float) -> UsageReport:
    """The report of the last `window` (a WINDOWS key) to broker time `now`: the store at
    `history_path` where there is one (never created by a reader), and the broker's stream."""
    since = now - WINDOWS[window]
    if not history_path.exists():
        return usage(conn, None, since, now, by)
    try:
        with HistoryStore(history_path) as store:
            return usage(conn, store, since, now, by)
    except (OSError, sqlite3.Error) as e:  # the console goes on with what the broker holds
        out = usage(conn, None, since, now, by)
        out.problems.insert(0, f"history store {history_path}: {e}; the broker's history stream alone is shown")
        return out
