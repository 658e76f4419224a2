"""The agent's Prometheus endpoint (opt-in: `agent.metrics_port`).

The slots are processes of their own, so they record job figures in prometheus_client's
multiprocess files (a directory the agent makes per incarnation, named in
PROMETHEUS_MULTIPROC_DIR, which the slots inherit); the agent serves those together with
figures it reads from the broker at each scrape (slots, busy slots, draining, version).
Without a metrics port nothing here runs and the slots record nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import redis

from gridcore import keys
from gridcore.records import NODE_DRAINING, NODE_SLOTS, NodeRecord
from gridcore.version import package_version

log = logging.getLogger("grid.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps each process's figures."""
DURATION_BUCKETS = (0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600)
"""Seconds: from a sweep's tiny cells to day-long training runs."""
BYTES_BUCKETS = (0, 1024, 64 * 1024, 1024**2, 16 * 1024**2, 256 * 1024**2, 1024**3)
"""Bytes of output one job wrote."""

REFUSAL_KINDS = (
    ("not authorized", "key_not_authorized"), ("revoked", "key_revoked"), ("signature", "bad_signature"),
    ("not one this node runs", "unknown_format"), ("expired", "expired"), ("in the future", "not_yet_valid"),
    ("replayed", "replay"), ("already running", "duplicate"), ("not allowed on this node", "policy"),
    ("allowed roots", "policy"), ("timeout must be", "policy"), ("grid runner", "not_a_grid_job"),
    ("not JSON", "not_a_grid_job"), ("callbacks", "not_a_grid_job"), ("webhooks", "not_a_grid_job"),
)
"""Phrases of a refusal's reason -> the bounded label metrics count it under."""


def refusal_kind(reason: str) -> str:
    """A refusal's reason as one of a few label values (reasons carry ids and fingerprints)."""
    return next((kind for phrase, kind in REFUSAL_KINDS if phrase in reason), "other")


def loss_kind(reason: str) -> str:
    """A lost attempt's reason as a label value: agent_restarted, slot_died or node_down."""
    if "restarted" in reason:
        return "agent_restarted"
    return "slot_died" if "worker slot" in reason else "node_down"


class _SlotFigures:
    """What a slot records per job (created on first use, in a slot with MULTIPROC_ENV set)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.jobs = Counter("grid_node_jobs_ended", "Jobs this node ran to an end, by outcome.", ["node", "outcome"])
        self.duration = Histogram("grid_node_job_duration_seconds", "Run time of jobs on this node.", ["node"],
                                  buckets=DURATION_BUCKETS)
        self.output = Histogram("grid_node_job_output_bytes", "Bytes of stdout and stderr per job on this node.",
                                ["node"], buckets=BYTES_BUCKETS)
        self.refused = Counter("grid_node_refusals", "Jobs this node refused to run, by reason.", ["node", "reason"])


_figures: _SlotFigures | None = None


def _slot_figures() -> _SlotFigures | None:
    global _figures
    if _figures is None and os.environ.get(MULTIPROC_ENV):
        _figures = _SlotFigures()
    return _figures


def job_ended(record: dict[str, Any], outcome: str | None = None) -> None:
    """Count one ended attempt (the runner's result record; `outcome` canceled, shutdown or
    fenced when it was stopped for a reason not its own); nothing when metrics are off."""
    f = _slot_figures()
    if f is None:
        return
    node = str(record.get("node") or "")
    outcome = outcome or ("finished" if record.get("exit_code") == 0 and not record.get("reason")
                                        else record.get("reason_kind") or "failed")
    f.jobs.labels(node, outcome).inc()
    f.duration.labels(node).observe(float(record.get("duration") or 0.0))
    f.output.labels(node).observe(int(record.get("stdout_bytes") or 0) + int(record.get("stderr_bytes") or 0))


def job_refused(node: str, reason: str) -> None:
    """Count one refusal; nothing when metrics are off."""
    f = _slot_figures()
    if f is not None:
        f.refused.labels(node, refusal_kind(reason)).inc()


class NodeCollector:
    """Figures the agent reads from the broker at each scrape."""

    def __init__(self, conn: redis.Redis, node: str, agent_id: str):
        self.conn, self.node, self.agent_id = conn, node, agent_id

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        info = InfoMetricFamily("grid_node", "This node's agent.", labels=["node"])
        info.add_metric([self.node], {"version": package_version(), "agent_id": self.agent_id})
        yield info
        up = GaugeMetricFamily("grid_node_broker_up", "1 if the agent reached the broker for this scrape.",
                               labels=["node"])
        try:
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.node(self.node), [NODE_SLOTS, NODE_DRAINING])
                pipe.hlen(keys.node_running(self.node))
                (slots, draining), busy = pipe.execute()
        except redis.RedisError:
            up.add_metric([self.node], 0)
            yield up
            return
        up.add_metric([self.node], 1)
        yield up
        for name, doc, value in (("grid_node_slots", "Worker slots of this node.", int(slots or 0)),
                                 ("grid_node_slots_busy", "Slots running (or starting) a job.", busy),
                                 ("grid_node_draining", "1 while the node takes no new jobs.", int(NodeRecord.draining_read(draining)))):
            g = GaugeMetricFamily(name, doc, labels=["node"])
            g.add_metric([self.node], value)
            yield g


def start(conn: redis.Redis, node: str, agent_id: str, port: int, address: str, data_dir: Path) -> Path:
    """Serve the node's metrics on address:port; return the slots' multiprocess directory.

    Call before the slots start: they inherit MULTIPROC_ENV from the agent's environment."""
    path = data_dir / "metrics" / node
    shutil.rmtree(path, ignore_errors=True)  # an earlier incarnation's figures: its slots are gone
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    registry.register(NodeCollector(conn, node, agent_id))
    start_http_server(port, addr=address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", address, port)
    return path
