"""The job runner: one shell command in its own session, output streamed live to the broker.

`run_task` is the RQ job function name every grid job carries; only a grid-agent slot runs
it (through `execute`, with a verified envelope and a RunContext), never a plain RQ worker.
"""

from __future__ import annotations

import collections
import os
import selectors
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

from agent import proctree
from gridcore import keys

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
    broker_time: Callable[[], float]
    heartbeat: Callable[[], str | None] = lambda: None  # returns a reason to stop, or None
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: list[str] = field(default_factory=list)  # why `cancel` was set: canceled/shutdown
    extra_env: dict[str, str] = field(default_factory=dict)
    ttl: int = 7 * 24 * 3600


class OutputSink:
    """Batches output into the job's stream within a byte budget; spools the full log locally."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.key = keys.output(ctx.job_id)
        self.pending: list[tuple[str, bytes]] = []
        self.pending_bytes = 0
        self.sent = 0
        self.dropped = 0
        self.counts = {"o": 0, "e": 0}
        self.tails = {"o": collections.deque(), "e": collections.deque()}
        self.tail_len = {"o": 0, "e": 0}
        self.last_flush = time.monotonic()
        self.log_path = ctx.log_dir / f"{ctx.job_id}.log"
        self.log = None
        self.logged = 0
        self.log_truncated = False
        self.noted_budget = False

    def add(self, stream: str, data: bytes) -> None:
        self.counts[stream] += len(data)
        tail = self.tails[stream]
        tail.append(data)
        self.tail_len[stream] += len(data)
        while self.tail_len[stream] - len(tail[0]) >= TAIL_BYTES:
            self.tail_len[stream] -= len(tail.popleft())
        self._spool(data)
        room = self.ctx.output_budget - self.sent - self.pending_bytes
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

    def due(self) -> bool:
        return self.pending_bytes >= FLUSH_BYTES or (
            self.pending and time.monotonic() - self.last_flush >= FLUSH_INTERVAL
        )

    def write_pending(self, pipe) -> None:
        for stream, data in self.pending:
            pipe.xadd(self.key, {"s": stream, "d": data}, maxlen=STREAM_MAXLEN, approximate=True)
        self.sent += self.pending_bytes
        self.pending, self.pending_bytes = [], 0
        if self.dropped and not self.noted_budget:
            self.noted_budget = True
            note = (
                f"output beyond {self.ctx.output_budget} bytes is not kept in the broker; "
                f"full log on {self.ctx.node} at {self.log_path}"
            )
            pipe.xadd(self.key, {"s": "n", "d": note.encode()}, maxlen=STREAM_MAXLEN, approximate=True)
        self.last_flush = time.monotonic()

    def flush(self) -> None:
        if not self.pending:
            self.last_flush = time.monotonic()
            return
        with self.ctx.conn.pipeline(transaction=False) as pipe:
            self.write_pending(pipe)
            pipe.expire(self.key, self.ctx.ttl)
            pipe.execute()

    def tail_text(self, stream: str) -> str:
        data = b"".join(self.tails[stream])[-TAIL_BYTES:]
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def build_env(envelope: dict[str, Any], ctx: RunContext) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRID_")}
    env.update({str(k): str(v) for k, v in (envelope.get("env") or {}).items()})
    env.update(ctx.extra_env)
    env.update(ctx.marker_env)
    env[proctree.ENV_JOB] = ctx.job_id
    return env


def describe_signal(sig: int) -> str:
    try:
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    except ValueError:
        return f"killed by signal {sig}"


def execute(envelope: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Run the envelope's command to completion (or cancel/timeout); return the result record."""
    argv = envelope.get("argv") or ["/bin/sh", "-c", envelope["command"]]
    timeout = envelope.get("timeout")
    start = ctx.broker_time()
    t0 = time.monotonic()
    sink = OutputSink(ctx)
    record: dict[str, Any] = {"node": ctx.node, "slot": ctx.slot, "start": start}
    try:
        proc = subprocess.Popen(
            argv,
            cwd=envelope.get("cwd") or None,
            env=build_env(envelope, ctx),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        end = ctx.broker_time()
        msg = f"cannot start {argv[0]!r}: {e.strerror or e}"
        sink.add("e", (msg + "\n").encode())
        record.update(exit_code=127, signal=None, reason=msg, end=end, duration=end - start)
        return _finish(record, sink, ctx)

    killed_for: str | None = None
    kill_info: tuple[int, list[int]] | None = None
    sel = selectors.DefaultSelector()
    for f, name in ((proc.stdout, "o"), (proc.stderr, "e")):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ, name)
    open_fds = 2
    next_beat = time.monotonic() + HEARTBEAT_EVERY
    exited_at: float | None = None
    while True:
        if open_fds:
            for key, _ in sel.select(timeout=FLUSH_INTERVAL / 2):
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
        else:
            time.sleep(0.01)
        if sink.due():
            sink.flush()
        now = time.monotonic()
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
                sink.flush()
                kill_info = proctree.kill_tree(
                    proc.pid, psutil.Process(proc.pid) if proc.poll() is None else None,
                    {proctree.ENV_JOB: ctx.job_id}, ctx.kill_grace, reap=proc.poll,
                )
        if now >= next_beat:
            next_beat = now + HEARTBEAT_EVERY
            stop = ctx.heartbeat()
            if stop and not ctx.cancel.is_set():
                ctx.stop_reason.append(stop)
                ctx.cancel.set()
    sel.close()
    for f in (proc.stdout, proc.stderr):
        if not f.closed:
            f.close()
    rc = proc.wait()
    # Leftovers of a finished job (background children) are part of the job: end them too.
    if kill_info is None and proctree.group_alive(proc.pid):
        kill_info = proctree.kill_tree(proc.pid, None, {proctree.ENV_JOB: ctx.job_id}, ctx.kill_grace)
    end = ctx.broker_time()
    record.update(end=end, duration=round(end - start, 6))
    if rc < 0:
        record.update(exit_code=None, signal=-rc)
    else:
        record.update(exit_code=rc, signal=None)
    if kill_info is not None:
        record["killed_processes"] = kill_info[0]
        record["survivors"] = kill_info[1]
    if killed_for == "timeout":
        record["reason"] = f"timeout after {timeout:g}s"
    elif killed_for:
        record["reason"] = killed_for
    elif rc < 0:
        record["reason"] = describe_signal(-rc)
    elif rc != 0:
        record["reason"] = f"exit code {rc}"
    else:
        record["reason"] = None
    if killed_for and killed_for != "timeout":
        record["outcome"] = killed_for  # canceled / shutdown: not a job failure
    return _finish(record, sink, ctx)


def _finish(record: dict[str, Any], sink: OutputSink, ctx: RunContext) -> dict[str, Any]:
    sink.close()
    record.update(
        stdout=sink.tail_text("o"),
        stderr=sink.tail_text("e"),
        stdout_bytes=sink.counts["o"],
        stderr_bytes=sink.counts["e"],
        dropped_bytes=sink.dropped,
        log_path=str(sink.log_path) if sink.log is not None else None,
        log_truncated=sink.log_truncated,
    )
    record["_sink"] = sink  # the slot writes pending output with the end marker, in one pipeline
    return record


def end_marker(record: dict[str, Any]) -> dict[str, str]:
    return {
        "s": "x",
        "code": "" if record.get("exit_code") is None else str(record["exit_code"]),
        "sig": "" if record.get("signal") is None else str(record["signal"]),
        "reason": record.get("reason") or "",
    }
