"""Poison in the records the #15 defences added — a job's cancel flag (`grid:cancel:<id>`), its
sealed env (`gridsecret:env:<id>`), the node proofs in its attempts — read by `grid show`,
`grid requeue` and a node's gate — and a failed record under an id RQ cannot load: each is
shown inert, refused with its reason, never a crash, and a bulk requeue goes on past it."""

from __future__ import annotations

import json

import pytest
from rq.serializers import JSONSerializer

from agent.rqadapter.jobs import GridJob
from agent.verify import Gatekeeper
from gridcore import keys, nodekeys
from gridcore.models import JobSpec, JobState
from gridcore.records import CancelProof
from gridcore.settings import AgentSettings
from gridcore.signing import AuthorizedKeys, Refused
from tests.engine.test_reads import fail
from tests.security.test_inert_cli import EVIL, inert
from tests.support.cli import call_cli, run_cli_tty

CANCEL_FLAGS = {
    "escapes": CancelProof(statement=json.dumps({"job_id": EVIL, "kid": EVIL}), sig=EVIL, kid=EVIL).encode(),
    "right job, foreign key": None,  # filled in per job: the statement names it, the key id is hostile
    "not json": b"\xff\xfe" + EVIL.encode(),
    "json list": b"[1,2,3]",
    "statement not an object": CancelProof(statement="[]", sig="", kid="").encode(),
    "huge": b"{" + b"x" * 300_000,
    "another type": None,
}


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def canceled(r, grid, kind: str) -> str:
    """A canceled sweep cell whose cancel flag a broker writer replaced by `kind`."""
    jid = grid.submit(JobSpec(command="echo hi", queue="parked", env={"TOKEN": "t"}, group="g"))
    assert grid.cancel(jid) is JobState.CANCELED
    r.delete(keys.cancel(jid))
    if kind == "another type":
        r.hset(keys.cancel(jid), EVIL, EVIL)
    elif kind == "right job, foreign key":
        r.set(keys.cancel(jid), CancelProof(statement=json.dumps({"job_id": jid, "kid": EVIL}), sig="AAAA",
                                            kid=EVIL).encode())
    else:
        r.set(keys.cancel(jid), CANCEL_FLAGS[kind])
    return jid


@pytest.mark.parametrize("kind", list(CANCEL_FLAGS))
def test_a_poisoned_cancel_flag_is_shown_not_verified_and_inert(capsys, r, grid, kind):
    jid = canceled(r, grid, kind)
    honest = grid.submit(JobSpec(command="echo honest", queue="parked", group="g"))
    grid.cancel(honest)
    code, out, err = call_cli(capsys, "show", jid)
    assert code == 0 and "NOT verified" in out, out + err
    inert(out + err)
    code, out, err = call_cli(capsys, "show", "--json", jid)
    assert code == 0 and json.loads(out)["state"] == "canceled", err
    inert(out)
    # A bulk requeue skips the poisoned one with its reason and renews the rest.
    code, out, err = call_cli(capsys, "requeue", "--group", "g")
    assert code == 1 and out.strip() == f"{honest} requeued: echo honest", err
    assert f"skipped {jid}: " in err and "Traceback" not in err
    inert(err)
    code, out, err = call_cli(capsys, "requeue", jid)  # named: renewed whatever the flag says
    assert code == 0 and out.strip() == f"{jid} requeued: echo hi", err


def test_poisoned_node_proofs_and_sealed_env_show_inert_on_a_terminal(r, grid, settings):
    jid = grid.submit(JobSpec(command="echo hi", queue="parked", env={"TOKEN": "t"}))
    claim = json.dumps({"v": nodekeys.CLAIM_VERSION, "job_id": jid, "node": EVIL, "by": EVIL, "nonce": EVIL})
    r.rpush(keys.attempts(jid),
            json.dumps({"node": "n1", "exit_code": 1, "proof": {"claim": claim, "sig": EVIL, "kid": EVIL}}),
            json.dumps({"node": "n1", "exit_code": 1, "proof": {"claim": "[", "sig": "", "kid": ""}}),
            json.dumps({"node": "n1", "exit_code": 1, "proof": EVIL}))
    r.delete(keys.secret_env(jid))
    r.hset(keys.secret_env(jid), EVIL, EVIL)
    code, screen = run_cli_tty("show", jid, url=settings.redis_url, columns=200, keep_escapes=True)
    assert code == 0, screen
    assert "\x1b]" not in screen and "\x07" not in screen and "\x1b[2J" not in screen, repr(screen)
    assert "\x9b" not in screen and "\u202e" not in screen and "Traceback" not in screen, repr(screen)
    # A node refuses it, with the reason, inert too.
    gate = Gatekeeper(r, AuthorizedKeys(settings.authorized_keys_path), AgentSettings())
    with pytest.raises(Refused, match="WRONGTYPE") as e:
        gate.verify(GridJob.fetch(jid, connection=r, serializer=JSONSerializer), grid.broker_time())
    inert(str(e.value))


def test_a_failed_record_under_an_id_rq_rejects_is_refused_with_its_reason(capsys, r, grid):
    """A record a writer planted under an id RQ refuses to load (RQ raises ValueError for it):
    `grid requeue` and `grid cancel` of it say why, inert (not an internal error); `--all-failed`
    goes on past it."""
    honest = grid.submit(JobSpec(command="echo honest"))
    fail(r, honest, "default", grid.broker_time())
    evil = "0123456789" + EVIL
    r.copy(keys.rq_job(honest), keys.rq_job(evil))
    r.zadd(keys.JOBS, {evil: grid.broker_time() + 1})
    fail(r, evil, "default", grid.broker_time())
    code, out, err = call_cli(capsys, "requeue", evil)
    assert code == 1 and "not an id this grid makes" in err and "internal error" not in err, err
    inert(out + err)
    code, out, err = call_cli(capsys, "cancel", evil)
    assert code == 1 and "already failed; nothing to cancel" in err, err
    inert(out + err)
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 0 and out.strip() == f"{honest} requeued: echo honest", (out, err)
