"""A job's environment is built from the agent's as it is at the job's start (agent/runner.py),
though the slot keeps its filtered copy between jobs."""

from __future__ import annotations

from agent import runner


def test_the_agents_environment_is_read_again_once_it_changed(monkeypatch):
    ctx = runner.RunContext(job_id="j", node="n", slot=0, kill_grace=1.0, marker_env={}, broker_time=lambda: 0.0)
    monkeypatch.setenv("LAB_X", "1")
    monkeypatch.setenv("GRID_SECRET_OF_THE_AGENT", "s")
    first = runner.build_env({"env": {"A": "b"}}, ctx)
    assert first["LAB_X"] == "1" and first["A"] == "b" and "GRID_SECRET_OF_THE_AGENT" not in first
    first["LAB_X"] = "changed by a caller"  # a copy: the next job's is its own
    monkeypatch.setenv("LAB_X", "2")
    monkeypatch.delenv("GRID_SECRET_OF_THE_AGENT")
    monkeypatch.setenv("LAB_Y", "3")
    second = runner.build_env({}, ctx)
    assert second["LAB_X"] == "2" and second["LAB_Y"] == "3" and "A" not in second
