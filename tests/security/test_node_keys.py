"""Trust from nodes to operators: node keys made at first start, pinned by operators (TOFU),
attempt records signed by nodes, and bulk requeue of a failure only when a pinned node signed it."""

from __future__ import annotations

import json

import pytest

from gridcore import keys, nodekeys
from gridcore.models import JobSpec, JobState
from gridcore.records import Attempt
from gridcore.signing import DOMAIN, fingerprint, generate_key, load_private_key, public_line
from tests.engine.test_reads import fail
from tests.support.cli import call_cli
from tests.support.wait import eventually


@pytest.fixture(autouse=True)
def broker_url(settings, monkeypatch):
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)


def claim(**over):
    return {"job_id": "j1", "nonce": "n" * 32, "attempt": 1, "node": "n1", "exit_code": 3, **over}


def test_a_claim_counts_only_when_signed_by_the_pinned_key_of_its_node_for_this_job(tmp_path):
    key = generate_key(tmp_path / "n1", "n1")
    other = generate_key(tmp_path / "n2", "n2")
    proof = nodekeys.attest(key, claim())
    assert nodekeys.check(proof, {"n1": key.public_key()}, "j1").note == "signed by pinned node n1"
    assert nodekeys.check(proof, {}, "j1").trust == "unpinned"
    assert nodekeys.check(proof, {"n1": key.public_key()}, "j2").note == "signed by a node for another job"
    assert nodekeys.check(nodekeys.attest(other, claim()), {"n1": key.public_key()}, "j1").trust == "bad"
    forged = proof.model_copy(update={"claim": proof.claim.replace('"exit_code":3', '"exit_code":0')})
    assert nodekeys.check(forged, {"n1": key.public_key()}, "j1").note == "bad signature for node n1"
    assert nodekeys.check(None, {"n1": key.public_key()}, "j1").trust == "unsigned"
    # A node's signature over a claim never passes for a job envelope's (another domain).
    sig = __import__("base64").b64decode(proof.sig)
    with pytest.raises(Exception):
        key.public_key().verify(sig, DOMAIN + proof.claim.encode())


def test_keys_nodes_shows_unpinned_then_pinned_then_changed(capsys, r, tmp_path):
    first, second = generate_key(tmp_path / "a", "a"), generate_key(tmp_path / "b", "b")
    r.zadd(keys.NODES, {"n1": 1})
    r.set(keys.node_pubkey("n1"), public_line(first.public_key()))
    code, out, _ = call_cli(capsys, "keys", "nodes")
    assert code == 0 and out.split("\t")[1:] == [fingerprint(first.public_key()), "not pinned\n"]
    code, _, err = call_cli(capsys, "keys", "pin", "n1", "--fingerprint", fingerprint(second.public_key()))
    assert code == 1 and "not pinned" in err
    code, out, _ = call_cli(capsys, "keys", "pin", "n1", "--fingerprint", fingerprint(first.public_key()))
    assert code == 0 and out.startswith(f"pinned n1 {fingerprint(first.public_key())}")
    r.set(keys.node_pubkey("n1"), public_line(second.public_key()))  # a broker writer swaps the key
    rows = json.loads(call_cli(capsys, "keys", "nodes", "--json")[1])
    assert rows == [{"node": "n1", "fingerprint": fingerprint(second.public_key()),
                     "state": f"CHANGED (pinned {fingerprint(first.public_key())})"}]
    assert call_cli(capsys, "keys", "unpin", "n1")[0] == 0


def test_failures_signed_by_a_pinned_node_are_renewed_in_bulk_and_others_only_by_name(
        capsys, grid, agents, node, r):
    agents(node, slots=1)
    fp = fingerprint(load_private_key(nodekeys.node_key_path(node)).public_key())  # the node's own file
    code, out, _ = call_cli(capsys, "keys", "pin", node, "--fingerprint", fp)
    assert code == 0, out
    real = grid.submit(JobSpec(command="exit 3"))
    assert grid.wait([real], timeout=20)[real] is JobState.FAILED
    assert grid.get(real).attempts[-1]["signed"] == f"signed by pinned node {node}"
    code, out, _ = call_cli(capsys, "show", "--json", real)
    assert json.loads(out)["attempts"][-1]["signed"] == f"signed by pinned node {node}"
    # A finished-looking failure a broker writer made up: no node signed it.
    forged = grid.submit(JobSpec(command="true", queue="parked"))
    fail(r, forged, "parked", grid.broker_time())
    r.rpush(keys.attempts(forged), Attempt(node=node, exit_code=1, reason="node lost").encode())
    assert grid.get(forged).attempts[-1]["signed"] == "not signed by a node"
    code, out, err = call_cli(capsys, "requeue", "--all-failed")
    assert code == 1 and out.strip() == f"{real} requeued: exit 3"
    assert f"skipped {forged}: its failure is not signed by a pinned node (not signed by a node)" in err
    assert grid.state(forged) is JobState.FAILED
    eventually(lambda: grid.state(real) is JobState.FAILED and len(grid.get(real).attempts) == 2, 20,
               message="the renewed job to fail again")
    code, out, _ = call_cli(capsys, "requeue", forged)  # the operator names it: renewed
    assert code == 0 and out.strip() == f"{forged} requeued: true"
