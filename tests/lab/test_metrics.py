"""Prometheus: the agent's endpoint and the grid-wide `grid metrics` exporter, both scraped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import agent as agent_pkg
from gridcore.models import JobSpec, JobState
from tests.support.brokers import free_port
from tests.lab.conftest import GRID
from tests.security import forge


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample at http://127.0.0.1:port/metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_agent_and_grid_endpoints_serve_the_grid_s_figures(grid, agents, r, settings, tmp_path):
    exporter_port = free_port()
    exporter = subprocess.Popen([GRID, "--redis-url", settings.redis_url, "metrics", "--port", str(exporter_port)],
                                stderr=subprocess.PIPE)
    try:
        _exercise(grid, agents, r, exporter_port, tmp_path)
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(10)


def _exercise(grid, agents, r, exporter_port, tmp_path):
    port = free_port()
    agent = agents("node-m", slots=2, metrics_port=port)
    ids = [grid.submit(JobSpec(command="printf 12345")) for _ in range(3)]
    bad = grid.submit(JobSpec(command="exit 2"))
    stranger = forge.stranger(tmp_path / "mallory")
    refused = forge.signed_job(r, stranger.sign(forge.envelope(grid, "true", "x")), uuid.uuid4().hex)
    long = grid.submit(JobSpec(command="sleep 30"))
    assert set(grid.wait([*ids, bad, refused], timeout=20).values()) == {JobState.FINISHED, JobState.FAILED}

    def node_figures():
        s = scrape(port)
        assert value(s, "grid_node_jobs_ended_total", node="node-m", outcome="finished") == 3
        assert value(s, "grid_node_jobs_ended_total", node="node-m", outcome="exit") == 1
        assert value(s, "grid_node_job_duration_seconds_count", node="node-m") == 4
        assert value(s, "grid_node_job_output_bytes_sum", node="node-m") == 15
        assert value(s, "grid_node_refusals_total", node="node-m", reason="key_not_authorized") == 1
        assert value(s, "grid_node_slots", node="node-m") == 2 and value(s, "grid_node_broker_up", node="node-m") == 1
        assert value(s, "grid_node_slots_busy", node="node-m") == 1  # the long job
        return s
    s = wait_for(node_figures)
    assert any(k[0] == "grid_node_info" and ("version", grid.node("node-m").version) in k[1] for k in s)

    # A loss: the agent and its slots die under a running job; the next incarnation reclaims it.
    os.killpg(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()
    agent.start()

    def grid_figures():
        g = scrape(exporter_port)
        assert value(g, "grid_jobs_ended_total", queue="default", outcome="finished") == 3
        assert value(g, "grid_jobs_ended_total", queue="default", outcome="exit") == 1
        assert value(g, "grid_job_duration_seconds_count", queue="default") == 4
        assert value(g, "grid_job_output_bytes_sum", queue="default") == 15
        assert value(g, "grid_job_wait_seconds_count", queue="default") == 4
        assert value(g, "grid_refusals_total", reason="key_not_authorized") == 1
        assert value(g, "grid_losses_total", reason="agent_restarted") == 1
        assert value(g, "grid_node_state", node="node-m", state="up") == 1
        assert value(g, "grid_node_slots", node="node-m") == 2
        assert value(g, "grid_jobs", queue="default", state="finished") == 3
        assert value(g, "grid_exporter_broker_up") == 1
        return g
    g = wait_for(grid_figures)
    served = {name for name, _ in s} | {name for name, _ in g}
    dashboard = json.loads((Path(agent_pkg.__file__).parent / "deploy" / "grafana-dashboard.json").read_text())
    used = set(re.findall(r"\b(grid_[a-z_]+)", json.dumps(dashboard)))
    assert used and used <= served, used - served  # every figure the Grafana dashboard plots exists
    assert grid.wait([long], timeout=0)[long] in (JobState.QUEUED, JobState.RUNNING)
    grid.cancel(long, wait=20)


def test_a_node_that_never_beat_has_no_heartbeat_age(grid, r):
    """A name in the registry with no heartbeat of its own is down, and its age unknown: the
    exporter leaves its age out (as `grid nodes` and the console say "never"), never 0 (fresh)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from cli.metrics import GridCollector
    from gridcore import keys
    from tests.support.records import put_node

    now = grid.broker_time()
    put_node(r, "up", now - 3)
    r.zadd(keys.NODES, {"gone": now})
    registry = CollectorRegistry()
    registry.register(GridCollector(grid))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(generate_latest(registry).decode()) for s in fam.samples}
    ages = {dict(labels)["node"]: v for (name, labels), v in samples.items() if name == "grid_node_heartbeat_age_seconds"}
    assert set(ages) == {"up"} and ages["up"] >= 3
    assert value(samples, "grid_node_state", node="gone", state="down") == 1
