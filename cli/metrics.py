"""`grid metrics`: a Prometheus exporter for grid-wide figures, read from the broker at each scrape.

Jobs by state and queue, queue depths and the oldest queued job's wait, every node's state
and busy slots, and, from the grid's event stream since the exporter started: ended jobs by
outcome, their run time, queue wait and output bytes, refusals and losses by reason. Run one
exporter per grid (any machine that reaches the broker; the viewer user is enough).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated

import redis
import typer

from agent.metrics import BYTES_BUCKETS, DURATION_BUCKETS, loss_kind, refusal_kind
from gridcore.client import Grid
from gridcore.models import JobState, NodeState

EVENTS_PER_SCRAPE = 20_000
"""Most new events one scrape reads; older ones beyond it are counted as skipped."""
PAGE = 1000
"""Events (and jobs) read per broker call."""
ENDED = {"finished", "failed", "canceled"}
"""Event kinds that end an attempt."""
WAIT_BUCKETS = (0.01, 0.1, 1, 10, 60, 600, 3600, 6 * 3600, 24 * 3600)
"""Seconds a job waited from submit to its start."""


def _sid(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms or 0), int(seq or 0)


class GridCollector:
    """Collects the grid's figures from the broker on every scrape (scrapes don't overlap)."""

    def __init__(self, grid: Grid):
        from prometheus_client import Counter, Histogram

        self.grid = grid
        self.lock = threading.Lock()
        newest = grid.events(1)
        self.last = newest[0].id if newest else "0-0"  # counters start at zero when the exporter starts
        self.ended = Counter("grid_jobs_ended", "Job attempts that ended, by queue and outcome.", ["queue", "outcome"],
                             registry=None)
        self.duration = Histogram("grid_job_duration_seconds", "Run time of ended jobs.", ["queue"],
                                  buckets=DURATION_BUCKETS, registry=None)
        self.wait = Histogram("grid_job_wait_seconds", "From submit to start, of ended jobs.", ["queue"],
                              buckets=WAIT_BUCKETS, registry=None)
        self.output = Histogram("grid_job_output_bytes", "Bytes of stdout and stderr per ended job.", ["queue"],
                                buckets=BYTES_BUCKETS, registry=None)
        self.refused = Counter("grid_refusals", "Jobs a node refused to run, by reason.", ["reason"], registry=None)
        self.lost = Counter("grid_losses", "Attempts lost with their node, by reason.", ["reason"], registry=None)
        self.skipped = Counter("grid_exporter_events_skipped", "Events not read: more than one scrape reads.",
                               registry=None)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("grid_exporter_broker_up", "1 if the exporter read the broker for this scrape.")
        with self.lock:
            try:
                families = list(self._state())
                self._follow_events()
            except redis.RedisError:
                up.add_metric([], 0)
                yield up
                return
        up.add_metric([], 1)
        yield up
        yield from families
        for metric in (self.ended, self.duration, self.wait, self.output, self.refused, self.lost, self.skipped):
            yield from metric.collect()

    def _state(self):
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        jobs = GaugeMetricFamily("grid_jobs", "Jobs by queue and state.", labels=["queue", "state"])
        depth = GaugeMetricFamily("grid_queue_depth", "Jobs waiting in a queue.", labels=["queue"])
        oldest = GaugeMetricFamily("grid_queue_oldest_wait_seconds", "Age of a queue's oldest waiting job.",
                                   labels=["queue"])
        workers = GaugeMetricFamily("grid_queue_workers", "Worker slots serving a queue.", labels=["queue"])
        now = self.grid.broker_time()
        for q in self.grid.queues():
            for state in JobState:
                jobs.add_metric([q.name, state.value], getattr(q, state.value))
            depth.add_metric([q.name], q.queued)
            workers.add_metric([q.name], q.workers)
            wait = 0.0  # an empty queue keeps no one waiting
            if q.queued:
                page, _ = self.grid.list(state=JobState.QUEUED, queue=q.name, offset=q.queued - 1, limit=1)
                if page and page[0].enqueued_at:
                    wait = max(0.0, now - page[0].enqueued_at)
            oldest.add_metric([q.name], wait)
        yield from (jobs, depth, oldest, workers)
        state = GaugeMetricFamily("grid_node_state", "1 for the state each node is in.", labels=["node", "state"])
        slots = GaugeMetricFamily("grid_node_slots", "Worker slots per node.", labels=["node"])
        busy = GaugeMetricFamily("grid_node_slots_busy", "Slots running a job, per node.", labels=["node"])
        age = GaugeMetricFamily("grid_node_heartbeat_age_seconds", "Broker-clock age of each node's heartbeat.",
                                labels=["node"])
        info = InfoMetricFamily("grid_node", "Each node's agent.", labels=["node"])
        for n in self.grid.nodes():
            for s in NodeState:
                state.add_metric([n.name, s.value], int(n.state is s))
            slots.add_metric([n.name], n.slots_total)
            busy.add_metric([n.name], n.slots_busy)
            if n.heartbeat_age is not None:  # never beat: unknown, so no sample (0 would read as fresh)
                age.add_metric([n.name], n.heartbeat_age)
            info.add_metric([n.name], {"version": n.version or "unknown", "hostname": n.hostname or ""})
        yield from (state, slots, busy, age, info)

    def _follow_events(self) -> None:
        """Count what happened since the last scrape (newest first from the broker, applied oldest first)."""
        fresh, before, last = [], "+", _sid(self.last)
        while len(fresh) < EVENTS_PER_SCRAPE:
            page = self.grid.events(PAGE, before=before)
            new = [e for e in page if _sid(e.id) > last]
            fresh += new
            if len(new) < len(page) or len(page) < PAGE:
                break
            before = "(" + page[-1].id
        else:
            self.skipped.inc(1)  # at least one; how many would need the reading this bound avoids
        if not fresh:
            return
        self.last = fresh[0].id
        ended: list[str] = []
        for e in reversed(fresh):
            if e.kind in ENDED and e.job:
                ended.append(e.job)
            elif e.kind == "refused":
                self.refused.labels(refusal_kind(e.message)).inc()
            elif e.kind == "lost":
                self.lost.labels(loss_kind(e.message)).inc()
        for i in range(0, len(ended), PAGE):
            for job in self.grid.get_many(ended[i:i + PAGE]):
                # A failed attempt that is retried ends in no terminal state (yet).
                outcome = job.state.value if job.state.terminal else "retried"
                if job.state is JobState.FAILED and job.reason_kind:
                    outcome = job.reason_kind
                self.ended.labels(job.queue, outcome).inc()
                if job.duration is not None:
                    self.duration.labels(job.queue).observe(job.duration)
                if job.started_at and job.enqueued_at:
                    self.wait.labels(job.queue).observe(max(0.0, job.started_at - job.enqueued_at))
                self.output.labels(job.queue).observe(job.stdout_bytes + job.stderr_bytes)


def metrics(ctx: typer.Context,
            port: Annotated[int, typer.Option(help="Port to serve /metrics on.")] = 9810,
            address: Annotated[str, typer.Option(help="Address to listen on (the Prometheus host must reach it).")] =
            "127.0.0.1",
            once: Annotated[bool, typer.Option("--once", help="Print the figures once and exit.")] = False) -> None:
    """Serve grid-wide Prometheus metrics (jobs, queues, nodes, ended jobs, refusals, losses)."""
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    registry = CollectorRegistry()
    registry.register(GridCollector(ctx.obj.grid))
    if once:
        sys.stdout.write(generate_latest(registry).decode())
        return
    start_http_server(port, addr=address, registry=registry)
    sys.stderr.write(f"grid metrics: serving http://{address}:{port}/metrics\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
