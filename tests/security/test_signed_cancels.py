"""Cancels are operator-signed: `requeue` renews a canceled job in bulk only when its cancel is
signed by a key the renewing operator trusts, for this job and this envelope; an unsigned,
foreign or replayed cancel record needs the job named. `grid show` says which it is."""

from __future__ import annotations

import json

import pytest
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from gridcore import cancelproof, keys
from gridcore.client import Grid
from gridcore.models import JobSpec, JobState
from gridcore.renewal import RenewalSkipped
from tests.security import forge
from tests.support.cli import call_cli


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def cell(grid: Grid, n: int) -> str:
    return grid.submit(JobSpec(command=f"echo cell {n}", queue="parked", group="g", params={"_cell": n}))


def envelope_text(r, jid: str) -> str:
    return RQJob.fetch(jid, connection=r, serializer=JSONSerializer).args[0]["envelope"]


def canceled_by_a_broker_writer(r, jid: str, flag: bytes | None) -> None:
    """A job set to `canceled` with a cancel flag (or none) by someone who can write to the broker."""
    r.lrem(keys.rq_queue("parked"), 0, jid)
    r.hset(keys.rq_job(jid), "status", "canceled")
    r.zadd(keys.rq_registry("canceled", "parked"), {jid: 1})
    if flag is not None:
        r.set(keys.cancel(jid), flag)


def test_only_a_cancel_signed_by_a_trusted_key_for_this_envelope_is_renewed_in_bulk(capsys, r, grid, settings,
                                                                                     tmp_path):
    signed, unsigned, foreign, replayed, stranger, plain = (cell(grid, n) for n in range(6))
    grid.cancel(signed)
    Grid(r, settings.model_copy(update={"key_file": str(tmp_path / "no-key")})).cancel(unsigned)  # no key: unsigned
    canceled_by_a_broker_writer(r, foreign, r.get(keys.cancel(signed)))  # another job's signed cancel
    grid.cancel(replayed)
    old = r.get(keys.cancel(replayed))
    grid.requeue(replayed, named=True)  # a new envelope; then its old cancel is put back
    canceled_by_a_broker_writer(r, replayed, old)
    mallory = forge.stranger(tmp_path / "mallory")
    grid.control.cancel_many([stranger])
    nonce = json.loads(envelope_text(r, stranger))["nonce"]
    r.set(keys.cancel(stranger), cancelproof.sign(mallory, stranger, nonce, grid.broker_time()).encode())
    canceled_by_a_broker_writer(r, plain, None)  # no cancel record at all
    assert {j: grid.state(j) for j in (signed, unsigned, foreign, replayed, stranger, plain)} == dict.fromkeys(
        (signed, unsigned, foreign, replayed, stranger, plain), JobState.CANCELED)

    assert grid.get(signed).cancel == "canceled by tester@suite (signature verified)"
    code, out, _ = call_cli(capsys, "show", unsigned)
    assert code == 0 and "NOT verified: the cancel is not signed (its client had no key)" in out
    code, out, err = call_cli(capsys, "requeue", "--group", "g")
    assert code == 1 and out.strip() == f"{signed} requeued: echo cell 0"
    for jid, why in ((unsigned, "the cancel is not signed (its client had no key)"),
                     (foreign, "the cancel was signed for another job"),
                     (replayed, "the cancel was signed for another envelope of this job"),
                     (stranger, "the cancel is signed by a key not trusted here"),
                     (plain, "no cancel record")):
        assert f"skipped {jid}: {why}" in err, (jid, err)
        assert grid.state(jid) is JobState.CANCELED
    with pytest.raises(RenewalSkipped):
        grid.requeue(unsigned)
    grid.requeue(unsigned, named=True)  # the operator named it: renewed
    assert grid.state(unsigned) is JobState.QUEUED


def test_grid_cancel_without_a_key_says_its_cancel_is_unsigned(capsys, r, grid, settings, monkeypatch, tmp_path):
    jid = cell(grid, 0)
    monkeypatch.setenv("GRID_KEY_FILE", str(tmp_path / "no-key"))
    code, out, err = call_cli(capsys, "cancel", jid)
    assert code == 0 and out.strip() == f"{jid} canceled"
    assert "no signing key (grid keys init): these cancels are unsigned" in err
    assert r.get(keys.cancel(jid)) == b"1" and grid.get(jid).cancel.startswith("NOT verified: the cancel is not signed")
