"""A node's keys after other agents recovered its jobs without writing them (agent/recovery.py):
what the node drops, and what is put back, when it is back."""

from __future__ import annotations

from agent import claim
from gridcore import keys
from gridcore.records import ActiveEntry, HeldEntry, RunningEntry


def test_a_node_back_drops_only_the_holds_no_longer_its_own(r):
    held = HeldEntry(cpus=1).encode()
    r.hset(keys.node_held("n1"), mapping={j: held for j in ("placed", "running", "active", "elsewhere", "gone")})
    r.rpush(keys.rq_queue(keys.node_queue("n1")), "placed")
    r.hset(keys.node_running("n1"), "running", RunningEntry("started", slot=0).encode())
    r.hset(keys.ACTIVE, mapping={"active": ActiveEntry(node="n1", slot=1, worker="n1.a.1", started=1.0).encode(),
                                 "elsewhere": ActiveEntry(node="n2", slot=0, worker="n2.a.0", started=1.0).encode()})
    assert claim.reconcile_held(r, "n1") == 2
    assert sorted(k.decode() for k in r.hkeys(keys.node_held("n1"))) == ["active", "placed", "running"]
    assert claim.reconcile_held(r, "n1") == 0


def test_a_stale_taking_list_puts_back_only_what_no_one_put_back_or_took(r):
    queue = keys.rq_queue("default")
    for jid, status in (("lost", "queued"), ("requeued", "queued"), ("retaken", "queued"), ("done", "finished")):
        r.hset(keys.rq_job(jid), mapping={"origin": "default", "status": status})
    r.rpush(keys.node_taking("n1"), "lost", "requeued", "retaken", "done")
    r.rpush(queue, "requeued")  # recovery put it back already
    r.hset(keys.node_running("n2"), "retaken", RunningEntry("claimed", worker="n2.a.0").encode())
    # Another agent, for the down n1: its list stays as it is.
    assert claim.give_back_checked(r, "n1", ["n1", "n2"], keep=True) == 1
    assert r.lrange(queue, 0, -1) == [b"lost", b"requeued"] and r.llen(keys.node_taking("n1")) == 4
    assert claim.give_back_checked(r, "n1", ["n2"], keep=True) == 0  # a second sweep changes nothing
    # n1 itself, back: nothing more goes back, and its list is emptied.
    assert claim.give_back_checked(r, "n1", ["n2"], keep=False) == 0
    assert r.lrange(queue, 0, -1) == [b"lost", b"requeued"] and not r.exists(keys.node_taking("n1"))
