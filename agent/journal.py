"""This node's replay journal: every envelope it started, on its own disk, while the envelope is valid.

The broker's attempt counter (`grid:nonces:<nonce>`) is only as good as the broker: a broker
writer can delete it, set a finished job back to `queued` and push its id again. Like MUNGE's
replay cache, each node therefore also remembers, in a file no broker writer can reach, which
envelopes (by nonce) it started and how each start ended:

- an envelope that ran to its end here (exit 0, or canceled) never starts here again;
- one whose earlier start here is still running (its slot process is alive) waits: either it is a
  twin, or the broker reclaimed the job from a stale copy that its slot is about to kill (a node
  that froze or was cut off) and the rerun may start here once that copy has ended;
- no envelope starts here more often than the attempts it was signed for (`max_attempts`).

Rows are kept until the envelope is void (its expiry, plus the clock skew the gate allows);
after that the gate refuses the envelope as expired, so the row is no longer needed.

One SQLite file per node, shared by its slot processes: `BEGIN IMMEDIATE` makes the check and
the insert one step across them. Any failure to read or write it refuses the job (fail closed).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.verify import nonce_expiry
from gridcore.settings import data_dir
from gridcore.signing import Refused

class EarlierStartRunning(Refused):
    """Not now: a live slot of this node still runs an earlier start of the same envelope.

    Not a refusal of the job: the job goes back in line, and starts here (or elsewhere) once that
    copy has ended, if the journal still allows it. Dropping it instead would lose a job that a
    node-loss sweep reclaimed from a stale copy on this very node.
    """


SCHEMA = """
CREATE TABLE IF NOT EXISTS starts (
    nonce   TEXT NOT NULL,
    seq     INTEGER NOT NULL,   -- which start of this envelope on this node: 1, 2, ...
    job_id  TEXT NOT NULL,
    pid     INTEGER NOT NULL,   -- the slot process that started it
    born    REAL NOT NULL,      -- when that process started (a reused pid is another process)
    started REAL NOT NULL,
    expires REAL NOT NULL,      -- when the envelope is void: the row may go
    ended   REAL,               -- NULL while it runs (or if its slot died)
    final   INTEGER NOT NULL DEFAULT 0,  -- 1: it ran to its end here; never again on this node
    PRIMARY KEY (nonce, seq)
);
CREATE INDEX IF NOT EXISTS starts_expires ON starts (expires);
"""


OPEN_TIMEOUT = 30.0
"""Seconds a slot waits for the journal: SQLite's busy timeout, and the wait for the lock under
which the node's slots open the file one at a time (`Journal._conn`)."""
_LOCK_POLL = 0.005


def _flock(fd: int, timeout: float) -> None:
    """An exclusive flock on `fd` within `timeout` seconds, else sqlite3.OperationalError (the job
    is refused, as for a journal SQLite finds locked that long): a slot stopped while it holds
    the lock must not hang the node's other slots for good."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(f"its open lock held for {timeout:g}s") from None
            time.sleep(_LOCK_POLL)


def journal_path(node: str) -> Path:
    """Where a node's journal lives: the agent's data dir, one file per node name."""
    return data_dir() / "nodes" / node / "journal.sqlite"


@dataclass(frozen=True)
class Ticket:
    """One admitted start: what `withdraw` and `ended` name."""

    nonce: str
    seq: int


def _born(pid: int) -> float | None:
    """When process `pid` started; None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _alive(pid: int, born: float) -> bool:
    """Is the slot process that journaled a start still the one running under its pid?"""
    if pid == os.getpid():
        return False  # this slot runs one job at a time: a row of its own left open is over
    now_born = _born(pid)
    return now_born is not None and abs(now_born - born) < 1.0


class Journal:
    """The node's journal file; opened on first use by each slot process."""

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._born = _born(os.getpid()) or 0.0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            # The node's slots open the file at once on their first jobs (a fresh node given two
            # jobs): one switching it to WAL while another does gets "database is locked" at once
            # (SQLite's deadlock avoidance: the busy timeout is not waited out), which refused its
            # job. So each opens it in turn, under a lock file of its own beside it (never the
            # database file: closing any descriptor of that drops SQLite's POSIX locks on it).
            lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _flock(lock, OPEN_TIMEOUT)
                self._db = self._open()
            finally:
                os.close(lock)  # releases the flock
        return self._db

    def _open(self) -> sqlite3.Connection:
        """The journal's connection, the file in WAL mode with its schema (once opened, any
        number of connections share it: `BEGIN IMMEDIATE` waits out the busy timeout)."""
        db = sqlite3.connect(self.path, timeout=OPEN_TIMEOUT, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, not FULL: a commit is in the WAL (the OS's page cache) before the job runs,
            # so a crash of this process, the agent or any slot loses nothing; what goes is the
            # fsync at every commit, two per job, most of a trivial job's journal cost. Power
            # loss (or a kernel crash) may drop the rows of the last seconds before it, not yet
            # written back. Every start among them died with the node, so what a dropped row
            # could let run again here is an envelope that also ran to its end in those seconds,
            # and only if a broker writer deletes the broker's own record that it is spent
            # (`grid:nonces:<nonce>`, in a broker that keeps its AOF) and replays it before it
            # expires: a hostile broker writer and a power cut within the same seconds.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def admit(self, envelope: dict[str, Any], job_id: str, now: float) -> Ticket:
        """Record that this envelope starts here now, or refuse it (a replay, or a twin)."""
        try:
            return self._admit(envelope, job_id, now)
        except sqlite3.Error as e:
            raise Refused(f"this node's replay journal is unusable ({self.path}: {e})") from None

    def _admit(self, envelope: dict[str, Any], job_id: str, now: float) -> Ticket:
        nonce = envelope["nonce"]
        allowed = envelope.get("max_attempts") or 1
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM starts WHERE expires < ?", (now,))
            rows = db.execute("SELECT seq, pid, born, ended, final FROM starts WHERE nonce = ?", (nonce,)).fetchall()
            if any(final for *_, final in rows):
                raise Refused("replayed envelope: it already ran to its end on this node")
            if any(ended is None and _alive(pid, born) for _seq, pid, born, ended, _final in rows):
                raise EarlierStartRunning("an earlier start of this envelope still runs on this node")
            if len(rows) >= allowed:
                raise Refused(f"replayed envelope: started {len(rows)} times on this node, "
                              f"the most its signature allows ({allowed})")
            seq = len(rows) + 1
            db.execute("INSERT INTO starts (nonce, seq, job_id, pid, born, started, expires) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (nonce, seq, job_id, os.getpid(), self._born, now, nonce_expiry(envelope)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Ticket(nonce, seq)

    def withdraw(self, ticket: Ticket) -> None:
        """The admitted start did not happen (no room here, refused by the broker's count)."""
        self._conn().execute("DELETE FROM starts WHERE nonce = ? AND seq = ?", (ticket.nonce, ticket.seq))

    def started_unended(self, nonce: str) -> bool:
        """Did this node start this envelope and never record that start's end? What a node's
        own loss of a job must show: a job a broker writer planted in the node's running records
        never started here, or ran to its end here. Unreadable: False (the node does not vouch)."""
        try:
            return self._conn().execute("SELECT 1 FROM starts WHERE nonce = ? AND ended IS NULL LIMIT 1",
                                        (nonce,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def ended(self, ticket: Ticket, now: float, final: bool) -> None:
        """The start ended; `final`: it ran to its end (exit 0, canceled), so never again here."""
        self._conn().execute("UPDATE starts SET ended = ?, final = ? WHERE nonce = ? AND seq = ?",
                             (now, int(final), ticket.nonce, ticket.seq))
