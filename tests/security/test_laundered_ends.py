"""Attacks on what `requeue` believes about how a job ended, written against the merged #15
defences: a node's signed end reused for a later state of the job."""

from __future__ import annotations

import json

import pytest
from rq.serializers import JSONSerializer

from agent.admission import Admission
from agent.rqadapter.jobs import GridJob, signed_argument
from gridcore import keys, nodekeys
from gridcore.models import JobSpec, JobState
from gridcore.records import Result
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
    witness = slot_of(settings, "n2").signer
    jid = grid.submit(JobSpec(command="echo once"))
    envelope = json.loads(signed_argument(GridJob.fetch(jid, connection=r, serializer=JSONSerializer))["envelope"])
    now = grid.broker_time()
    lost = Result(node="n1", end=now, reason="node lost: n1 stopped heartbeating", reason_kind="lost")
    record = witness.attest(lost, jid, envelope["nonce"], 1, final=False, on="n1")
    r.rpush(keys.attempts(jid), record.attempt().encode())
    fail(r, jid, "default", now)
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out == "" and f"skipped {jid}: its failure is not signed by a pinned node (" in err
