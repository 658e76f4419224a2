"""The agent alone freezes (`kill -STOP` of its process, or a main loop hung in a call that
never returns) while its slots live on: the slots stop taking work and hand back what they
run before the node timeout, so no job is lost or failed for it."""

from __future__ import annotations

import signal

from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import NODE_TIMEOUT, TRANSIENT, assert_accounted, job_procs, running_on
from tests.chaos.test_node_loss import ONLY_SLOW_ON_B, attempts
from tests.support.wait import eventually


def test_a_frozen_agents_slots_hand_back_and_take_nothing(agents, grid, r, cleanup_jobs):
    b = agents("node-b", slots=2, node_timeout=NODE_TIMEOUT)
    jid = grid.submit(JobSpec(command=ONLY_SLOW_ON_B))
    cleanup_jobs.append(jid)
    eventually(lambda: running_on(r, jid) == "node-b" and job_procs(jid), 20, 0.1, "the job to run on node-b",
               tolerate=TRANSIENT)
    agents("node-a", slots=2, node_timeout=NODE_TIMEOUT)
    b.signal(signal.SIGSTOP)  # the agent only: node-b's slots and its job run on
    try:
        eventually(lambda: attempts(grid, jid)[:1] == [("node-b", "agent not heartbeating")], 20, 0.1,
                   "node-b's slot to hand the job back", tolerate=TRANSIENT)
        # node-b's idle slot is still there, and still sees the queues: it must take none of these.
        batch = grid.submit_many([JobSpec(command=f"sleep 0.3; echo {i}") for i in range(6)])
        cleanup_jobs.extend(batch)
        states = assert_accounted(r, grid, [jid, *batch], timeout=40)
    finally:
        b.signal(signal.SIGCONT)
    assert all(s is JobState.FINISHED for s in states.values()), {j: s.value for j, s in states.items()}
    assert attempts(grid, jid) == [("node-b", "agent not heartbeating"), ("node-a", None)]
    assert grid.get(jid).stdout == "done on node-a\n"
    for j in batch:
        assert attempts(grid, j) == [("node-a", None)], attempts(grid, j)
    assert not [e for e in grid.events(count=10_000) if e.kind == "lost"]
    # Thawed, node-b heartbeats again and its slots take work again.
    again = grid.submit(JobSpec(command="echo again", resources=_on("node-b")))
    cleanup_jobs.append(again)
    assert grid.wait([again], timeout=30)[again] is JobState.FINISHED


def _on(node):
    from gridcore.models import Resources

    return Resources(node=node)


def test_a_stale_pulse_orphans_a_slot_only_while_the_broker_answers_it(r):
    """A broker outage or a cut link stalls the agent too: its slot rides on, orphaned only
    when the broker answers the slot while the agent stays silent."""
    import os
    import struct

    import redis

    from agent.pulse import Pulse, PulseWatch
    from tests.support.brokers import free_port

    pulse = Pulse()
    os.pwrite(pulse.fd, struct.pack("d", 0.0), 0)  # the agent last went round long ago
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.2)  # nothing listens there
    cut_off = PulseWatch(pulse.fd, 0.2, gone, on_orphaned=lambda: None)
    assert not any(cut_off.check() for _ in range(5))
    handed_back = []
    watch = PulseWatch(pulse.fd, 0.2, r, on_orphaned=lambda: handed_back.append(True))
    eventually(watch.check, 5, 0.02, "the slot to count its agent gone")
    assert watch.orphaned.is_set() and handed_back == [True]
    pulse.stamp()  # the agent thawed
    assert not watch.check() and not watch.orphaned.is_set()
