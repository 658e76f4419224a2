"""Resources, GPU slots, sweeps with a throttle, dependencies, priority and drain — for real."""

from __future__ import annotations

import time
import uuid

import psutil
import pytest

from gridcore import keys
from gridcore.client import Unplaceable
from gridcore.models import JobSpec, JobState, Resources
from tests.support.wait import eventually

TWO_GPUS = [{"index": 0, "name": "Test GPU", "uuid": "GPU-aaaa", "memory_total": 16_000_000_000},
            {"index": 1, "name": "Test GPU", "uuid": "GPU-bbbb", "memory_total": 16_000_000_000}]


def max_overlap(jobs) -> int:
    points = sorted([(j.started_at, 1) for j in jobs] + [(j.ended_at, -1) for j in jobs])
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def test_sweep_throttle_never_exceeds_max_parallel(grid, agents):
    agents("node-a", slots=3, cpus=3)
    agents("node-b", slots=3, cpus=3)
    gid = uuid.uuid4().hex
    specs = [JobSpec(command=f"sleep 0.3; echo cell {i}", name=f"cell[{i}]", group=gid, params={"i": i, "_cell": i})
             for i in range(24)]
    ids = grid.submit_many(specs, groups={gid: {"name": "cells", "max_parallel": 4}})
    states = grid.wait(ids, timeout=120)
    assert all(s is JobState.FINISHED for s in states.values())
    jobs = [grid.get(i) for i in ids]
    assert max_overlap(jobs) <= 4
    assert {j.node for j in jobs} == {"node-a", "node-b"}
    g = grid.group(gid)
    assert g["counts"]["finished"] == 24 and g["progress"] == 1.0


def test_two_gpu_jobs_get_different_gpus_side_by_side(grid, agents):
    agents("gpu-node", slots=4, gpus=TWO_GPUS)
    cmd = 'echo "gpus=$CUDA_VISIBLE_DEVICES"; sleep 1.5'
    ids = [grid.submit(JobSpec(command=cmd, resources=Resources(gpus=1))) for _ in range(2)]
    cpu = grid.submit(JobSpec(command='echo "gpus=[$CUDA_VISIBLE_DEVICES]"'))
    assert all(s is JobState.FINISHED for s in grid.wait(ids + [cpu], timeout=60).values())
    a, b = (grid.get(i) for i in ids)
    assert {a.stdout.strip(), b.stdout.strip()} == {"gpus=0", "gpus=1"}
    assert max_overlap([a, b]) == 2
    assert grid.get(cpu).stdout.strip() == "gpus=[]"  # a CPU job sees no GPU


def test_impossible_request_is_refused_at_submit(grid, agents):
    agents("gpu-node", slots=2, gpus=TWO_GPUS)
    with pytest.raises(Unplaceable, match="3 GPUs"):
        grid.submit(JobSpec(command="true", resources=Resources(gpus=3)))
    with pytest.raises(Unplaceable, match="a100"):
        grid.submit(JobSpec(command="true", resources=Resources(labels=("a100",))))


def test_waiting_job_says_why_per_node(grid, agents):
    agents("gpu-node", slots=4, gpus=TWO_GPUS)
    holders = [grid.submit(JobSpec(command="sleep 30", resources=Resources(gpus=1))) for _ in range(2)]
    eventually(lambda: all(grid.state(h) is JobState.RUNNING for h in holders), 30, 0.1, "both GPU holders to run")
    waiting = grid.submit(JobSpec(command="true", resources=Resources(gpus=2)))
    # The reason is written by the agent's periodic pass (a woken pass writes none): within a
    # heartbeat interval or two, later on a loaded machine.
    eventually(lambda: "needs 2 GPUs free, has 0" in " ".join(grid.why(waiting)), 15, 0.1, "the reason why it waits")
    assert grid.state(waiting) is JobState.QUEUED
    assert "gpu-node" in " ".join(grid.why(waiting))
    for h in holders:
        grid.cancel(h)
    assert grid.wait([waiting], timeout=30)[waiting] is JobState.FINISHED


def test_child_of_failed_parent_fails_at_once(grid, agents):
    agents("node-a", slots=2)
    parent = grid.submit(JobSpec(command="exit 1"))
    child = grid.submit(JobSpec(command="echo never", after=(parent,)))
    grandchild = grid.submit(JobSpec(command="echo never", after=(child,)))
    tolerant = grid.submit(JobSpec(command="echo ran", after=(parent,), after_on="any"))
    states = grid.wait([parent, child, grandchild, tolerant], timeout=30)
    assert states[child] is JobState.FAILED and states[grandchild] is JobState.FAILED
    assert grid.get(child).reason == "dependency failed"
    assert states[tolerant] is JobState.FINISHED and grid.get(tolerant).stdout == "ran\n"


def test_a_child_submitted_after_its_parent_failed_fails_at_once(grid, r):
    """RQ leaves such a child deferred forever (the parent's end, which fails its dependents, is
    past): it fails at submit, with its own children; one that accepts any outcome waits to run."""
    parent = grid.submit(JobSpec(command="exit 1", queue="nobody-serves-this"))
    r.hset(keys.rq_job(parent), "status", "failed")  # as its end left it
    child = grid.submit(JobSpec(command="echo never", after=(parent,)))
    tolerant = grid.submit(JobSpec(command="echo ran", after=(parent,), after_on="any"))
    assert grid.state(child) is JobState.FAILED and grid.get(child).reason == "dependency failed"
    assert grid.state(tolerant) is JobState.QUEUED


def test_dependency_runs_after_parent_succeeds(grid, agents):
    agents("node-a", slots=2)
    parent = grid.submit(JobSpec(command="sleep 0.5; echo parent"))
    child = grid.submit(JobSpec(command="echo child", after=(parent,)))
    assert grid.state(child) is JobState.WAITING
    assert grid.wait([child], timeout=30)[child] is JobState.FINISHED
    assert grid.get(child).started_at >= grid.get(parent).ended_at


def test_priority_orders_waiting_jobs(grid, agents, gate):
    agents("node-a", slots=1, cpus=1)
    blocker = grid.submit(JobSpec(command=gate.command(), resources=Resources(cpus=1, memory=2**30)))
    eventually(lambda: grid.state(blocker) is JobState.RUNNING, 20, message="the blocker to run")
    low = grid.submit(JobSpec(command="true", priority=1, name="low"))
    high = grid.submit(JobSpec(command="true", priority=10, name="high"))
    gate.open()
    states = grid.wait([blocker, low, high], timeout=30)
    assert set(states.values()) == {JobState.FINISHED}, states
    assert grid.get(high).started_at < grid.get(low).started_at


def test_drained_node_takes_nothing_new(grid, agents):
    agents("node-a", slots=1)
    grid.drain("node-a", "maintenance")
    assert grid.node("node-a").state.value == "draining"
    jid = grid.submit(JobSpec(command="true"))
    time.sleep(2)
    assert grid.state(jid) is JobState.QUEUED
    assert "draining" in " ".join(grid.why(jid))
    grid.resume("node-a")
    assert grid.wait([jid], timeout=30)[jid] is JobState.FINISHED


def test_jobs_an_idle_slot_took_as_its_node_drained_go_back_in_line(grid, agents, r):
    """An idle slot's wait moves the job it wakes for into the node's taking list; if the node
    is draining by the time the slot would claim it, it goes back where it was in its queue,
    in order (a job canceled meanwhile is dropped, not run)."""
    agents("node-a", slots=1)
    grid.drain("node-a", "maintenance")
    first, canceled, second, third = (grid.submit(JobSpec(command="true", name=n))
                                      for n in ("first", "canceled", "second", "third"))
    queue, taking = keys.rq_queue("default"), keys.node_taking("node-a")
    for _ in range(3):  # what the slot's BLMOVE had taken just before the drain
        r.lmove(queue, taking, "LEFT", "RIGHT")
    assert grid.cancel(canceled) is JobState.CANCELED
    eventually(lambda: not r.llen(taking), 10, message="the taken jobs to go back")
    assert [i.decode() for i in r.lrange(queue, 0, -1)] == [first, second, third]
    grid.resume("node-a")
    states = grid.wait([first, second, third], timeout=30)
    assert set(states.values()) == {JobState.FINISHED}, states
    started = [grid.get(i).started_at for i in (first, second, third)]
    assert started == sorted(started)
    assert grid.state(canceled) is JobState.CANCELED and not grid.get(canceled).attempts


def test_a_job_placed_on_a_node_before_an_operators_drain_waits_for_its_resume(grid, agents, r):
    """A job already in a node's queue when an operator drains the node (`grid drain`) is not
    started by the node's slot: its pop reads the same `draining` field the drain writes. The
    job waits there, not lost, and runs once the node is resumed."""
    agent = agents("node-a", slots=1)
    slot = psutil.Process(agent.proc.pid).children()
    assert slot
    for p in slot:  # the slot cannot pop while the job is placed and the node drained
        p.suspend()
    # Nor can the broker for it: the pop it sent behind its wait (claim.wait_pop) would run as
    # soon as the placed job's nudge ends the wait. Its wait is cut (a link lost meanwhile).
    time.sleep(0.2)  # a wait sent just before the suspension reaches the broker
    for c in r.client_list():
        if c.get("cmd") == "blmove":
            r.client_kill_filter(_id=c["id"])
    try:
        pinned = grid.submit(JobSpec(command="echo ran", name="pinned", resources=Resources(node="node-a")))
        node_queue = keys.rq_queue(keys.node_queue("node-a"))
        eventually(lambda: pinned.encode() in r.lrange(node_queue, 0, -1), 10,
                   message=lambda: f"the pinned job placed: {grid.why(pinned)}")
        grid.drain("node-a", "maintenance")
    finally:
        for p in slot:
            p.resume()
    time.sleep(2)  # the resumed slot popped since (it looks at its node queue at once)
    assert grid.state(pinned) is JobState.QUEUED and not grid.get(pinned).attempts
    assert [i.decode() for i in r.lrange(node_queue, 0, -1)] == [pinned]
    grid.resume("node-a")
    assert grid.wait([pinned], timeout=30)[pinned] is JobState.FINISHED
    assert grid.get(pinned).stdout == "ran\n"


def test_a_stopping_agent_gives_back_what_its_slots_took(grid, agents, r):
    """A job an idle slot's wait took just before the slot stopped (a cold stop, a kill) is in
    no queue; the agent puts it back as it leaves instead of leaving it for another node's
    node-loss sweep, or, on a one-node grid, for its own restart."""
    agent = agents("node-a", slots=1)
    busy = grid.submit(JobSpec(command="sleep 1.5", name="busy"))
    eventually(lambda: grid.state(busy) is JobState.RUNNING, 10, message="the busy job to run")
    took = grid.submit(JobSpec(command="true", name="took"))
    queue, taking = keys.rq_queue("default"), keys.node_taking("node-a")
    assert r.lmove(queue, taking, "LEFT", "RIGHT").decode() == took  # the wait had taken it
    assert agent.stop() == 0
    assert r.llen(taking) == 0
    assert [i.decode() for i in r.lrange(queue, 0, -1)] == [took]
    assert grid.state(busy) is JobState.FINISHED and grid.state(took) is JobState.QUEUED


def test_multi_cpu_jobs_never_overcommit(grid, agents):
    agents("node-a", slots=4, cpus=2)
    ids = [grid.submit(JobSpec(command="sleep 0.4", resources=Resources(cpus=2))) for _ in range(3)]
    assert all(s is JobState.FINISHED for s in grid.wait(ids, timeout=60).values())
    assert max_overlap([grid.get(i) for i in ids]) == 1


def test_jobs_are_placed_at_submit_and_as_jobs_end_not_on_the_clock(grid, agents, r):
    """With the agent's heartbeat, and so its periodic placement pass, once a minute: a job with
    a memory request starts as it is submitted, a throttled sweep's cells each start as the one
    before ends, and a multi-CPU job waiting for CPUs starts when they are given back."""
    agents("node-a", slots=2, cpus=2, heartbeat_interval=60, node_timeout=180)
    one = grid.submit(JobSpec(command="true", resources=Resources(memory=10**7)))
    gid = uuid.uuid4().hex
    specs = [JobSpec(command="sleep 0.1", name=f"cell[{i}]", resources=Resources(memory=10**7), group=gid,
                     params={"i": i, "_cell": i}) for i in range(5)]
    cells = grid.submit_many(specs, groups={gid: {"name": "cells", "max_parallel": 1}})
    wide = [grid.submit(JobSpec(command="sleep 0.2", resources=Resources(cpus=2))) for _ in range(2)]
    states = grid.wait([one, *cells, *wide], timeout=30)
    assert set(states.values()) == {JobState.FINISHED}, states
    assert max_overlap([grid.get(i) for i in cells]) == 1
    assert max_overlap([grid.get(i) for i in wide]) == 1
    assert not r.llen(keys.rq_queue(keys.PENDING_QUEUE))


def test_dependents_are_placed_as_their_parent_ends_not_on_the_clock(grid, agents, r):
    """With the periodic placement pass once a minute: a child with a memory request starts as
    its parent's end releases it, and one submitted after its parent ended starts at submit.
    A plain job's end (recorded by one script) wakes no placement loop: nothing waits for one
    (tests/engine/test_end_wakes.py: it wakes its node's when a job waits)."""
    agents("node-a", slots=2, cpus=2, heartbeat_interval=60, node_timeout=180)
    first = grid.submit(JobSpec(command="true"))
    assert grid.wait([first], timeout=15)[first] is JobState.FINISHED
    assert [f for _, f in r.xrange(keys.PLACE_WAKES)] == []
    parent = grid.submit(JobSpec(command="sleep 0.3"))
    child = grid.submit(JobSpec(command="true", after=(parent,), resources=Resources(memory=10**7)))
    assert grid.state(child) is JobState.WAITING
    assert grid.wait([child], timeout=15)[child] is JobState.FINISHED
    late = grid.submit(JobSpec(command="true", after=(parent,), resources=Resources(memory=10**7)))
    assert grid.wait([late], timeout=15)[late] is JobState.FINISHED


def test_a_placed_job_lost_with_its_node_is_placed_at_once_on_another(grid, agents, r, settings, gate):
    """With the periodic placement pass once a minute: a job the grid placed, lost with its node
    (reclaimed by another agent, which leaves the lost node's keys alone), goes back to placement
    and wakes every agent's loop, so an idle node takes it at once."""
    from agent import recovery

    agents("node-a", slots=1, heartbeat_interval=60, node_timeout=180)
    jid = grid.submit(JobSpec(command=gate.command(), resources=Resources(memory=10**7)))
    eventually(lambda: grid.state(jid) is JobState.RUNNING, 15, 0.05, "the job to run on node-a")
    agents("node-b", slots=1, heartbeat_interval=60, node_timeout=180)
    sec, usec = r.time()
    assert recovery.reclaim(r, "node-a", sec + usec / 1e6, "node lost: node-a (test)", settings.result_ttl,
                            foreign=True) == [jid]
    eventually(lambda: (j := grid.get(jid)).state is JobState.RUNNING and j.node == "node-b", 5, 0.05,
               "the lost job to start on node-b")
    gate.open()
    assert grid.wait([jid], timeout=15)[jid] is JobState.FINISHED
