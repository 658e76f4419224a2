"""Chaos fixtures: a broker of their own per test (they restart it), and the accounting check
every chaos test ends with.

One broker kind for the chaos suite (Redis where installed, else Valkey) keeps it under a few
minutes; the engine tests already run both kinds.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

import psutil
import pytest
import redis

from agent.proctree import ENV_GRID, ENV_JOB, ENV_NODE, tagged
from gridcore import keys
from gridcore.models import JobState
from gridcore.records import ActiveEntry
from tests.support.brokers import start_broker
from tests.support.wait import eventually

NODE_TIMEOUT = 3.0
"""Heartbeat age after which the chaos agents count a node as down."""


TRANSIENT = (redis.RedisError, psutil.Error)
"""Errors a chaos wait counts as "not yet": the broker may be restarting, processes vanishing."""


@pytest.fixture
def broker():
    b = start_broker()
    yield b
    b.stop()


def running_on(r, job_id: str) -> str | None:
    raw = r.hget(keys.ACTIVE, job_id)
    return ActiveEntry.decode(raw, keys.ACTIVE).node if raw else None


def job_procs(job_id: str) -> list[psutil.Process]:
    return tagged({ENV_JOB: job_id})


def node_procs(r, node: str) -> list[psutil.Process]:
    """The slots and job processes of one node of this grid (not the agent itself)."""
    return tagged({ENV_GRID: r.get(keys.GRID_ID).decode(), ENV_NODE: node})


def signal_node(agent, r, sig: int) -> None:
    """Send `sig` to a whole node as if it were one machine: agent, slots and job trees."""
    procs = [psutil.Process(agent.proc.pid), *node_procs(r, agent.name)]
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
    if sig == signal.SIGKILL:
        agent.proc.wait(10)


def assert_accounted(r, grid, job_ids: Iterable[str], timeout: float = 30.0) -> dict[str, JobState]:
    """Every job ended in exactly one terminal state with one result, nothing of it survives,
    and nothing is duplicated in the registries or the queues."""
    job_ids = list(job_ids)
    states = eventually(lambda: (s := grid.wait(job_ids, timeout=0)) and all(v.terminal for v in s.values()) and s,
                        timeout, 0.1, "every job to end", tolerate=TRANSIENT)
    queues = grid.queue_names()
    for jid in job_ids:
        state = states[jid]
        where = {}
        for q in queues:
            for name in ("finished", "failed", "canceled", "running"):
                members = [m for m in r.zrange(keys.rq_registry(name, q), 0, -1) if m.decode().split(":")[0] == jid]
                if members:
                    where[(name, q)] = len(members)
            queued = r.lrange(keys.rq_queue(q), 0, -1).count(jid.encode())
            if queued:
                where[("queued", q)] = queued
        assert list(where.values()) == [1], f"job {jid} ({state.value}) is in {where}"
        assert next(iter(where))[0] == state.value, f"job {jid} is {state.value} but in {where}"
        assert r.exists(keys.result(jid)), f"job {jid} has no result record"
        ends = [e for e in grid.events(count=10_000) if e.job == jid and e.kind in ("finished", "failed", "canceled")]
        assert len(ends) == 1, f"job {jid}: {len(ends)} end events: {[e.to_dict() for e in ends]}"
        rq_results = r.xlen(f"rq:results:{jid}")
        assert rq_results <= 1, f"job {jid}: {rq_results} RQ results"
        assert not r.hexists(keys.ACTIVE, jid), f"job {jid} still marked running"
    eventually(lambda: not any(job_procs(j) for j in job_ids), 15, 0.1, "every job process to be gone",
               tolerate=TRANSIENT)
    return states


def kill_leftovers(job_ids: Iterable[str]) -> None:
    """Teardown safety net: no test leaves a job process behind, whatever it asserted."""
    for jid in job_ids:
        for p in job_procs(jid):
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture
def cleanup_jobs():
    ids: list[str] = []
    yield ids
    kill_leftovers(ids)


def have_job_cgroups() -> str | None:
    """None if this machine gives agents job memory cgroups, else why not."""
    from agent.cgroup import JobCgroups

    if JobCgroups.probe() is None:
        return "no writable memory cgroup here (cgroup v1 memory hierarchy, or a delegated v2 subtree)"
    return None


def can_netns() -> str | None:
    """None if `ip netns` works here (root, iproute2), else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    import shutil
    import subprocess

    if not shutil.which("ip"):
        return "iproute2 (ip) is not installed"
    name = f"gridprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if p.returncode != 0:
        return f"ip netns add failed: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None
