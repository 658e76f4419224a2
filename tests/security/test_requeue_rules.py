"""`grid requeue` renews only what it may: no foreign envelope, no finished job set back to
`failed`, no expired envelope in a bulk requeue; and it shows the signed command it renews."""

from __future__ import annotations

import json
import uuid

import pytest
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from gridcore import keys
from gridcore.models import JobSpec, JobState
from gridcore.records import Attempt, Result
from tests.engine.test_reads import fail
from tests.security import forge
from tests.support.cli import call_cli

DAY = 24 * 3600


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    """`grid` in this process talks to the suite's broker."""
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def failed(r, grid, command: str, reason: str = "node lost: n2 stopped heartbeating") -> str:
    jid = grid.submit(JobSpec(command=command))
    fail(r, jid, "default", grid.broker_time())
    r.set(keys.result(jid), Result(reason=reason, reason_kind="lost").encode())
    return jid


def test_a_finished_job_set_back_to_failed_is_not_renewed(capsys, r, grid, tmp_path):
    laundered = failed(r, grid, f"touch {tmp_path / 'again'}")
    r.rpush(keys.attempts(laundered), Attempt(node="n1", exit_code=0).encode())  # it finished, once
    honest = failed(r, grid, "true")
    code, out, err = call_cli(capsys, "requeue", "--all-failed", "--reason", "node lost")
    assert code == 1 and f"will not requeue {laundered}: its attempt 1 on n1 ended with exit code 0" in err
    assert out.strip() == f"{honest} requeued: true"  # the bulk requeue goes on past the refused one
    assert grid.state(laundered) is JobState.FAILED


def test_an_envelope_signed_for_another_job_is_not_renewed(capsys, r, grid):
    victim = failed(r, grid, "true")
    other = grid.submit(JobSpec(command="echo elsewhere"))
    r.hset(keys.rq_job(victim), "data", r.hget(keys.rq_job(other), "data"))  # another job's signed argument
    code, _, err = call_cli(capsys, "requeue", victim)
    assert code == 1 and f"its envelope was signed for job {other}" in err
    assert grid.state(victim) is JobState.FAILED


def test_an_expired_envelope_is_renewed_only_when_named_and_the_signed_command_is_shown(capsys, r, grid, tmp_path):
    now = grid.broker_time()
    jid = uuid.uuid4().hex
    env = forge.envelope(grid, "echo the signed one", jid, issued_at=now - 40 * DAY, expires_at=now - 26 * DAY)
    forge.signed_job(r, grid.signer.sign(env), jid)
    r.hset(keys.rq_job(jid), "meta", json.dumps({"command": "echo what meta says", "name": "harmless"}))
    fail(r, jid, "default", now)
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out == ""
    assert f"skipped {jid}: its envelope expired 26.0 days ago; name the job to renew it" in err
    assert grid.state(jid) is JobState.FAILED
    code, out, _ = call_cli(capsys, "requeue", jid)
    assert code == 0 and out.strip() == f"{jid} requeued: echo the signed one"
    assert grid.state(jid) is JobState.QUEUED
    renewed = json.loads(RQJob.fetch(jid, connection=r, serializer=JSONSerializer).args[0]["envelope"])
    assert renewed["job_id"] == jid and renewed["expires_at"] > now


@pytest.mark.parametrize("named", [True, False])
def test_api_requeue_returns_the_renewed_envelope(r, grid, named):
    jid = failed(r, grid, "echo hi")
    assert grid.requeue(jid, named=named).command == "echo hi"
