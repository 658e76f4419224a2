"""Attacks on what `requeue` believes about how a job ended, written against the merged #15
defences: a node's signed end reused for a later state of the job."""

from __future__ import annotations

import json

import pytest
from rq.serializers import JSONSerializer

from agent import recovery
from agent.admission import Admission
from agent.perform import Performer
from agent.rqadapter.book import RQBook
from agent.rqadapter.jobs import GridJob, GridQueue, signed_argument
from agent.verify import Gatekeeper
from gridcore import keys, nodekeys
from gridcore.models import LOST_RETRIES, JobSpec, JobState
from gridcore.records import ActiveEntry, Result, RunningEntry
from gridcore.signing import AuthorizedKeys
from tests.engine.test_reads import fail
from tests.support.cli import call_cli


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def slot_of(settings, node: str) -> Admission:
    """What a slot of `node` signs its attempts with; the node's key is pinned by the operator."""
    admission = Admission(None, settings.agent.model_copy(update={"node_name": node}))
    nodekeys.KnownNodes().pin(node, admission.signer.key.public_key())
    return admission


def take(r, settings, node: str, jid: str, queue: str) -> None:
    """What a slot of `node` does with `jid`, taken off `queue`."""
    agent = settings.agent.model_copy(update={"node_name": node})
    s = settings.model_copy(update={"agent": agent})
    slot = Performer(r, RQBook(r, s.result_ttl), node=node, slot=0, worker=f"{node}.x.0", settings=s,
                     gate=Gatekeeper(r, AuthorizedKeys(s.authorized_keys_path), agent), marker_env={})
    r.lrem(keys.rq_queue(queue), 0, jid)
    slot.perform(GridJob.fetch(jid, connection=r, serializer=JSONSerializer),
                 GridQueue(queue, connection=r, serializer=JSONSerializer), None)


def test_a_signed_failure_the_job_was_retried_after_is_not_renewed_in_bulk(capsys, r, grid, settings):
    """Attempt 1 fails on a pinned node and the job is retried; attempt 2 succeeds. A broker
    writer drops attempt 2 and sets the job `failed`: the failure left is genuinely signed, for
    this job and envelope, but it was not how the job ended."""
    slot = slot_of(settings, "n1")
    jid = grid.submit(JobSpec(command="echo once", retries=1))
    envelope = json.loads(signed_argument(GridJob.fetch(jid, connection=r, serializer=JSONSerializer))["envelope"])
    now = grid.broker_time()
    end = Result(node="n1", start=now, end=now, exit_code=3, reason="exit code 3")
    retried = slot.attest(end, jid, envelope, 1, final=False)  # as the slot signs it: a retry follows
    r.rpush(keys.attempts(jid), retried.attempt().encode())  # ...then attempt 2 finished; a writer removed it
    fail(r, jid, "default", now)
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out == "", out
    assert (f"skipped {jid}: its failure is not signed by a pinned node (the node signed attempt 1 as retried, "
            "not as the job's end)") in err
    assert grid.state(jid) is JobState.FAILED
    # The failure that did end the job (its last retry) is renewed in bulk, as before.
    r.rpush(keys.attempts(jid), slot.attest(end, jid, envelope, 2, final=True).attempt().encode())
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 0 and out.strip() == f"{jid} requeued: echo once", err


def test_a_lost_record_the_job_was_rerun_after_is_not_renewed_in_bulk(capsys, r, grid, settings):
    """Same with a loss: n2 reclaimed the job from n1 with a lost-retry left (signed, not final);
    the rerun finished; the writer drops it and sets the job `failed`."""
    witness, _ = slot_of(settings, "n2").signer, slot_of(settings, "n1")
    jid = grid.submit(JobSpec(command="echo once"))
    envelope = json.loads(signed_argument(GridJob.fetch(jid, connection=r, serializer=JSONSerializer))["envelope"])
    now = grid.broker_time()
    lost = Result(node="n1", end=now, reason="node lost: n1 stopped heartbeating", reason_kind="lost")
    record = witness.attest(lost, jid, envelope["nonce"], 1, final=False, on="n1")
    r.rpush(keys.attempts(jid), record.attempt().encode())
    fail(r, jid, "default", now)
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out == "" and f"skipped {jid}: its failure is not signed by a pinned node (the node " \
        "signed attempt 1 as retried" in err


def test_a_finished_job_a_writer_gets_refused_on_a_pinned_node_is_not_renewed_in_bulk(capsys, r, grid, settings):
    """A refusal says only that the copy a node was shown did not run there, never that the job
    did not run: a writer moves a finished job into a queue it was not signed for, where a
    pinned node refuses it (signing the refusal, for this job and envelope), then removes the
    job's success from its attempts."""
    n1, _ = slot_of(settings, "n1"), slot_of(settings, "n2")
    jid = grid.submit(JobSpec(command="echo once"))
    job = GridJob.fetch(jid, connection=r, serializer=JSONSerializer)
    envelope = json.loads(signed_argument(job)["envelope"])
    now = grid.broker_time()
    done = n1.attest(Result(node="n1", start=now, end=now, exit_code=0), jid, envelope, 1, final=True)
    r.rpush(keys.attempts(jid), done.attempt().encode())
    r.lrem(keys.rq_queue("default"), 0, jid)
    r.hset(keys.rq_job(jid), "status", "finished")
    # The writer: the finished job into a queue n2 serves, which it was not signed for.
    r.hset(keys.rq_job(jid), mapping={"status": "queued", "origin": "elsewhere"})
    r.rpush(keys.rq_queue("elsewhere"), jid)
    take(r, settings, "n2", jid, "elsewhere")
    shown = grid.get(jid)
    assert shown.state is JobState.FAILED and "signed for queue 'default', found in queue 'elsewhere'" in shown.reason
    assert shown.attempts[-1]["trust"] == "pinned"  # n2 did sign the refusal
    r.lrem(keys.attempts(jid), 1, done.attempt().encode())  # ...and the success is gone,
    r.zrem(keys.rq_registry("failed", "elsewhere"), jid)  # the failure back where listings look
    r.hset(keys.rq_job(jid), "origin", "default")
    fail(r, jid, "default", now)
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out == "", out
    assert f"skipped {jid}: its failure is not signed by a pinned node (" in err
    assert grid.state(jid) is JobState.FAILED


@pytest.mark.agents
def test_a_real_slot_signs_a_retried_failure_as_not_final_and_the_last_one_as_final(grid, agents, node, r):
    agents(node, slots=1)
    jid = grid.submit(JobSpec(command="exit 3", retries=1, retry_backoff=[0]))
    assert grid.wait([jid], timeout=30)[jid] is JobState.FAILED
    claims = [json.loads(json.loads(a)["proof"]["claim"]) for a in r.lrange(keys.attempts(jid), 0, -1)]
    assert [(c["attempt"], c["exit_code"], c["final"]) for c in claims] == [(1, 3, False), (2, 3, True)]


def test_a_finished_job_a_writer_gets_reclaimed_from_a_made_up_node_is_not_renewed_in_bulk(capsys, r, grid, settings):
    """A loss is the reclaiming node's word on what the broker said: a writer plants a finished
    job as running on a node nobody knows, which looks long dead; a pinned node reclaims it and
    signs the loss (final: no lost-retry left, as the writer's meta says)."""
    n1, n2 = slot_of(settings, "n1"), slot_of(settings, "n2")
    jid = grid.submit(JobSpec(command="echo once", queue="parked"))
    job = GridJob.fetch(jid, connection=r, serializer=JSONSerializer)
    envelope = json.loads(signed_argument(job)["envelope"])
    now = grid.broker_time()
    done = n1.attest(Result(node="n1", start=now, end=now, exit_code=0), jid, envelope, 1, final=True)
    r.rpush(keys.attempts(jid), done.attempt().encode())
    r.lrem(keys.rq_queue("parked"), 0, jid)
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    r.hset(keys.rq_job(jid), mapping={"status": "started", "meta": json.dumps({**meta, "lost": LOST_RETRIES})})
    r.hset(keys.node_running("ghost"), jid, RunningEntry("started", slot=0).encode())
    r.hset(keys.ACTIVE, jid, ActiveEntry(node="ghost", slot=0, worker="ghost.x.0", started=now).encode())
    assert recovery.reclaim(r, "ghost", now, "node lost: ghost stopped heartbeating", settings.result_ttl,
                            witness=n2.signer) == [jid]
    assert grid.get(jid).attempts[-1]["trust"] == "pinned"  # n2 did sign the loss
    r.lrem(keys.attempts(jid), 1, done.attempt().encode())  # ...and the success is gone
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out == "", out
    assert f"skipped {jid}: its failure is not signed by a pinned node (it was lost on node ghost, " in err
    assert grid.state(jid) is JobState.FAILED


def planted_running(r, grid, jid: str, node: str) -> None:
    """A writer's records of `jid` running on `node`, on its last lost-retry."""
    r.lrem(keys.rq_queue("parked"), 0, jid)
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    r.hset(keys.rq_job(jid), mapping={"status": "started", "meta": json.dumps({**meta, "lost": LOST_RETRIES})})
    r.hset(keys.node_running(node), jid, RunningEntry("started", slot=0).encode())
    r.hset(keys.ACTIVE, jid, ActiveEntry(node=node, slot=0, worker=f"{node}.x.0", started=grid.broker_time()).encode())


def test_a_job_planted_in_a_pinned_nodes_running_records_is_renewed_only_if_its_journal_saw_it(
        capsys, r, grid, settings):
    """A node that reclaims its own jobs (its agent restarted, a slot died) signs a loss only as
    far as its own journal saw the attempt: a finished job a writer planted as running there
    never started there, or ran to its end there."""
    n1 = slot_of(settings, "n1")
    planted = grid.submit(JobSpec(command="echo planted", queue="parked"))
    genuine = grid.submit(JobSpec(command="echo genuine", queue="parked"))
    envelope = json.loads(signed_argument(GridJob.fetch(genuine, connection=r, serializer=JSONSerializer))["envelope"])
    n1.journal.admit(envelope, genuine, grid.broker_time())  # it did start here; its slot died
    for jid in (planted, genuine):
        planted_running(r, grid, jid, "n1")
    assert sorted(recovery.reclaim(r, "n1", grid.broker_time(), "node lost: agent on n1 restarted",
                                   settings.result_ttl, witness=n1.signer)) == sorted([planted, genuine])
    assert grid.get(planted).attempts[-1]["trust"] == "pinned"
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out.strip() == f"{genuine} requeued: echo genuine", err
    assert f"skipped {planted}: its failure is not signed by a pinned node (node n1 signed the loss without " \
        "its journal showing that the job started there)" in err
