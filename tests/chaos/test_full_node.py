"""Slots beyond what the node's CPUs can run wait for room instead of spinning on the queue
(taking the head job and putting it back several times a second), and say why they are idle."""

from __future__ import annotations

from gridcore import keys
from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import TRANSIENT, assert_accounted
from tests.support.wait import eventually


def slot_states(r) -> list[str]:
    return [(r.hget(w, "state") or b"").decode() for w in r.smembers(keys.rq_workers())]


def test_a_slot_beyond_the_cpus_waits_for_room(agents, grid, r, gate, cleanup_jobs):
    agents("node-a", slots=2, cpus=1)  # each plain job holds one CPU: one runs at a time
    first, second = grid.submit_many([JobSpec(command=gate.command(f"echo {n}")) for n in ("first", "second")])
    cleanup_jobs.extend([first, second])
    eventually(lambda: "idle: node full (1 of 1 CPUs held)" in slot_states(r), 20, 0.1,
               "the other slot to wait for room", tolerate=TRANSIENT)
    assert sorted(grid.state(j).value for j in (first, second)) == ["queued", "running"]
    gate.open()
    states = assert_accounted(r, grid, [first, second], timeout=30)
    assert set(states.values()) == {JobState.FINISHED}


def test_grid_nodes_says_why_idle_slots_take_nothing(r, cli):
    from gridcore.records import HeldEntry, Inventory, RunningEntry
    from tests.support.records import node_record, put_node

    sec, _ = r.time()
    put_node(r, "n1", sec, node_record(inventory=Inventory(cpus=2, memory_total=2**34), slots=3))
    r.hset(keys.node_running("n1"), "j1", RunningEntry("started", slot=0).encode())
    r.hset(keys.node_held("n1"), mapping={"j1": HeldEntry(cpus=1).encode(), "j2": HeldEntry(cpus=1).encode()})
    assert "1/3 (full: 2/2 CPUs held)" in cli("nodes", check=True).stdout
