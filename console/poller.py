"""The console's one poll loop: a thread worker that never overlaps itself.

Each tick reads a bounded amount whatever the size of the grid (queue counts, one page of
jobs, the nodes, the open job and its new output) and posts one `Polled` message with a
frozen snapshot. The next tick is armed only when the UI has applied that snapshot
(dolphie's one-shot timer), so a slow broker stretches the interval instead of stacking
calls. Broker failures become snapshots with an error and an exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from textual.message import Message
from textual.timer import Timer

from console.link import Link
from console.progress import latest_of_chunks
from gridcore.client import Event, Grid, GridError, QueueStats
from gridcore.connection import BROKER_FAILURES, describe_error
from gridcore.jobfilter import JobFilter
from gridcore import usage
from gridcore.models import Job, JobState, Node, NodeState, OutputChunk
from gridcore.usage import UsageReport

if TYPE_CHECKING:
    from textual.app import App

log = logging.getLogger("gridtui")

PAGE_SIZE = 50
"""Jobs read per tick for the jobs table (one page)."""

TEXT_WINDOW = 1000
"""Newest jobs searched by the `/` text filter (the broker has no full-text index)."""

OUTPUT_BATCH = 2000
"""Output chunks read per tick for the open job; more are read on an immediate next tick."""

OUTPUT_BLOCK_MS = 200
"""While a running job's output is open, a tick waits this long for new output (XREAD BLOCK)."""

PROGRESS_CHUNKS = 4
"""Newest output chunks read per visible running job to find its progress."""

GROUPS_PAGE = 20
"""Sweep groups read per tick for the groups view (each one's cells are counted by state)."""

EVENTS_COUNT = 200
"""Newest events read per tick for the events view."""

USAGE_EVERY = 30.0
"""Seconds between usage reports while the usage view is shown (each reads the day's or week's history)."""

NODES_EVERY = 10.0
"""Seconds between reads of the node states while the nodes view is hidden (the summary counts them)."""


@dataclass(frozen=True)
class Request:
    """What the UI shows right now, read on the UI thread when a tick starts."""

    view: str = "jobs"  # jobs | queues | nodes | events | groups | usage | group (one open) | detail (a job open)
    state: JobState | None = None
    queue: str | None = None
    node: str | None = None
    text: str = ""
    offset: int = 0
    limit: int = PAGE_SIZE
    job_id: str | None = None  # the job open in the detail screen
    after: str = "0-0"  # its output stream cursor
    fresh: bool = False  # the output pane was just opened (nothing read for it yet)
    groups_offset: int = 0  # the page of the groups view
    group_id: str | None = None  # the sweep group open in the parameter grid
    cells_offset: int = 0  # the page of its cells
    usage_window: str = "day"  # the usage view: the last day or week (gridcore.usage.WINDOWS)
    usage_by: str = "user"  # ... split by (gridcore.usage.BY)


@dataclass(frozen=True)
class Snapshot:
    """One tick's reads; `error` set (and the rest empty) when the broker failed."""

    request: Request
    now: float = 0.0
    queues: tuple[QueueStats, ...] = ()
    jobs: tuple[Job, ...] | None = None
    total: int = 0
    progress: dict[str, float] = field(default_factory=dict)
    nodes: tuple[Node, ...] | None = None  # read in full on the nodes view only
    node_states: dict[str, NodeState] | None = None  # every node's state, for the summary line
    events: tuple[Event, ...] | None = None
    groups: tuple[dict, ...] | None = None  # Grid.groups() records, one page
    groups_total: int = 0
    group: dict | None = None  # the open group's record (counts of every cell)
    cells: tuple[Job, ...] | None = None  # one page of its cells, in cell order
    group_missing: bool = False
    job: Job | None = None
    job_missing: bool = False
    usage: UsageReport | None = None  # the usage view's report (read every USAGE_EVERY seconds)
    chunks: tuple[OutputChunk, ...] = ()
    more_output: bool = False
    error: str | None = None
    retry_in: float = 0.0
    attempt: int = 0  # consecutive failed ticks, for the banner
    elapsed: float = 0.0


class Poller:
    """Owns the loop; the app gives it `request()` and handles `Poller.Polled`."""

    class Polled(Message):
        """A tick finished (successfully or not)."""

        def __init__(self, snapshot: Snapshot) -> None:
            super().__init__()
            self.snapshot = snapshot

    def __init__(self, app: App, grid: Grid | Link, request, interval: float = 1.0):
        self.app = app
        self.link = grid if isinstance(grid, Link) else Link(grid.settings, grid)
        self.request = request  # callable -> Request, runs on the UI thread
        self.interval = interval
        self.failures = 0
        self.running = False
        self.started = 0
        self.applied = 0
        self._again = False
        self._full = True
        self._timer: Timer | None = None
        self._nodes_at = 0.0
        self._node_states: dict[str, NodeState] | None = None
        self._tables_at = 0.0
        self._last: Snapshot | None = None
        self._usage: tuple[float, tuple[str, str], UsageReport] | None = None  # when, for what, the report
        self.live = False  # started: until then (a test's frozen app) nothing is read
        self.stopped = False

    @property
    def grid(self) -> Grid:
        """The grid this tick reads (the link may have found the broker somewhere new)."""
        return self.link.grid

    # ---- scheduling (UI thread) ---------------------------------------------------------

    def start(self) -> None:
        self.live = True
        self.poll_now()

    def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.stop()

    def poll_now(self) -> None:
        """Tick as soon as possible (after the running tick, if one is running)."""
        if self.stopped or not self.live:
            return
        self._full = True  # an explicit refresh rereads everything, not only new output
        if self.running:
            self._again = True
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._launch()

    def _launch(self) -> None:
        self.running = True
        self.started += 1
        req = self.request()
        full, self._full = self._full, False
        self.app.run_worker(
            lambda: self._tick(req, full), thread=True, group="poll", exit_on_error=False,
            name="poll",
        )

    def done(self, snapshot: Snapshot) -> None:
        """The UI applied a snapshot: arm the next tick."""
        self.running = False
        self.applied += 1
        self._last = snapshot
        if any(c.stream == "end" for c in snapshot.chunks):
            self._full = True  # the job just ended: reread its record now, not in a second
        if self.stopped:
            return
        if self._again or snapshot.more_output:
            delay = 0.0
        elif snapshot.error:
            delay = snapshot.retry_in
        elif snapshot.request.job_id and snapshot.job and not snapshot.job.state.terminal:
            delay = 0.0  # the tick itself waited on XREAD BLOCK
        else:
            delay = self.interval
        self._again = False
        if delay <= 0:
            self._launch()
        else:
            self._timer = self.app.set_timer(delay, self._launch, name="poll-timer")

    async def refresh(self, timeout: float = 10.0) -> Snapshot | None:
        """Tick now and wait until a tick that started after this call is applied (tests)."""
        target = self.applied + (2 if self.running else 1)
        self.poll_now()
        deadline = time.monotonic() + timeout
        while self.applied < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._last

    # ---- the tick (worker thread) -------------------------------------------------------

    def _tick(self, req: Request, full: bool = True) -> None:
        t0 = time.monotonic()
        try:
            snap = self.read(req, full)
            self.failures = 0
        except BROKER_FAILURES as e:
            self.failures += 1
            delay = min(self.link.backoff_max, 2 ** (self.failures - 1))
            snap = Snapshot(request=req, error=describe_error(e, self.link.url) + self.link.hint(),
                            retry_in=delay, attempt=self.failures)
            self.link.failed()
        except Exception as e:  # noqa: BLE001 - a bug must not stop the loop or reach the screen
            log.exception("poll failed")
            self.failures += 1
            delay = min(self.link.backoff_max, 2 ** (self.failures - 1))
            snap = Snapshot(request=req, error=f"internal error while polling: {type(e).__name__}: {e}",
                            retry_in=delay, attempt=self.failures)
        self.app.post_message(self.Polled(replace(snap, elapsed=time.monotonic() - t0)))

    def read(self, req: Request, full: bool = True) -> Snapshot:
        """Everything one tick reads, bounded by page sizes, never by the number of jobs."""
        g = self.grid
        mono = time.monotonic()
        out: dict = {"request": req}
        last = self._last
        # Between table refreshes, a tick with a job open only waits for its new output.
        output_only = (
            not full and bool(req.job_id) and last is not None and not last.error and last.job is not None
            and last.request.job_id == req.job_id and (mono - self._tables_at) < self.interval
        )
        if req.job_id:
            out.update(self._read_output(req, block=output_only))
        if output_only:
            return Snapshot(**out, now=last.now, queues=last.queues, node_states=self._node_states, job=last.job)
        self._tables_at = mono
        out["now"] = g.broker_time()
        out["queues"] = tuple(g.queues())
        if req.view == "nodes":
            out["nodes"] = tuple(g.nodes())
            self._node_states = {n.name: n.state for n in out["nodes"]}
            self._nodes_at = mono
        elif self._node_states is None or (mono - self._nodes_at >= NODES_EVERY and req.view != "detail"):
            # Other views only count nodes: states are a few bytes a node, inventories kilobytes.
            self._node_states = g.node_states()
            self._nodes_at = mono
        out["node_states"] = self._node_states
        if req.view == "jobs":
            jobs, total = self._read_jobs(req)
            out["jobs"], out["total"] = tuple(jobs), total
            out["progress"] = self._read_progress([j.id for j in jobs if j.state is JobState.RUNNING])
        elif req.view == "events":
            out["events"] = tuple(g.events(count=EVENTS_COUNT))
        elif req.view == "groups":
            out["groups"] = tuple(g.groups(limit=GROUPS_PAGE, offset=req.groups_offset))
            out["groups_total"] = g.group_count()
        elif req.view == "group" and req.group_id:
            out.update(self._read_group(req))
        elif req.view == "usage":
            out["usage"] = self._read_usage(req, out["now"], mono)
        if req.job_id:
            try:
                out["job"] = g.get(req.job_id)
            except Exception as e:  # noqa: BLE001 - JobNotFound: expired or deleted
                if isinstance(e, BROKER_FAILURES):
                    raise
                out["job_missing"] = True
        return Snapshot(**out)

    def _read_usage(self, req: Request, now: float, mono: float) -> UsageReport:
        what = (req.usage_window, req.usage_by)
        if self._usage is None or self._usage[1] != what or mono - self._usage[0] >= USAGE_EVERY:
            report = usage.recent(self.grid.redis, self.link.settings.history_path, req.usage_window, req.usage_by,
                                  now)
            self._usage = (mono, what, report)
        return self._usage[2]

    def _read_group(self, req: Request) -> dict:
        try:
            group = self.grid.group(req.group_id)
        except GridError:
            return {"group_missing": True}  # expired, or a bad id
        cells = self.grid.get_many(group["jobs"][req.cells_offset : req.cells_offset + req.limit])
        progress = self._read_progress([j.id for j in cells if j.state is JobState.RUNNING])
        return {"group": group, "cells": tuple(cells), "progress": progress}

    def _read_jobs(self, req: Request) -> tuple[list[Job], int]:
        if not req.text:
            return self.grid.list(state=req.state, queue=req.queue, node=req.node, offset=req.offset,
                                  limit=req.limit)
        window, _ = self.grid.list(state=req.state, queue=req.queue, node=req.node, offset=0, limit=TEXT_WINDOW)
        flt = JobFilter(state=req.state, queue=req.queue, node=req.node, text=req.text)
        hits = [j for j in window if flt.matches(j)]
        return hits[req.offset : req.offset + req.limit], len(hits)

    def _read_progress(self, ids: list[str]) -> dict[str, float]:
        """Latest progress of each visible running job: a few newest chunks each, one pipeline."""
        if not ids:
            return {}
        out = {}
        for jid, chunks in self.grid.latest_output(ids, PROGRESS_CHUNKS).items():
            value = latest_of_chunks([(c.stream[0], c.data) for c in chunks if c.stream in ("stdout", "stderr")])
            if value is not None:
                out[jid] = value
        return out

    def _read_output(self, req: Request, block: bool) -> dict:
        g = self.grid
        out: dict = {}
        chunks = g.tail(req.job_id, after=req.after, count=OUTPUT_BATCH)
        if not chunks and block:
            chunks = g.tail(req.job_id, after=req.after, count=OUTPUT_BATCH, block_ms=OUTPUT_BLOCK_MS)
        out["chunks"] = tuple(chunks)
        out["more_output"] = len(chunks) >= OUTPUT_BATCH
        return out
