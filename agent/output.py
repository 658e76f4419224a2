"""An attempt's live output: the sink that batches it into the job's stream within a byte
budget (spooling the full log on the node), and the thread that sends it and heartbeats.

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
from pathlib import Path
from typing import Any

import redis

from agent.outage import OUTAGE_ERRORS, RETRY_BACKOFF
from gridcore import keys
from gridcore.records import OutputEntry

log = logging.getLogger("grid.output")

FLUSH_INTERVAL = 0.1
"""Seconds between output flushes to the broker (the live-output latency floor)."""
FLUSH_BYTES = 16 * 1024
"""Buffered bytes that force an early flush."""
STREAM_MAXLEN = 20_000
"""Approximate cap on entries in one job's output stream."""
TAIL_BYTES = 4096
"""Bytes of stdout and of stderr kept in the result record."""
HEARTBEAT_EVERY = 1.0
"""Seconds between job heartbeats / cancel-flag checks while a job runs."""
LINK_JOIN = 5.0
"""Seconds the runner waits for its broker thread to finish a call in flight at job end."""

Entry = tuple[str, dict[str, Any], int]
"""A stream entry not yet stored: (entry id, fields, bytes of output it carries)."""


class OutputSink:
    """Batches output into the job's stream within a byte budget; spools the full log locally.

    Thread-safe: the runner loop adds, the broker thread (and at the end the slot) sends.
    """

    def __init__(self, conn: redis.Redis, job_id: str, node: str, start: float, *, budget: int, log_dir: Path,
                 log_cap: int, ttl: int):
        self.conn = conn
        self.node = node
        self.budget = budget
        self.log_cap = log_cap
        self.ttl = ttl
        self.key = keys.output(job_id)
        self.lock = threading.Lock()
        self.pending: list[tuple[str, bytes]] = []
        self.pending_bytes = 0
        self.inflight: list[Entry] = []
        self.inflight_bytes = 0
        self.id_ms = int(start * 1000)
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.counts = {"o": 0, "e": 0}
        self.tails: dict[str, collections.deque[bytes]] = {"o": collections.deque(), "e": collections.deque()}
        self.tail_len = {"o": 0, "e": 0}
        self.log_path = log_dir / f"{job_id}.log"
        self.log = None
        self.logged = 0
        self.log_truncated = False
        self.noted_budget = False

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
            room = self.budget - self.sent - self.pending_bytes - self.inflight_bytes
            if room <= 0:
                self.dropped += len(data)
                return
            if len(data) > room:
                self.dropped += len(data) - room
                data = data[:room]
            # Merge with the previous chunk of the same stream: fewer, larger stream entries.
            if self.pending and self.pending[-1][0] == stream and len(self.pending[-1][1]) < FLUSH_BYTES:
                self.pending[-1] = (stream, self.pending[-1][1] + data)
            else:
                self.pending.append((stream, data))
            self.pending_bytes += len(data)

    def _spool(self, data: bytes) -> None:
        if self.log_truncated:
            return
        if self.log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
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
        return self.pending_bytes >= FLUSH_BYTES

    def take(self) -> list[Entry]:
        """Everything not yet stored, oldest first, with fixed entry ids (so resending is safe)."""
        with self.lock:
            for stream, data in self.pending:
                self.seq += 1
                self.inflight.append((f"{self.id_ms}-{self.seq}", OutputEntry(stream, data).fields(), len(data)))
            self.inflight_bytes += self.pending_bytes
            self.pending, self.pending_bytes = [], 0
            if self.dropped and not self.noted_budget:
                self.noted_budget = True
                note = (
                    f"output beyond {self.budget} bytes is not kept in the broker; "
                    f"full log on {self.node} at {self.log_path}"
                )
                self.seq += 1
                self.inflight.append((f"{self.id_ms}-{self.seq}", OutputEntry.note(note).fields(), 0))
            return list(self.inflight)

    def stored(self, batch: list[Entry]) -> None:
        """The broker has `batch` (the head of what `take` returned)."""
        with self.lock:
            done = {eid for eid, _, _ in batch}
            keep = [e for e in self.inflight if e[0] not in done]
            self.sent += sum(n for eid, _, n in self.inflight if eid in done)
            self.inflight = keep
            self.inflight_bytes = sum(n for _, _, n in keep)

    def write_pending(self, pipe) -> list[Entry]:
        """Queue every unstored entry on `pipe`; call `stored` with the result once it ran."""
        batch = self.take()
        for eid, fields, _ in batch:
            pipe.xadd(self.key, fields, id=eid, maxlen=STREAM_MAXLEN, approximate=True)
        return batch

    def write_last(self, pipe, fields: dict[str, Any]) -> None:
        """Queue what is unstored and then one last entry (an end marker, a note) on `pipe`."""
        self.write_pending(pipe)
        pipe.xadd(self.key, fields, id=self.next_id(), maxlen=STREAM_MAXLEN, approximate=True)

    def flush(self) -> None:
        """Send what is buffered now; raises a broker error if the broker is away."""
        with self.conn.pipeline(transaction=False) as pipe:
            batch = self.write_pending(pipe)
            if not batch:
                return
            pipe.expire(self.key, self.ttl)
            replies = pipe.execute(raise_on_error=False)
        errors = reply_errors(replies)
        if errors:
            raise errors[0]
        self.stored(batch)

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


class BrokerLink(threading.Thread):
    """Flushes a job's output and heartbeats it, riding out broker outages.

    `heartbeat` returns a reason to stop the job (canceled, fenced) or None; the link then
    appends it to `stop_reason` and sets `cancel`, which the runner's loop watches.
    """

    def __init__(self, job_id: str, sink: OutputSink, heartbeat: Callable[[], str | None],
                 cancel: threading.Event, stop_reason: list[str]):
        super().__init__(name=f"broker-link-{job_id}", daemon=True)
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
                self.sink.flush()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + HEARTBEAT_EVERY
                    stop = self.heartbeat()
                    if stop and not self.done.is_set() and not self.cancel.is_set():
                        self.stop_reason.append(stop)
                        self.cancel.set()
                if self.outage_since is not None:
                    log.warning("job %s: broker back after %.1fs; output flushed", self.job_id,
                                time.monotonic() - self.outage_since)
                    self.outage_since = None
                failures = 0
                delay = FLUSH_INTERVAL
            except OUTAGE_ERRORS as e:
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning("job %s: broker unreachable (%s); the job goes on, output is buffered",
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
        if self.ident is None:
            self.start()

    def stop(self) -> None:
        if self.ident is None:
            return
        self.done.set()
        self.wake.set()
        self.join(LINK_JOIN)
