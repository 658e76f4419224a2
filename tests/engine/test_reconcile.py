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


def _slot(r, settings, node: str):
    """Slot 0 of `node`, in this process: its RQ worker, which drives its Performer (agent/perform.py)."""
    from agent.rqadapter.worker import GridWorker
    from agent.verify import Gatekeeper
    from gridcore.signing import AuthorizedKeys

    agent = settings.agent.model_copy(update={"node_name": node})
    s = settings.model_copy(update={"agent": agent})
    worker = GridWorker(["default"], connection=r, name=f"{node}.x.0", node=node, slot=0, settings=s,
                        gate=Gatekeeper(r, AuthorizedKeys(s.authorized_keys_path), agent), marker_env={})
    return worker.performer


def _take(r, slot, queue: str):
    """What the slot's RQ worker does: pop and claim a job, then fetch its record."""
    from rq.serializers import JSONSerializer

    from agent.rqadapter.jobs import GridJob, GridQueue

    popped = claim.pop(r, slot.node, slot.worker, [keys.rq_queue(keys.node_queue(slot.node)), keys.rq_queue(queue)])
    assert popped.taken is not None
    job = GridJob.fetch(popped.taken.job_id, connection=r, serializer=JSONSerializer)
    return job, GridQueue(queue, connection=r, serializer=JSONSerializer), popped.taken


def test_a_claim_recovered_and_run_elsewhere_is_neither_started_nor_refused_by_its_first_slot(r, grid, settings):
    """n1's slot claims a job, then n1 is cut off before the slot starts it: recovery (on n2)
    puts the claim back in line and n2 runs the job to its end. n1's slot, going on with what
    it read at its claim, must not start it (a second run), nor refuse it (its one start is
    spent: a "replayed envelope" refusal would record the finished job as failed)."""
    from agent import recovery
    from gridcore.models import JobSpec, JobState
    from gridcore.records import Result

    jid = grid.submit(JobSpec(command="echo once"))
    n1, n2 = _slot(r, settings, "n1"), _slot(r, settings, "n2")
    job, queue, taken = _take(r, n1, "default")
    assert RunningEntry.decode(r.hget(keys.node_running("n1"), jid)).phase == "claimed"

    # n1 is cut off: n2's sweep puts its claim back in line; n2 takes the job and runs it.
    assert recovery.reclaim(r, "n1", grid.broker_time(), "node lost", settings.result_ttl, foreign=True) == [jid]
    n2.perform(*_take(r, n2, "default"))
    assert grid.state(jid) is JobState.FINISHED
    record, attempts = r.get(keys.result(jid)), r.lrange(keys.attempts(jid), 0, -1)
    seen = r.xlen(keys.EVENTS)

    n1.perform(job, queue, taken)  # back: its slot goes on with the job it claimed
    assert grid.state(jid) is JobState.FINISHED
    assert r.get(keys.result(jid)) == record and Result.decode(record, keys.result(jid)).node == "n2"
    assert r.lrange(keys.attempts(jid), 0, -1) == attempts
    assert r.xlen(keys.EVENTS) == seen, [(e.kind, e.node, e.message) for e in grid.events(count=5)]  # no start, no refusal
    assert not n1.busy and not r.hexists(keys.node_running("n1"), jid) and not r.hexists(keys.node_held("n1"), jid)
