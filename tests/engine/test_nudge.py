"""The nudge that wakes an idle slot for a job placed on its node reaches a slot of that node,
whichever node's idle slot the shared pool queue hands it to first (no agents: the slots' own
wait and pop, as a slot runs them)."""

from __future__ import annotations

from agent import claim
from gridcore import keys
from gridcore.models import JobSpec, Resources
from gridcore.placing import NUDGE_HOPS, nudge
from tests.support.records import node_record, put_node

POOL = keys.rq_queue("default")


def slot_wakes(r, node: str) -> claim.Popped:
    """An idle slot of `node` woken on the pool queue: its wait, then its pop."""
    claim.wait(r, node, POOL, 0.1)
    return claim.pop(r, node, f"{node}.x.0", [keys.rq_queue(keys.node_queue(node)), POOL])


def test_another_nodes_idle_slot_passes_the_nudge_on(grid, r):
    for n in ("a", "b"):
        put_node(r, n, grid.broker_time(), node_record(queues=("default",)))
    job = grid.submit(JobSpec(command="true", resources=Resources(memory=10 * 2**20, node="a")))
    assert r.lrange(keys.rq_queue(keys.node_queue("a")), 0, -1) == [job.encode()]
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default").encode()]
    # Node b's slot waited longest: it gets the nudge, takes nothing and passes it on.
    popped = slot_wakes(r, "b")
    assert popped.taken is None
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=1).encode()]
    assert not r.llen(keys.node_taking("b"))
    # Node a's slot gets it next and takes the placed job; the nudge is gone.
    popped = slot_wakes(r, "a")
    assert popped.taken is not None and popped.taken.job_id == job
    assert not r.llen(POOL) and not r.llen(keys.node_taking("a"))


def test_a_nudge_is_passed_on_a_bounded_number_of_times(r):
    r.rpush(POOL, nudge("a", "default", hops=NUDGE_HOPS - 1))
    slot_wakes(r, "b")
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS).encode()]
    slot_wakes(r, "b")
    assert not r.llen(POOL)


def test_a_forged_nudge_is_dropped_without_failing_the_pop(r):
    """A nudge names a queue, never a key: it can only be pushed onto an RQ queue, and one of
    another type (anyone may write one) drops it."""
    r.hset(keys.rq_queue("evil"), "x", "y")
    r.rpush(POOL, nudge("a", "evil"), "grid-placed-nudge:9999999999999999999999:a:default")
    r.rpush(POOL, "j1")
    assert slot_wakes(r, "b").taken.job_id == "j1"  # the nudges before it hold nothing up
    assert r.type(keys.rq_queue("evil")) == b"hash" and not r.llen(POOL)
