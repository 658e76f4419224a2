"""One CLI: durations, -f, --json and exit codes the same everywhere; a word where a user needs one."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

import pytest

from gridcore.models import NodeState
from tests.support.cli import run_cli
from tests.support.records import node_record, put_node


@pytest.fixture
def sweep(tmp_path):
    f = tmp_path / "sweep.json"
    f.write_text(json.dumps({"tasks": [{"name": "ising", "command": "echo {T}", "sweep": {"T": [1, 2]}}]}))
    return f


def test_submit_timeout_takes_a_duration_like_descriptors_do(cli, grid):
    jid = json.loads(cli("submit", "--json", "--timeout", "30m", "--", "true", check=True).stdout)["id"]
    assert grid.get(jid).timeout == 1800
    bad = cli("submit", "--timeout", "soon", "--", "true")
    assert bad.returncode == 2 and "--timeout 'soon'" in bad.stderr


def test_plan_takes_f_and_exits_2_for_a_refused_task(cli, r, grid, sweep, tmp_path):
    put_node(r, "node-a", grid.broker_time())
    assert cli("plan", "-f", str(sweep)).returncode == 0
    assert cli("plan", str(sweep)).returncode == 0
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"name": "huge", "command": "true", "resources": {"gpus": 3}}))
    refused = cli("plan", "-f", str(big))
    assert refused.returncode == 2 and "refused" in refused.stdout
    assert cli("submit", "--dry-run", "-f", str(big)).returncode == 2
    assert json.loads(cli("plan", "--json", str(big)).stdout)[0]["refused"]


def test_validate_json(cli, sweep, tmp_path):
    ok = json.loads(cli("validate", "--json", str(sweep), check=True).stdout)
    assert ok == [{"file": str(sweep), "ok": True, "tasks": 1, "jobs": 2, "problems": []}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "command": "true", "timeout": "soon"}))
    p = cli("validate", "--json", str(sweep), str(bad))
    assert p.returncode == 2
    report = json.loads(p.stdout)
    assert [f["ok"] for f in report] == [True, False] and "timeout" in report[1]["problems"][0]


def test_requeue_with_nothing_matching_says_so(cli, grid):
    p = cli("requeue", "--all-failed", "--reason", "node lost")
    assert p.returncode == 0 and "nothing to requeue: no failed job matches --reason 'node lost'" in p.stderr
    assert cli("requeue").returncode == 2  # no ids and no selection: a usage error


def test_submit_says_when_no_node_will_take_the_job(cli, r, grid):
    p = cli("submit", "--", "true")
    assert p.returncode == 0 and "no node has joined this grid yet" in p.stderr
    put_node(r, "node-a", grid.broker_time(), node_record(draining=True, drain_reason="maintenance"))
    p = cli("submit", "--", "true")
    assert p.returncode == 0 and "no node takes jobs now (node-a draining)" in p.stderr
    r.hset("grid:node:node-a", "draining", "0")
    assert grid.node_states()["node-a"] is NodeState.UP
    p = cli("submit", "--", "true")
    assert p.returncode == 0 and p.stderr == ""


def test_submitter_is_the_account_name_without_user(broker, home):
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME")}
    jid = run_cli("submit", "--", "true", url=broker.url, env=env, check=True).stdout.strip()
    shown = json.loads(run_cli("show", "--json", jid, url=broker.url, check=True).stdout)
    assert shown["submitter"].startswith(pwd.getpwuid(os.getuid()).pw_name + "@")


def test_agent_help_looks_like_grid_help():
    env = dict(os.environ, COLUMNS="80")
    agent = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, env=env)
    grid = run_cli("--help", env=env)
    assert agent.returncode == grid.returncode == 0
    assert agent.stdout.startswith("Usage: grid-agent [OPTIONS]") and grid.stdout.startswith("Usage: grid [OPTIONS]")
    for box in ("╭", "│", "─"):
        assert box not in agent.stdout and box not in grid.stdout
    assert "  --redis-url <str>" in agent.stdout and "  --redis-url <str>" in grid.stdout




def test_a_missing_working_directory_is_named(cli, agents, grid):
    from gridcore.models import JobState

    agents("node-a", slots=1)
    jid = cli("submit", "--cwd", "/nonexistent/dir", "--", "pwd", check=True).stdout.strip()
    assert grid.wait([jid], timeout=30)[jid] is JobState.FAILED
    reason = grid.get(jid).reason
    assert reason == "cannot use the working directory '/nonexistent/dir' on node-a: No such file or directory"
