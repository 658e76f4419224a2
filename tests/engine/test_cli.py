"""The `grid` CLI as a user runs it: real processes, real agent, real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil

from agent.proctree import ENV_GRID, ENV_JOB, ENV_NODE, tagged
from gridcore import keys
from gridcore.models import JobState
from tests.support.cli import run_cli
from tests.support.wait import eventually


def test_submit_wait_show_json(cli, agents):
    agents("node-a", slots=1)
    jid = json.loads(cli("submit", "--json", "--name", "greet", "--", "echo hello", check=True).stdout)["id"]
    assert cli("wait", jid, "--timeout", "30").returncode == 0
    shown = json.loads(cli("show", "--json", jid, check=True).stdout)
    for key in ("id", "name", "state", "queue", "node", "command", "exit_code", "signal", "reason", "enqueued_at",
                "started_at", "ended_at", "duration", "stdout", "stderr"):
        assert key in shown
    assert shown["state"] == "finished" and shown["exit_code"] == 0 and "hello" in shown["stdout"]
    assert shown["name"] == "greet" and shown["node"] == "node-a"
    listed = json.loads(cli("ls", "--json", check=True).stdout)
    assert listed["total"] == 1 and listed["jobs"][0]["id"] == jid
    nodes = json.loads(cli("nodes", "--json", check=True).stdout)
    assert nodes[0]["name"] == "node-a" and nodes[0]["state"] == "up" and nodes[0]["slots_total"] == 1
    for key in ("heartbeat_age", "cpus", "memory_total", "gpus", "labels", "slots_busy"):
        assert key in nodes[0]


def test_argv_form_and_logs_follow_exit_code(cli, agents):
    agents("node-a", slots=1)
    jid = cli("submit", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=True).stdout.strip()
    p = cli("logs", "-f", jid)
    assert p.returncode == 7
    assert p.stdout == "out\n" and "err\n" in p.stderr
    assert cli("wait", jid, "--timeout", "10").returncode == 1


def test_cancel_running_tree_leaves_no_process(cli, agents, grid):
    agents("node-a", slots=1)
    script = "sleep 300 & sleep 300 & python3 -c 'import os,time; os.setsid(); time.sleep(300)' & wait"
    jid = cli("submit", "--", script, check=True).stdout.strip()
    eventually(lambda: len(tagged({ENV_JOB: jid})) >= 4, 20, 0.1, "the job's four processes")
    p = cli("cancel", jid)
    assert p.returncode == 0 and "canceled" in p.stdout
    assert grid.state(jid) is JobState.CANCELED
    assert tagged({ENV_JOB: jid}) == []
    job = grid.get(jid)
    assert job.reason == "canceled"


def test_cancel_queued_job(cli, grid):
    jid = cli("submit", "--", "true", check=True).stdout.strip()  # no agent: stays queued
    assert cli("cancel", jid).returncode == 0
    assert grid.state(jid) is JobState.CANCELED
    assert grid.queues()[0].queued == 0


def test_sigkill_agent_then_restart_leaves_no_orphans(agents, grid, r):
    a = agents("node-a", slots=1)
    from gridcore.models import JobSpec

    jid = grid.submit(JobSpec(command="sleep 300 & sleep 300; wait"))
    eventually(lambda: tagged({ENV_JOB: jid}), 20, 0.1, "the job to run")
    old_slots = [p.pid for p in psutil.Process(a.proc.pid).children()]
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    a.start()  # a new incarnation of the same node
    eventually(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in old_slots), 20, 0.1, "the earlier incarnation's slots to be gone",
               tolerate=(psutil.NoSuchProcess,))
    # Other grids on this machine may have a node-a too: look at this grid's only.
    procs = tagged({ENV_GRID: r.get(keys.GRID_ID).decode(), ENV_NODE: "node-a"})
    agent_ids = {p.environ().get("GRID_JOB_AGENT") for p in procs}
    assert len(agent_ids) <= 1, f"processes of several incarnations: {agent_ids}"


def test_rq_info_lists_the_agents_workers(agents, broker):
    agents("node-a", slots=2)
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rq"), "info", "-u", broker.url, "--only-workers"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("node-a.") == 2


def test_binary_flood_is_bounded(agents, grid, r):
    agents("node-a", slots=1, output_budget=4 * 1024 * 1024)
    from gridcore.models import JobSpec

    jid = grid.submit(JobSpec(command="head -c 200000000 /dev/urandom"))
    assert grid.wait([jid], timeout=120)[jid] is JobState.FINISHED
    job = grid.get(jid)
    assert job.stdout_bytes == 200_000_000
    assert job.dropped_bytes >= 200_000_000 - 4 * 1024 * 1024
    assert 0 < len(job.stdout) <= 4096 * 2
    assert r.info("memory")["used_memory"] < 64 * 1024 * 1024
    notes = [c for c in grid.tail(jid, count=100_000) if c.stream == "note"]
    assert notes and b"rolling tail" in notes[0].data


def test_dead_broker_is_one_line(home):
    p = run_cli("ls", url="redis://127.0.0.1:1/0")
    assert p.returncode == 1
    assert p.stderr.startswith("grid: cannot reach the broker") and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_bad_usage_exits_2(cli):
    assert cli("ls", "--state", "bogus").returncode == 2
    assert cli("show", "nope").returncode == 2
    assert cli("submit").returncode == 2
    assert cli("submit", "--env", "NOEQUALS", "--", "true").returncode == 2


def test_unknown_config_key_is_named(home, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('redis_ulr = "redis://x"\n')
    p = run_cli("--config", str(cfg), "ls")
    assert p.returncode == 2 and "unknown setting 'redis_ulr'" in p.stderr
