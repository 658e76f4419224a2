"""An attempt's live output: the sink that batches it into the job's stream within a byte
budget (its head and a rolling tail; the full log spooled on the node), and the thread that
sends it and heartbeats.

The loop that reads the job's pipes never talks to the broker: the `BrokerLink` thread
flushes, so a broker outage of any length neither stalls nor fails the job. Output waits in
memory (within the budget) and goes out when the broker is back; each stream entry has an
explicit id, so a batch that is sent twice is stored once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from agent.logfiles import open_log
from agent.outage import OUTAGE_ERRORS, RETRY_BACKOFF
from gridcore import keys
from gridcore.records import OutputEntry
from gridcore.units import format_size

log = logging.getLogger("grid.output")

FLUSH_INTERVAL = 0.1
"""Seconds between output flushes to the broker (the live-output latency floor)."""
FLUSH_BYTES = 16 * 1024
"""Buffered bytes that force an early flush; also the most one stream entry carries."""
PART_ENTRIES = 10_000
"""Most stream entries of each part of the output kept in the broker (head, rolling tail)."""
TAIL_BYTES = 4096
"""Bytes of stdout and of stderr kept in the result record."""
HEARTBEAT_EVERY = 1.0
"""Seconds between job heartbeats / cancel-flag checks while a job runs."""
LINK_JOIN = 5.0
"""Seconds the runner waits for its broker thread to finish a call in flight at job end."""


@dataclass(eq=False)
class Piece:
    """One stream entry to be: output bytes (with where they start) or a note."""

    kind: str  # "o", "e" or "n"
    data: bytes
    at: int | None = None
    ln: int | None = None
    tail: bool = False  # part of the rolling tail: dropped when newer output needs the room
    eid: str | None = None  # given when first sent; a resend reuses it, so it is stored once
    dropped: bool = False

    def fields(self) -> dict[str, Any]:
        return OutputEntry(self.kind, self.data, self.at, self.ln).fields()


Batch = tuple[list[Piece], list[str]]
"""What one flush writes: entries to add, and ids of tail entries to delete."""


class OutputSink:
    """Keeps a job's output in its stream within a byte budget: the first half of the budget
    (the head), then a rolling tail of the newest output in the other half; what falls between
    is counted and left out, and the full log is spooled on the node.

    Thread-safe: the runner loop adds, the broker thread (and at the end the slot) sends.
    """

    def __init__(self, conn: redis.Redis, job_id: str, node: str, start: float, *, budget: int, log_dir: Path,
                 log_cap: int, ttl: int):
        self.conn = conn
        self.node = node
        self.budget = budget
        self.head_budget = budget // 2
        self.tail_budget = budget - self.head_budget
        # A tail piece is dropped whole once sent: keep pieces small next to the tail.
        self.piece_max = max(256, min(FLUSH_BYTES, self.tail_budget // 8))
        self.log_cap = log_cap
        self.ttl = ttl
        self.key = keys.output(job_id)
        self.lock = threading.Lock()
        self.queue: list[Piece] = []  # not yet known to be stored, oldest first
        self.queued_bytes = 0  # of those not sent yet (what `urgent` weighs)
        self.deletes: list[str] = []  # ids of stored tail entries the tail has moved past
        self.tail: collections.deque[Piece] = collections.deque()  # tail pieces kept, oldest first
        self.tail_bytes = 0
        self.head_bytes = 0
        self.head_entries = 0
        self.head_full = False
        self.offset = 0  # bytes of output so far, both streams
        self.lines = 0
        self.id_ms = int(start * 1000)
        self.seq = 0
        self.dropped = 0
        self.counts = {"o": 0, "e": 0}
        self.tails: dict[str, collections.deque[bytes]] = {"o": collections.deque(), "e": collections.deque()}
        self.tail_len = {"o": 0, "e": 0}
        self.log_path = log_dir / f"{job_id}.log"
        self.log = None
        self.logged = 0
        self.log_truncated = False

    def add(self, stream: str, data: bytes) -> None:
        """Output the job wrote on `stream` ("o" stdout, "e" stderr)."""
        with self.lock:
            self.counts[stream] += len(data)
            tail = self.tails[stream]
            tail.append(data)
            self.tail_len[stream] += len(data)
            while self.tail_len[stream] - len(tail[0]) >= TAIL_BYTES:
                self.tail_len[stream] -= len(tail.popleft())
            self._spool(data)
            at, ln = self.offset, self.lines
            self.offset += len(data)
            self.lines += data.count(b"\n")
            if not self.head_full:
                room = self.head_budget - self.head_bytes
                head = data[:room] if self.head_entries < PART_ENTRIES else b""
                if head:
                    self._put(stream, head, at, ln, tail=False)
                    self.head_bytes += len(head)
                    data, at, ln = data[len(head):], at + len(head), ln + head.count(b"\n")
                if data or self.head_bytes >= self.head_budget:
                    self._close_head()
            if data:
                self._put(stream, data, at, ln, tail=True)
                self._trim()

    def _put(self, stream: str, data: bytes, at: int, ln: int, tail: bool) -> None:
        for i in range(0, len(data), self.piece_max):
            part = data[i : i + self.piece_max]
            last = self.queue[-1] if self.queue else None
            # Merge with the previous piece when it continues it: fewer, larger stream entries.
            if (last is not None and last.eid is None and not last.dropped and last.kind == stream
                    and last.tail == tail and last.at is not None and last.at + len(last.data) == at
                    and len(last.data) + len(part) <= self.piece_max):
                last.data += part
            else:
                last = Piece(stream, part, at, ln, tail)
                self.queue.append(last)
                if tail:
                    self.tail.append(last)
                else:
                    self.head_entries += 1
            self.queued_bytes += len(part)
            if tail:
                self.tail_bytes += len(part)
            at, ln = at + len(part), ln + part.count(b"\n")

    def _close_head(self) -> None:
        self.head_full = True
        note = (f"output past the first {format_size(self.head_budget)} is kept as a rolling tail of the newest "
                f"{format_size(self.tail_budget)}; the full log is on {self.node} at {self.log_path}")
        self.queue.append(Piece("n", note.encode()))

    def _trim(self) -> None:
        """Drop the oldest tail output until the tail fits its half of the budget."""
        while self.tail and (self.tail_bytes > self.tail_budget or len(self.tail) > PART_ENTRIES):
            oldest = self.tail[0]
            excess = self.tail_bytes - self.tail_budget
            if oldest.eid is None and 0 < excess < len(oldest.data) and len(self.tail) <= PART_ENTRIES:
                # Never sent: cut its front, so the tail keeps exactly its budget.
                cut = oldest.data[:excess]
                oldest.data = oldest.data[excess:]
                oldest.at = (oldest.at or 0) + excess
                oldest.ln = (oldest.ln or 0) + cut.count(b"\n")
                self._forget(excess, queued=True)
                return
            self.tail.popleft()
            oldest.dropped = True
            self._forget(len(oldest.data), queued=oldest.eid is None)
            if oldest.eid is not None:
                self.deletes.append(oldest.eid)

    def _forget(self, n: int, queued: bool) -> None:
        self.tail_bytes -= n
        self.dropped += n
        if queued:
            self.queued_bytes -= n

    def _spool(self, data: bytes) -> None:
        if self.log_truncated:
            return
        if self.log is None:
            self.log = open_log(self.log_path)  # 0600 in a 0700 directory; closed in close()
        room = self.log_cap - self.logged
        if len(data) >= room:
            data = data[:room]
            self.log_truncated = True
        self.log.write(data)
        self.logged += len(data)

    def next_id(self) -> str:
        """A stream entry id after every one this attempt used (ids are per attempt, rising)."""
        with self.lock:
            self.seq += 1
            return f"{self.id_ms}-{self.seq}"

    def urgent(self) -> bool:
        return self.queued_bytes >= FLUSH_BYTES

    def take(self) -> Batch:
        """Everything not yet stored, oldest first, with fixed entry ids (so resending is safe),
        and the tail entries to delete."""
        with self.lock:
            self.queue = [p for p in self.queue if not p.dropped]
            for p in self.queue:
                if p.eid is None:
                    self.seq += 1
                    p.eid = f"{self.id_ms}-{self.seq}"
                    if p.kind != "n":
                        self.queued_bytes -= len(p.data)
            return list(self.queue), list(self.deletes)

    def stored(self, batch: Batch) -> None:
        """The broker has `batch` (what `take` returned)."""
        pieces, deletes = batch
        with self.lock:
            done = {id(p) for p in pieces}
            self.queue = [p for p in self.queue if id(p) not in done]
            gone = set(deletes)
            self.deletes = [d for d in self.deletes if d not in gone]

    def write_pending(self, pipe) -> Batch:
        """Queue every unstored entry and tail deletion on `pipe`; call `stored` once it ran."""
        pieces, deletes = batch = self.take()
        for p in pieces:
            pipe.xadd(self.key, p.fields(), id=p.eid)
        if deletes:
            pipe.xdel(self.key, *deletes)  # after the adds: a resent entry is deleted as well
        return batch

    def write_last(self, pipe, fields: dict[str, Any]) -> None:
        """Queue what is unstored and then one last entry (an end marker, a note) on `pipe`."""
        self.write_pending(pipe)
        pipe.xadd(self.key, fields, id=self.next_id())

    def flush(self) -> int:
        """Send what is buffered now; how many entries went (0: nothing was waiting). Raises a
        broker error if the broker is away or refuses the writes (then all is kept to resend)."""
        with self.conn.pipeline(transaction=False) as pipe:
            batch = self.write_pending(pipe)
            if not batch[0] and not batch[1]:
                return 0
            pipe.expire(self.key, self.ttl)
            replies = pipe.execute(raise_on_error=False)
        errors = reply_errors(replies)
        if errors:
            raise errors[0]
        self.stored(batch)
        return len(batch[0])

    def tail_text(self, stream: str) -> str:
        with self.lock:
            data = b"".join(self.tails[stream])[-TAIL_BYTES:]
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def reply_errors(replies: list[Any]) -> list[Exception]:
    """The real errors in a pipeline's replies: an XADD refused as a resend is not one."""
    out = []
    for r in replies:
        if isinstance(r, OUTAGE_ERRORS):
            raise r
        if isinstance(r, Exception) and "equal or smaller" not in str(r):
            out.append(r)
    return out


class BrokerLink:
    """Flushes a job's output and heartbeats it, riding out broker outages, in a thread of its
    own started on first need (`start_once`): most jobs of a big sweep end before they need one,
    and a thread object made per job cost a trivial job more than its flush.

    `heartbeat` returns a reason to stop the job (canceled, fenced) or None; the link then
    appends it to `stop_reason` and sets `cancel`, which the runner's loop watches.
    """

    def __init__(self, job_id: str, sink: OutputSink, heartbeat: Callable[[], str | None],
                 cancel: threading.Event, stop_reason: list[str]):
        self.thread: threading.Thread | None = None
        self.job_id = job_id
        self.sink = sink
        self.heartbeat = heartbeat
        self.cancel = cancel
        self.stop_reason = stop_reason
        self.wake = threading.Event()
        self.done = threading.Event()
        self.outage_since: float | None = None

    def run(self) -> None:
        failures = 0
        next_beat = time.monotonic() + HEARTBEAT_EVERY
        while not self.done.is_set():
            try:
                sent = self.sink.flush()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + HEARTBEAT_EVERY
                    stop = self.heartbeat()
                    if stop and not self.done.is_set() and not self.cancel.is_set():
                        self.stop_reason.append(stop)
                        self.cancel.set()
                if self.outage_since is not None:
                    log.warning("job %s: broker back after %.1fs%s", self.job_id, time.monotonic() - self.outage_since,
                                f"; {sent} buffered output entries sent" if sent else "")
                    self.outage_since = None
                failures = 0
                delay = FLUSH_INTERVAL
            except OUTAGE_ERRORS as e:
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning("job %s: broker unavailable (%s); the job goes on, output is buffered",
                                self.job_id, e)
                delay = RETRY_BACKOFF[min(failures, len(RETRY_BACKOFF) - 1)]
                failures += 1
            except Exception:  # noqa: BLE001 - a bug here must not take the job down with it
                log.exception("job %s: broker link error", self.job_id)
                delay = 1.0
            self.wake.wait(delay)
            self.wake.clear()

    def start_once(self) -> None:
        """Start the thread unless it runs already."""
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name=f"broker-link-{self.job_id}", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        if self.thread is None:
            return
        self.done.set()
        self.wake.set()
        self.thread.join(LINK_JOIN)
