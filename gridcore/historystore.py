"""The append-only history store: every ended attempt `grid history collect` copied off the broker.

SQLite, not JSON Lines: one (job id, attempt) row is kept however often an entry is read again
(a primary key, not a scan), the rows and the collector's stream position commit in one
transaction (a collector killed mid-batch resumes exactly where its last commit left it), and
`--since` reads use an index on the end time instead of reading the whole file. WAL mode lets
`grid usage`, `grid ls --history` and exports read while the collector writes. Rows are never
updated or deleted by the grid: the file keeps what it collected until its owner removes it.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import redis

from gridcore import history, keys
from gridcore.records import CorruptRecord, FinishedEntry, text

log = logging.getLogger("grid.history")

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL,
    attempt TEXT NOT NULL,
    end_time REAL NOT NULL,
    outcome TEXT NOT NULL,
    queue TEXT NOT NULL,
    node TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_end ON attempts (end_time);
CREATE TABLE IF NOT EXISTS position (
    stream TEXT PRIMARY KEY,
    last_id TEXT NOT NULL
);
"""

FOLLOW_BLOCK_MS = 1000
"""How long one blocking read of `collect --follow` waits for new entries before it looks at its
stop flag again (a stop takes at most this long)."""


class HistoryStore:
    """The store in one SQLite file (created on first open, owner-only)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new = not path.exists()
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        if new:
            path.chmod(0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------------

    def position(self) -> str:
        """The id of the last stream entry this store took ("0-0": none yet)."""
        row = self.db.execute("SELECT last_id FROM position WHERE stream = ?", (keys.HISTORY,)).fetchone()
        return row[0] if row else "0-0"

    def add(self, batch: list[tuple[str, FinishedEntry]], last_id: str) -> int:
        """Append `batch` ((stream id, entry), oldest first) and move the position to `last_id`, in
        one transaction; an entry already kept stays as it is. Returns how many rows are new."""
        with self._transaction():
            before = self.db.total_changes
            self.db.executemany(
                "INSERT OR IGNORE INTO attempts (job_id, attempt, end_time, outcome, queue, node, stream_id, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.job_id, e.attempt, e.end, e.outcome, e.queue, e.node or "", sid, e.encode()) for sid, e in batch])
            added = self.db.total_changes - before
            # Two collectors on one file: the position only moves forward.
            if history.id_order(last_id) > history.id_order(self.position()):
                self.db.execute("INSERT INTO position (stream, last_id) VALUES (?, ?) ON CONFLICT (stream) "
                                "DO UPDATE SET last_id = excluded.last_id", (keys.HISTORY, last_id))
        return added

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE: a second collector on the file waits here rather than failing at COMMIT.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- reading ------------------------------------------------------------------------

    def since(self, stamp: float = 0.0, problems: list[str] | None = None) -> list[FinishedEntry]:
        """Every attempt that ended at or after broker time `stamp`, oldest first."""
        rows = self.db.execute("SELECT record FROM attempts WHERE end_time >= ? ORDER BY end_time, stream_id",
                               (stamp,))
        return list(self._decode(rows, problems))

    def job(self, job_id: str, problems: list[str] | None = None) -> list[FinishedEntry]:
        """Every attempt of one job, oldest first."""
        rows = self.db.execute("SELECT record FROM attempts WHERE job_id = ? ORDER BY end_time, stream_id", (job_id,))
        return list(self._decode(rows, problems))

    def ids_starting(self, prefix: str, limit: int = 10) -> list[str]:
        """Job ids kept that start with `prefix` (at most `limit`)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.db.execute("SELECT DISTINCT job_id FROM attempts WHERE job_id LIKE ? ESCAPE '\\' LIMIT ?",
                               (escaped + "%", limit))
        return [r[0] for r in rows if r[0].startswith(prefix)]  # LIKE ignores ASCII case

    def count(self) -> int:
        """Attempts kept."""
        return self.db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]

    def latest(self, outcomes: Sequence[str] = (), queue: str | None = None, node: str | None = None,
               limit: int = 50, problems: list[str] | None = None) -> tuple[list[FinishedEntry], int]:
        """(the last attempt of each job, newest end first, at most `limit`; how many jobs match),
        of jobs whose last attempt ended as one of `outcomes` (any if empty) on `queue` and `node`."""
        where, args = ["a.end_time = (SELECT MAX(b.end_time) FROM attempts b WHERE b.job_id = a.job_id)"], []
        if outcomes:
            where.append(f"a.outcome IN ({', '.join('?' * len(outcomes))})")
            args += list(outcomes)
        for column, value in (("queue", queue), ("node", node)):
            if value is not None:
                where.append(f"a.{column} = ?")
                args.append(value)
        cond = " AND ".join(where)
        total = self.db.execute(f"SELECT COUNT(DISTINCT a.job_id) FROM attempts a WHERE {cond}", args).fetchone()[0]
        rows = self.db.execute(f"SELECT a.record FROM attempts a WHERE {cond} GROUP BY a.job_id "
                               "ORDER BY a.end_time DESC LIMIT ?", [*args, limit])
        return list(self._decode(rows, problems)), total

    def _decode(self, rows, problems: list[str] | None) -> Iterator[FinishedEntry]:
        for (raw,) in rows:
            try:
                yield FinishedEntry.decode(raw, f"{self.path}")
            except CorruptRecord as e:
                if problems is not None:
                    problems.append(str(e))


def collect(conn: redis.Redis, store: HistoryStore, problems: list[str] | None = None) -> int:
    """Copy every history entry after the store's position into the store; how many rows are new.

    Safe to repeat and to run after a crash at any point: rows and position commit together, and
    a row already kept is kept once. A corrupt entry is named in `problems` and passed over.
    """
    added = 0
    after = store.position()
    if _trimmed_past(conn, after) and problems is not None:
        problems.append(f"{keys.HISTORY}: the broker trimmed entries after {after} before this store took them "
                        f"(the collector was away for more than the stream's last {history.MAX_HISTORY} ends); "
                        "some attempts may be missing from the history")
    batch: list[tuple[str, FinishedEntry]] = []
    last = after
    for sid, finished in history.read(conn, after, problems):
        last = sid
        if finished is not None:
            batch.append((sid, finished))
        if len(batch) >= history.READ_BATCH:
            added += store.add(batch, last)
            batch = []
    if last != after:
        added += store.add(batch, last)
    return added


def _trimmed_past(conn: redis.Redis, after: str) -> bool:
    """Is the store's position gone from the stream with newer entries left (so some may be lost)?"""
    if after == "0-0":
        return False
    first = conn.xrange(keys.HISTORY, min="-", max="+", count=1)
    return bool(first) and history.id_order(text(first[0][0])) > history.id_order(after)


OUTAGE_PAUSE = 2.0
"""Seconds `follow` waits before it tries an unreachable broker again."""


def follow(conn: redis.Redis, store: HistoryStore, stop: Callable[[], bool],
           said: Callable[[int], None] = lambda n: None, problems: list[str] | None = None) -> None:
    """Collect, then wait for new entries and collect them, until `stop()`; `said(n)` after each
    pass. An unreachable broker is waited for (logged), never the end of the collector."""
    while not stop():
        try:
            said(collect(conn, store, problems))
            if not stop():
                conn.xread({keys.HISTORY: store.position()}, count=1, block=FOLLOW_BLOCK_MS)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("history: broker unreachable (%s); trying again in %gs", e, OUTAGE_PAUSE)
            time.sleep(OUTAGE_PAUSE)
