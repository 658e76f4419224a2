"""Every end a node records is signed by a node: a refusal by the node that refused the job, a
loss by the node that reclaimed it (naming the lost node). So `grid requeue --all-failed`,
once node keys are pinned, renews a loss in bulk, and a refusal or a made-up loss only by name."""

from __future__ import annotations

import json

import pytest
from rq.serializers import JSONSerializer

from agent import recovery
from agent.perform import Performer
from agent.rqadapter.book import RQBook
from agent.rqadapter.jobs import GridJob, GridQueue
from agent.verify import Gatekeeper
from gridcore import keys, nodekeys
from gridcore.models import LOST_RETRIES, JobSpec, JobState
from gridcore.records import ActiveEntry, Attempt, RunningEntry
from gridcore.settings import NodePolicy
from gridcore.signing import AuthorizedKeys, generate_key
from tests.engine.test_reads import fail
from tests.support.cli import call_cli


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def pinned(node: str) -> nodekeys.NodeSigner:
    """`node`'s own key (made as its daemon makes it at the first start), pinned by the operator."""
    signer = nodekeys.NodeSigner(node, nodekeys.node_key(node))
    nodekeys.KnownNodes().pin(node, signer.key.public_key())
    return signer


def refused_on(r, settings, node: str, jid: str) -> None:
    """What a slot of `node`, whose policy allows no variable, does with the job it took."""
    agent = settings.agent.model_copy(update={"node_name": node, "policy": NodePolicy(env_allow=[])})
    s = settings.model_copy(update={"agent": agent})
    book = RQBook(r, s.result_ttl)
    slot = Performer(r, book, node=node, slot=0, worker=f"{node}.x.0", settings=s,
                     gate=Gatekeeper(r, AuthorizedKeys(s.authorized_keys_path), agent), marker_env={})
    r.lrem(keys.rq_queue("default"), 0, jid)  # taken off its queue
    slot.perform(GridJob.fetch(jid, connection=r, serializer=JSONSerializer),
                 GridQueue("default", connection=r, serializer=JSONSerializer), None)


def running_on(r, grid, node: str, command: str) -> str:
    """A job running on `node` (slot 0) as the grid's records say, on its last lost-retry."""
    jid = grid.submit(JobSpec(command=command, queue="parked"))
    r.lrem(keys.rq_queue("parked"), 0, jid)
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    r.hset(keys.rq_job(jid), mapping={"status": "started", "meta": json.dumps({**meta, "lost": LOST_RETRIES})})
    r.hset(keys.node_running(node), jid, RunningEntry("started", slot=0).encode())
    r.hset(keys.ACTIVE, jid, ActiveEntry(node=node, slot=0, worker=f"{node}.x.0", started=grid.broker_time()).encode())
    return jid


def test_a_refusal_is_signed_by_the_node_that_refused_it_and_renewed_when_named(capsys, r, grid, settings):
    pinned("n1")
    jid = grid.submit(JobSpec(command="deploy", env={"TOKEN": "t"}))
    refused_on(r, settings, "n1", jid)
    job = grid.get(jid)
    assert job.state is JobState.FAILED and job.reason == "refused: environment variables not allowed on this node: TOKEN"
    assert job.attempts[-1]["signed"] == "signed by pinned node n1" and job.attempts[-1]["trust"] == "pinned"
    code, out, _ = call_cli(capsys, "show", jid)
    assert code == 0 and " pinned \n" in out  # the RECORD column of its attempt
    # A refusal is no evidence the job never ran (tests/security/test_laundered_ends.py): by name only.
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out == "" and f"skipped {jid}: its failure is not signed by a pinned node (node n1 signed " \
        "a refusal" in err
    code, out, err = call_cli(capsys, "requeue", jid)
    assert code == 0 and out.strip() == f"{jid} requeued: deploy", err
    assert grid.state(jid) is JobState.QUEUED


def test_a_loss_is_signed_by_the_node_that_reclaimed_it_naming_the_lost_node(capsys, r, grid, settings, tmp_path):
    witness = pinned("n2")
    pinned("n1")  # the node it was lost on: a loss on a node nobody pinned is renewed only by name
    lost = running_on(r, grid, "n1", "echo lost")
    assert recovery.reclaim(r, "n1", grid.broker_time(), "node lost: n1 stopped heartbeating", settings.result_ttl,
                            witness=witness) == [lost]
    assert grid.get(lost).attempts[-1]["signed"] == "signed by pinned node n2, for node n1"
    claim = json.loads(json.loads(r.lindex(keys.attempts(lost), -1))["proof"]["claim"])
    assert (claim["node"], claim["by"], claim["reason_kind"], claim["attempt"]) == ("n1", "n2", "lost", None)
    # The same loss, reclaimed by a node nobody pinned, and one a broker writer made up.
    stranger = nodekeys.NodeSigner("n3", generate_key(tmp_path / "n3", "n3"))
    unpinned = running_on(r, grid, "n1", "echo unpinned")
    recovery.reclaim(r, "n1", grid.broker_time(), "node lost: n1 stopped heartbeating", settings.result_ttl,
                     witness=stranger)
    made_up = grid.submit(JobSpec(command="echo made up", queue="parked"))
    fail(r, made_up, "parked", grid.broker_time())
    r.rpush(keys.attempts(made_up), Attempt(node="n1", reason="node lost", reason_kind="lost").encode())
    assert [grid.state(j) for j in (lost, unpinned, made_up)] == [JobState.FAILED] * 3
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out.strip() == f"{lost} requeued: echo lost"
    assert f"skipped {unpinned}: its failure is not signed by a pinned node (signed by node n3, whose key" in err
    assert f"skipped {made_up}: its failure is not signed by a pinned node (not signed by a node)" in err
