"""The job runner: one shell command in its own session, output streamed live to the broker.

`run_task` is the RQ job function name every grid job carries; only a grid-agent slot runs
it (through `execute`, with a verified envelope and a RunContext), never a plain RQ worker.

The loop that reads the job's pipes and enforces cancel and timeout never talks to the
broker: a `BrokerLink` thread flushes output and heartbeats, so a broker outage of any length
neither stalls nor fails the job. Output waits in memory (within the job's byte budget) and
goes out when the broker is back; each stream entry has an explicit id, so a batch that is
sent twice is stored once.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from agent import cgroup, metrics, proctree
from agent.outage import BROKER_ERRORS, RETRY_BACKOFF
from gridcore import keys

log = logging.getLogger("grid.runner")

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
READ_SIZE = 64 * 1024
LINK_JOIN = 5.0
"""Seconds the runner waits for its broker thread to finish a call in flight at job end."""
CGROUP_SHIM = 'echo $$ > "$0" 2>/dev/null; exec "$@"'
"""`sh -c` script that moves itself into the job's cgroup, then becomes the job."""

REASON_KINDS = ("exit", "signal", "timeout", "oom", "lost", "dependency", "refused", "canceled", "error")
"""Values of a result's `reason_kind`: why a job did not finish with exit code 0."""


def run_task(signed: Any) -> None:
    """RQ's view of the job function; refuses to run outside a grid-agent slot."""
    raise RuntimeError("grid jobs run only in a grid-agent slot, which verifies them first")


@dataclass
class RunContext:
    """What a slot gives the runner for one job."""

    conn: redis.Redis
    job_id: str
    node: str
    slot: int
    log_dir: Path
    output_budget: int
    log_cap: int
    kill_grace: float
    marker_env: dict[str, str]
    broker_time: Callable[[], float]  # must not raise while the broker is away (see outage.BrokerClock)
    heartbeat: Callable[[], str | None] = lambda: None  # returns a reason to stop, or None
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: list[str] = field(default_factory=list)  # why `cancel` was set: canceled/shutdown/fenced
    extra_env: dict[str, str] = field(default_factory=dict)
    ttl: int = 7 * 24 * 3600
    cgroup_tag: str = ""  # makes the job's cgroup name unique per agent incarnation
    attempt: int = 1  # which attempt of its envelope this is (1 for the first)


_cgroups: cgroup.JobCgroups | None = None
_cgroups_probed = False


def job_cgroups() -> cgroup.JobCgroups | None:
    """This slot's job cgroups, probed once per process."""
    global _cgroups, _cgroups_probed
    if not _cgroups_probed:
        _cgroups_probed = True
        _cgroups = cgroup.JobCgroups.probe()
        if _cgroups is None:
            log.info("no job cgroups here: OOM kills are told from the node-wide OOM counter")
    return _cgroups


class OutputSink:
    """Batches output into the job's stream within a byte budget; spools the full log locally.

    Thread-safe: the runner loop adds, the broker thread (and at the end the slot) sends.
    """

    def __init__(self, ctx: RunContext, start: float):
        self.ctx = ctx
        self.key = keys.output(ctx.job_id)
        self.lock = threading.Lock()
        self.pending: list[tuple[str, bytes]] = []
        self.pending_bytes = 0
        self.inflight: list[tuple[str, dict[str, Any], int]] = []  # (entry id, fields, bytes), not yet stored
        self.inflight_bytes = 0
        self.id_ms = int(start * 1000)
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.counts = {"o": 0, "e": 0}
        self.tails = {"o": collections.deque(), "e": collections.deque()}
        self.tail_len = {"o": 0, "e": 0}
        self.log_path = ctx.log_dir / f"{ctx.job_id}.log"
        self.log = None
        self.logged = 0
        self.log_truncated = False
        self.noted_budget = False

    def add(self, stream: str, data: bytes) -> None:
        with self.lock:
            self.counts[stream] += len(data)
            tail = self.tails[stream]
            tail.append(data)
            self.tail_len[stream] += len(data)
            while self.tail_len[stream] - len(tail[0]) >= TAIL_BYTES:
                self.tail_len[stream] -= len(tail.popleft())
            self._spool(data)
            room = self.ctx.output_budget - self.sent - self.pending_bytes - self.inflight_bytes
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
        room = self.ctx.log_cap - self.logged
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

    def take(self) -> list[tuple[str, dict[str, Any], int]]:
        """Everything not yet stored, oldest first, with fixed entry ids (so resending is safe)."""
        with self.lock:
            for stream, data in self.pending:
                self.seq += 1
                self.inflight.append((f"{self.id_ms}-{self.seq}", {"s": stream, "d": data}, len(data)))
            self.inflight_bytes += self.pending_bytes
            self.pending, self.pending_bytes = [], 0
            if self.dropped and not self.noted_budget:
                self.noted_budget = True
                note = (
                    f"output beyond {self.ctx.output_budget} bytes is not kept in the broker; "
                    f"full log on {self.ctx.node} at {self.log_path}"
                )
                self.seq += 1
                self.inflight.append((f"{self.id_ms}-{self.seq}", {"s": "n", "d": note.encode()}, 0))
            return list(self.inflight)

    def stored(self, batch: list[tuple[str, dict[str, Any], int]]) -> None:
        """The broker has `batch` (the head of what `take` returned)."""
        with self.lock:
            done = {eid for eid, _, _ in batch}
            keep = [e for e in self.inflight if e[0] not in done]
            self.sent += sum(n for eid, _, n in self.inflight if eid in done)
            self.inflight = keep
            self.inflight_bytes = sum(n for _, _, n in keep)

    def write_pending(self, pipe) -> list[tuple[str, dict[str, Any], int]]:
        """Queue every unstored entry on `pipe`; call `stored` with the result once it ran."""
        batch = self.take()
        for eid, fields, _ in batch:
            pipe.xadd(self.key, fields, id=eid, maxlen=STREAM_MAXLEN, approximate=True)
        return batch

    def flush(self) -> None:
        """Send what is buffered now; raises a broker error if the broker is away."""
        with self.ctx.conn.pipeline(transaction=False) as pipe:
            batch = self.write_pending(pipe)
            if not batch:
                return
            pipe.expire(self.key, self.ctx.ttl)
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
        if isinstance(r, BROKER_ERRORS):
            raise r
        if isinstance(r, Exception) and "equal or smaller" not in str(r):
            out.append(r)
    return out


class BrokerLink(threading.Thread):
    """Flushes a job's output and heartbeats it, riding out broker outages."""

    def __init__(self, ctx: RunContext, sink: OutputSink):
        super().__init__(name=f"broker-link-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.sink = sink
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
                    stop = self.ctx.heartbeat()
                    if stop and not self.done.is_set() and not self.ctx.cancel.is_set():
                        self.ctx.stop_reason.append(stop)
                        self.ctx.cancel.set()
                if self.outage_since is not None:
                    log.warning("job %s: broker back after %.1fs; output flushed", self.ctx.job_id,
                                time.monotonic() - self.outage_since)
                    self.outage_since = None
                failures = 0
                delay = FLUSH_INTERVAL
            except BROKER_ERRORS as e:
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning("job %s: broker unreachable (%s); the job goes on, output is buffered",
                                self.ctx.job_id, e)
                delay = RETRY_BACKOFF[min(failures, len(RETRY_BACKOFF) - 1)]
                failures += 1
            except Exception:  # noqa: BLE001 - a bug here must not take the job down with it
                log.exception("job %s: broker link error", self.ctx.job_id)
                delay = 1.0
            self.wake.wait(delay)
            self.wake.clear()

    def stop(self) -> None:
        self.done.set()
        self.wake.set()
        self.join(LINK_JOIN)


def _ensure_started(link: BrokerLink) -> None:
    if link.ident is None:
        link.start()


def build_env(envelope: dict[str, Any], ctx: RunContext) -> dict[str, str]:
    """The job's environment: the agent's (less GRID_*), the envelope's, then the grid's own
    variables (documented in agent/deploy/README.md, "What a job gets")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRID_")}
    env.update({str(k): str(v) for k, v in (envelope.get("env") or {}).items()})
    env.update(ctx.extra_env)
    env.update(ctx.marker_env)
    env[proctree.ENV_JOB] = ctx.job_id
    env.update(GRID_JOB_SLOT=str(ctx.slot), GRID_JOB_ATTEMPT=str(ctx.attempt))
    return env


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux >= 5.3), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def describe_signal(sig: int) -> str:
    try:
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    except ValueError:
        return f"killed by signal {sig}"


def _check_program(argv0: str, cwd: str | None, env: dict[str, str]) -> None:
    """Fail like exec would, before the cgroup shim hides the error behind `sh`."""
    if cwd and not os.path.isdir(cwd):
        return  # Popen reports the cwd itself
    if "/" in argv0:
        path = os.path.join(cwd or os.getcwd(), argv0)
    else:
        path = shutil.which(argv0, mode=os.F_OK, path=env.get("PATH", os.defpath))
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), argv0)


def _memory_limit(envelope: dict[str, Any]) -> int | None:
    try:
        mem = int((envelope.get("resources") or {}).get("memory") or 0)
    except (TypeError, ValueError):
        return None
    return mem if mem > 0 else None


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def execute(envelope: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Run the envelope's command to completion (or cancel/timeout); return the result record."""
    argv = envelope.get("argv") or ["/bin/sh", "-c", envelope["command"]]
    timeout = envelope.get("timeout")
    cwd = envelope.get("cwd") or None
    limit = _memory_limit(envelope)
    start = ctx.broker_time()
    t0 = time.monotonic()
    sink = OutputSink(ctx, start)
    record: dict[str, Any] = {"node": ctx.node, "slot": ctx.slot, "start": start}
    env = build_env(envelope, ctx)
    # Moving a process into a cgroup costs milliseconds (cgroup v1), a lot next to a short
    # job: only a job with a memory limit gets a group of its own.
    cgroups = job_cgroups() if limit else None
    cg = cgroups.create(f"{ctx.job_id}.{ctx.cgroup_tag or os.getpid()}", limit) if cgroups else None
    try:
        if cg is not None:
            _check_program(argv[0], cwd, env)
        proc = subprocess.Popen(
            ["/bin/sh", "-c", CGROUP_SHIM, str(cg.procs_file), *argv] if cg is not None else argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        if cg is not None:
            cg.remove()
        end = ctx.broker_time()
        msg = f"cannot start {argv[0]!r}: {e.strerror or e}"
        sink.add("e", (msg + "\n").encode())
        record.update(exit_code=127, signal=None, reason=msg, reason_kind="exit", end=end,
                      duration=round(end - start, 6))
        return _finish(record, sink, ctx)

    log.info("started: pid %d, slot %d, attempt %d", proc.pid, ctx.slot, ctx.attempt, extra={"job": ctx.job_id})
    # Most jobs in a big sweep end within milliseconds; their output goes out with the end
    # record. The flusher thread costs a few ms to start and join, so it starts only once a
    # job has run for a flush interval or has output to send early.
    # The node's OOM-kill count, to tell an OOM kill of a job without a cgroup: read once the
    # process runs (a /proc read is not worth delaying its start for).
    node_ooms = cgroup.node_oom_kills() if cg is None else None
    link = BrokerLink(ctx, sink)
    members = cg.pids if cg is not None else None
    killed_for: str | None = None
    kill_info: tuple[int, list[int]] | None = None
    sel = selectors.DefaultSelector()
    for f, name in ((proc.stdout, "o"), (proc.stderr, "e")):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ, name)
    open_fds = 2
    # The pipes close a moment before the process can be reaped; a pidfd wakes the loop at
    # the exit itself instead of a polling sleep (most jobs of a big sweep end right here).
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, "x")
    exited_at: float | None = None
    try:
        while True:
            if open_fds or pidfd is not None:
                for key, _ in sel.select(timeout=FLUSH_INTERVAL / 2):
                    if key.data == "x":  # exited: readable from now on, so stop watching it
                        sel.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
                        continue
                    try:
                        data = os.read(key.fileobj.fileno(), READ_SIZE)
                    except BlockingIOError:
                        continue
                    if data:
                        sink.add(key.data, data)
                    else:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        open_fds -= 1
                if sink.urgent():
                    _ensure_started(link)
                    link.wake.set()
            else:
                time.sleep(0.01)
            now = time.monotonic()
            if now - t0 >= FLUSH_INTERVAL:
                _ensure_started(link)
            if proc.poll() is not None:
                if not open_fds:
                    break
                # The main process is gone but something still holds the pipes: give it a moment.
                exited_at = exited_at or now
                if now - exited_at > 0.5:
                    break
            if killed_for is None:
                if ctx.cancel.is_set():
                    killed_for = ctx.stop_reason[0] if ctx.stop_reason else "canceled"
                elif timeout and now - t0 > timeout:
                    killed_for = "timeout"
                if killed_for:
                    _ensure_started(link)
                    link.wake.set()
                    kill_info = proctree.kill_tree(
                        proc.pid, psutil.Process(proc.pid) if proc.poll() is None else None,
                        {proctree.ENV_JOB: ctx.job_id}, ctx.kill_grace, reap=proc.poll, members=members,
                    )
    finally:
        if link.ident is not None:
            link.stop()
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        for f in (proc.stdout, proc.stderr):
            if not f.closed:
                f.close()
    rc = proc.wait()
    # Leftovers of a finished job (background children) are part of the job: end them too.
    if kill_info is None and (proctree.group_alive(proc.pid) or (cg is not None and cg.pids())):
        kill_info = proctree.kill_tree(proc.pid, None, {proctree.ENV_JOB: ctx.job_id}, ctx.kill_grace,
                                       members=members)
    oom_kills = 0
    if cg is not None:
        oom_kills = cg.oom_kills()
        peak = cg.peak()
        if peak:
            record["memory_peak"] = peak
        if not cg.remove():
            log.warning("job %s: cgroup %s not removed (processes left?)", ctx.job_id, cg.path)
    elif node_ooms is not None and (rc == -signal.SIGKILL or rc == 128 + signal.SIGKILL) and not killed_for:
        # No cgroup of our own: a SIGKILL we did not send while the node's OOM counter moved.
        oom_kills = max(0, (cgroup.node_oom_kills() or 0) - node_ooms)
    end = ctx.broker_time()
    record.update(end=end, duration=round(end - start, 6))
    if rc < 0:
        record.update(exit_code=None, signal=-rc)
    else:
        record.update(exit_code=rc, signal=None)
    if kill_info is not None:
        record["killed_processes"] = kill_info[0]
        record["survivors"] = kill_info[1]
    if oom_kills:
        record["oom_kills"] = oom_kills
    failed = rc != 0
    if killed_for == "timeout":
        record.update(reason=f"timeout after {timeout:g}s", reason_kind="timeout")
    elif killed_for:
        record.update(reason=killed_for, reason_kind="canceled" if killed_for == "canceled" else None)
    elif failed and oom_kills:
        where = f"the job's {_mib(limit)} memory limit" if (limit and cg is not None) else "node out of memory"
        record.update(reason=f"out of memory: killed by the kernel OOM killer ({where})", reason_kind="oom")
    elif rc < 0:
        record.update(reason=describe_signal(-rc), reason_kind="signal")
    elif rc != 0:
        record.update(reason=f"exit code {rc}", reason_kind="exit")
    else:
        record.update(reason=None, reason_kind=None)
    if killed_for and killed_for != "timeout":
        record["outcome"] = killed_for  # canceled / shutdown / fenced: not a job failure
    return _finish(record, sink, ctx)


def _finish(record: dict[str, Any], sink: OutputSink, ctx: RunContext) -> dict[str, Any]:
    sink.close()
    log.info("ended: %s after %.3fs, %d bytes of output", record.get("reason") or "exit code 0",
             record.get("duration") or 0.0, sink.counts["o"] + sink.counts["e"], extra={"job": ctx.job_id})
    record.update(
        stdout=sink.tail_text("o"),
        stderr=sink.tail_text("e"),
        stdout_bytes=sink.counts["o"],
        stderr_bytes=sink.counts["e"],
        dropped_bytes=sink.dropped,
        log_path=str(sink.log_path) if sink.log is not None else None,
        log_truncated=sink.log_truncated,
    )
    metrics.job_ended(record)
    record["_sink"] = sink  # the slot writes pending output with the end marker, in one transaction
    return record


def end_marker(record: dict[str, Any]) -> dict[str, str]:
    return {
        "s": "x",
        "code": "" if record.get("exit_code") is None else str(record["exit_code"]),
        "sig": "" if record.get("signal") is None else str(record["signal"]),
        "reason": record.get("reason") or "",
        "kind": record.get("reason_kind") or "",
    }
