"""A rolling upgrade under load, as agent/deploy/README.md tells it: per node drain, wait for
its jobs, stop (warm), upgrade, start, resume. Nothing is lost, failed or run twice."""

from __future__ import annotations

import threading
import time

import pytest

from gridcore.models import JobSpec, JobState

pytestmark = [pytest.mark.slow, pytest.mark.agents]

STREAMING = "for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.1; done"
"""A job that runs a while and streams output while nodes come and go."""


def test_rolling_upgrade_under_load_loses_and_fails_nothing(grid, agents, cli):
    nodes = {name: agents(name, slots=2) for name in ("node-u1", "node-u2")}
    submitted: list[str] = []
    stop = threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            cmd = STREAMING if i % 3 == 0 else f"echo job {i}"
            submitted.append(grid.submit(JobSpec(command=cmd, name=f"load-{i}")))
            i += 1
            time.sleep(0.1)

    feeder = threading.Thread(target=load, daemon=True)
    feeder.start()
    try:
        time.sleep(1.0)
        for name, agent in nodes.items():
            assert cli("drain", name, "--reason", "upgrade").returncode == 0
            deadline = time.monotonic() + 30
            while grid.node(name).slots_busy:  # what it runs finishes; it takes nothing new
                assert time.monotonic() < deadline, "drained node never went idle"
                time.sleep(0.1)
            assert agent.stop() == 0  # warm stop, nothing running
            agent.start()  # the upgraded agent (same code here: the package is what a lab upgrades)
            assert grid.node(name).draining  # a restart keeps the drain: nothing starts before resume
            assert cli("resume", name).returncode == 0
            time.sleep(0.5)
    finally:
        stop.set()
        feeder.join(10)
    states = grid.wait(submitted, timeout=60)
    assert set(states.values()) == {JobState.FINISHED}, {s for s in states.values()}
    for jid in submitted:
        job = grid.get(jid)
        assert len(job.attempts) == 1, (jid, job.attempts)
    ran = {grid.get(j).node for j in submitted}
    assert ran == {"node-u1", "node-u2"}
    kinds = {e.kind for e in grid.events(5000)}
    assert not kinds & {"lost", "requeued", "failed", "refused"}, kinds
    streamed = [j for j in submitted if grid.get(j).stdout.startswith("line 1")]
    assert streamed and all(grid.get(j).stdout.count("\n") == 8 for j in streamed)
