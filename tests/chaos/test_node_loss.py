"""Nodes die, freeze and fall off the network mid-job: the job runs again elsewhere, the
stale copy is killed, and exactly one result is recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from gridcore import keys
from gridcore.models import JobSpec, JobState
from gridcore.records import Result, RunningEntry
from tests.chaos.conftest import (
    NODE_TIMEOUT,
    TRANSIENT,
    assert_accounted,
    can_netns,
    job_procs,
    running_on,
    signal_node,
)
from tests.support.wait import eventually

# Long on node-b, short anywhere else: the copy left on node-b is still running when it
# comes back, so fencing (not luck) is what keeps it from recording a second result.
ONLY_SLOW_ON_B = 'if [ "$GRID_JOB_NODE" = node-b ]; then sleep 60; else sleep 1; fi; echo "done on $GRID_JOB_NODE"'


def start_job_on_b(agents, grid, r, cleanup_jobs, command=ONLY_SLOW_ON_B):
    """node-b alone takes the job; node-a joins once it runs there."""
    b = agents("node-b", slots=1, node_timeout=NODE_TIMEOUT)
    jid = grid.submit(JobSpec(command=command))
    cleanup_jobs.append(jid)
    eventually(lambda: running_on(r, jid) == "node-b" and job_procs(jid), 20, 0.1, "the job to run on node-b",
               tolerate=TRANSIENT)
    a = agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    return a, b, jid


def attempts(grid, jid):
    return [(a.get("node"), a.get("reason_kind") or a.get("reason")) for a in grid.get(jid).attempts]


@pytest.mark.parametrize("how", ["power-off", "agent-only"])
def test_sigkill_mid_job_runs_it_elsewhere_once(agents, grid, r, cleanup_jobs, how):
    a, b, jid = start_job_on_b(agents, grid, r, cleanup_jobs)
    t0 = time.monotonic()
    if how == "power-off":
        signal_node(b, r, signal.SIGKILL)  # agent, slots and job at once: the machine is gone
    else:
        b.signal(signal.SIGKILL)  # the agent only: its slots stop cold and hand the job back
        b.proc.wait(10)
    states = assert_accounted(r, grid, [jid], timeout=40)
    assert states[jid] is JobState.FINISHED
    job = grid.get(jid)
    assert job.node == "node-a" and job.stdout == "done on node-a\n"
    if how == "power-off":
        assert attempts(grid, jid) == [("node-b", "lost"), ("node-a", None)]
        # The lost record is signed by the node that reclaimed it (not pinned here).
        assert grid.get(jid).attempts[0]["signed"] == "signed by node node-a, whose key is not pinned here"
        # Detected within the node timeout plus one sweep period (and the short rerun).
        assert time.monotonic() - t0 < NODE_TIMEOUT + 2 * NODE_TIMEOUT / 3 + 8
        assert any(e.kind == "node_down" and e.node == "node-b" for e in grid.events())
    else:
        assert [n for n, _ in attempts(grid, jid)] == ["node-b", "node-a"]
        assert grid.get(jid).attempts[0]["reason"] == "agent shutdown"


def test_frozen_node_is_fenced_when_it_thaws(agents, grid, r, cleanup_jobs):
    a, b, jid = start_job_on_b(agents, grid, r, cleanup_jobs)
    stale = {p.pid for p in job_procs(jid)}
    signal_node(b, r, signal.SIGSTOP)  # the whole machine hangs (swap storm, VM paused)
    try:
        eventually(lambda: grid.state(jid) is JobState.FINISHED, 40, 0.1, "the job to be rerun on node-a",
                   tolerate=TRANSIENT)
    finally:
        signal_node(b, r, signal.SIGCONT)
    # Thawed, node-b finds the job is no longer its own: it kills its copy and records nothing.
    eventually(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in stale), 20, 0.1, "node-b's stale copy to be killed", tolerate=TRANSIENT)
    eventually(lambda: r.hget(keys.node(b.name), "agent_pid") and not r.hlen(keys.node_running("node-b")), 20, 0.1,
               "node-b to let go of the job", tolerate=TRANSIENT)
    assert_accounted(r, grid, [jid])
    job = grid.get(jid)
    assert job.node == "node-a" and job.stdout == "done on node-a\n"
    assert attempts(grid, jid) == [("node-b", "lost"), ("node-a", None)]
    assert any(e.kind == "node_back" and e.node == "node-b" for e in grid.events())
    # node-b is a working node again.
    again = grid.submit(JobSpec(command="echo again", resources=_on("node-b")))
    assert grid.wait([again], timeout=30)[again] is JobState.FINISHED


def _on(node):
    from gridcore.models import Resources

    return Resources(node=node)


@pytest.mark.skipif(can_netns() is not None, reason=f"no network namespaces: {can_netns()}")
def test_network_cut_node_is_fenced_when_the_link_returns(broker, agents, grid, r, home, cleanup_jobs):
    """node-b runs in its own network namespace behind a veth pair; its link goes down."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"gridchaos{tag}", f"gch{tag}", f"gcn{tag}"
    net = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
    host_ip, ns_ip = f"{net}.1", f"{net}.2"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    sh("ip", "netns", "add", ns)
    agent_b = None
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        # The broker also listens on the host end of the veth (it was started on 127.0.0.1);
        # that link exists only between this test and its namespace, so no password needed.
        assert r.config_set("bind", f"127.0.0.1 {host_ip}")
        assert r.config_set("protected-mode", "no")
        cfg = home / "agent-node-b.toml"
        cfg.write_text(
            f'redis_url = "redis://{host_ip}:{broker.port}/0"\n\n[agent]\nnode_name = "node-b"\nslots = 1\n'
            f"heartbeat_interval = 0.5\nnode_timeout = {NODE_TIMEOUT}\nstop_grace = 5.0\nkill_grace = 1.0\n"
            f'allow_root = true\nlog_dir = "{home / "logs-node-b"}"\n'
        )
        log = open(home / "agent-node-b.log", "ab")  # noqa: SIM115 - closed below
        agent_b = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "agent", "--config", str(cfg)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        eventually(lambda: r.hget(keys.node("node-b"), "ready") not in (None, b""),
                   30, 0.1, "node-b in its namespace", tolerate=TRANSIENT)
        jid = grid.submit(JobSpec(command=ONLY_SLOW_ON_B))
        cleanup_jobs.append(jid)
        eventually(lambda: running_on(r, jid) == "node-b" and job_procs(jid), 20, 0.1, "the job to run on node-b",
                   tolerate=TRANSIENT)
        stale = {p.pid for p in job_procs(jid)}
        agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
        sh("ip", "link", "set", host_if, "down")  # the cable is pulled
        try:
            eventually(lambda: grid.state(jid) is JobState.FINISHED, 40, 0.1, "the job to be rerun on node-a",
                       tolerate=TRANSIENT)
            assert all(psutil.pid_exists(p) for p in stale), "node-b's copy should run on while cut off"
        finally:
            sh("ip", "link", "set", host_if, "up")
        eventually(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                   for p in stale), 60, 0.1,
                   "node-b's stale copy to be killed once it can see the grid", tolerate=TRANSIENT)
        assert_accounted(r, grid, [jid])
        job = grid.get(jid)
        assert job.node == "node-a" and job.stdout == "done on node-a\n"
        assert attempts(grid, jid) == [("node-b", "lost"), ("node-a", None)]
    finally:
        if agent_b is not None and agent_b.poll() is None:
            os.killpg(agent_b.pid, signal.SIGTERM)
            try:
                agent_b.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(agent_b.pid, signal.SIGKILL)
                agent_b.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_slot_that_dies_mid_job_has_its_job_reclaimed(agents, grid, r, cleanup_jobs, tmp_path):
    a = agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    jid = grid.submit(JobSpec(command='if [ ! -e "$MARK" ]; then touch "$MARK"; sleep 60; fi; echo second try',
                              env={"MARK": str(tmp_path / "first-try")}))
    cleanup_jobs.append(jid)
    eventually(lambda: running_on(r, jid) == "node-a" and job_procs(jid), 20, 0.1, "the job to run",
               tolerate=TRANSIENT)
    first = {p.pid for p in job_procs(jid)}
    slot = next(p for p in psutil.Process(a.proc.pid).children() if "agent.slotmain" in " ".join(p.cmdline()))
    slot.kill()  # the slot process alone; its job runs on in its own session until the agent acts
    states = assert_accounted(r, grid, [jid], timeout=40)
    assert states[jid] is JobState.FINISHED and grid.get(jid).stdout == "second try\n"
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in first)
    assert attempts(grid, jid) == [("node-a", "lost"), ("node-a", None)]
    assert a.proc.poll() is None


@pytest.mark.parametrize("died", ["after its wait took it", "after its claim", "after RQ marked it started"])
def test_a_claimed_job_of_a_dead_node_goes_back_in_line(agents, grid, r, cleanup_jobs, died):
    """A node died between taking a job off the queue and starting it: the job is not lost."""
    jid = grid.submit(JobSpec(command="echo rescued"))
    cleanup_jobs.append(jid)
    queue = keys.rq_queue("default")
    sec, _ = r.time()
    if died == "after its wait took it":  # an idle slot's BLMOVE moved it; no claim yet
        assert r.lmove(queue, keys.node_taking("ghost"), "LEFT", "RIGHT") == jid.encode()
    else:  # what a slot of node "ghost" leaves when it dies right after its claim-pop...
        assert r.lpop(queue) == jid.encode()
        r.hset(keys.node_running("ghost"), jid, RunningEntry("claimed", worker="ghost.0.0").encode())
    if died == "after RQ marked it started":  # ... or once RQ's prepare_job_execution went through
        r.hset(keys.rq_job(jid), "status", "started")
        r.zadd(keys.rq_registry("running", "default"), {f"{jid}:exec1": sec + 600})
    r.zadd(keys.NODES, {"ghost": sec - 60})
    agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    states = assert_accounted(r, grid, [jid], timeout=30)
    assert states[jid] is JobState.FINISHED and grid.get(jid).stdout == "rescued\n"
    # Recovery wrote no key of the dead node (node-a's ACL user may not): what it left is its own
    # to drop when it is back, and counts for nothing while it is down.
    assert r.hexists(keys.node_running("ghost"), jid) or r.lrange(keys.node_taking("ghost"), 0, -1) == [jid.encode()]


def test_a_dead_slots_recorded_failure_is_retried_after_its_backoff(agents, grid, r, cleanup_jobs):
    """A slot recorded a failed attempt's end and died before RQ's bookkeeping: recovery does
    that bookkeeping as the slot would have, so the job's retry waits out its backoff and runs."""
    jid = grid.submit(JobSpec(command="echo rerun", retries=1, retry_backoff=(1,)))
    cleanup_jobs.append(jid)
    queue = keys.rq_queue("default")
    assert r.lpop(queue) == jid.encode()
    sec, _ = r.time()
    # What a slot of node "ghost" leaves when it dies right after step 1 of its end.
    ended = Result(node="ghost", slot=0, start=sec - 2, end=sec - 1, duration=1.0, exit_code=3,
                   reason="exit code 3", reason_kind="exit", run_id="exec1")
    r.hset(keys.rq_job(jid), mapping={"status": "started", "worker_name": "ghost.0.0"})
    r.zadd(keys.rq_registry("running", "default"), {f"{jid}:exec1": sec + 600})
    r.set(keys.result(jid), ended.encode())
    r.rpush(keys.attempts(jid), ended.attempt().encode())
    r.hset(keys.node_running("ghost"), jid, RunningEntry("ended", worker="ghost.0.0").encode())
    r.zadd(keys.NODES, {"ghost": sec - 60})
    agents("node-a", slots=1, node_timeout=NODE_TIMEOUT)
    states = assert_accounted(r, grid, [jid], timeout=40)
    assert states[jid] is JobState.FINISHED and grid.get(jid).stdout == "rerun\n"
    assert attempts(grid, jid) == [("ghost", "exit"), ("node-a", None)]
    assert any(e.kind == "retried" and e.job == jid for e in grid.events())
    assert r.hexists(keys.node_running("ghost"), jid)  # the dead node's own key: left to it
