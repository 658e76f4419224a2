"""Node policy (cwd roots, maximum timeout, allowed environment) and the agent's root refusal."""

from __future__ import annotations

import os
import uuid

import pytest

from gridcore import keys
from gridcore.models import JobSpec, JobState
from tests.security import forge


@pytest.fixture
def policy_agent(agents, node):
    """Factory: one agent of one slot for `node` whose config has an [agent.policy] table."""
    return lambda **policy: agents(node, slots=1, policy=policy)


def outcome(grid, jid: str) -> tuple[JobState, str]:
    state = grid.wait([jid], timeout=30)[jid]
    return state, grid.get(jid).reason or ""


def test_cwd_must_be_inside_the_allowed_roots(grid, policy_agent, tmp_path):
    allowed, outside = tmp_path / "scratch", tmp_path / "elsewhere"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    policy_agent(cwd_roots=[str(allowed)])
    ok = grid.submit(JobSpec(command="touch ran", cwd=str(allowed)))
    assert outcome(grid, ok) == (JobState.FINISHED, "")
    for cwd in (outside, allowed / "escape", allowed / ".." / "elsewhere"):
        state, reason = outcome(grid, grid.submit(JobSpec(command="touch ran", cwd=str(cwd))))
        assert state is JobState.FAILED and "outside this node's allowed roots" in reason, cwd
    state, reason = outcome(grid, grid.submit(JobSpec(command="touch ran")))
    assert state is JobState.FAILED and reason == "refused: this node requires a cwd inside its allowed roots"
    assert not (outside / "ran").exists() and (allowed / "ran").exists()


def test_timeout_must_be_set_and_within_the_maximum(grid, policy_agent, tmp_path):
    policy_agent(max_timeout=5)
    assert outcome(grid, grid.submit(JobSpec(command="true", timeout=5)))[0] is JobState.FINISHED
    marker = tmp_path / "marker"
    for timeout in (6, None):
        state, reason = outcome(grid, grid.submit(JobSpec(command=f"touch {marker}", timeout=timeout)))
        assert state is JobState.FAILED and reason == "refused: timeout must be set and at most 5s on this node"
    assert not marker.exists()


def test_environment_limited_to_allowed_names(grid, policy_agent, tmp_path):
    policy_agent(env_allow=["OMP_NUM_THREADS"])
    ok = grid.submit(JobSpec(command='echo "$OMP_NUM_THREADS"', env={"OMP_NUM_THREADS": "4"}))
    assert outcome(grid, ok)[0] is JobState.FINISHED and grid.get(ok).stdout == "4\n"
    marker = tmp_path / "marker"
    bad = grid.submit(JobSpec(command=f"touch {marker}", env={"OMP_NUM_THREADS": "4", "LD_PRELOAD": "/tmp/x.so",
                                                                "PATH": "/tmp/evil"}))
    state, reason = outcome(grid, bad)
    assert state is JobState.FAILED and reason == "refused: environment variables not allowed on this node: LD_PRELOAD, PATH"
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the root refusal can only be shown as root (CI runs as root)")
def test_agent_refuses_to_run_as_root_unless_allowed(agents, node, r):
    a = agents(node, slots=1, wait=False, allow_root=False)
    assert a.proc.wait(30) == 2
    assert "refusing to run jobs as root" in a.log.read_text() and "allow_root" in a.log.read_text()
    assert not r.exists(keys.node(node)) and not r.zscore(keys.NODES, node)



MALFORMED = [("timeout", "10"), ("timeout", -1), ("env", {"A": 1}), ("env", ["A"]), ("cwd", 7),
             ("max_attempts", "9")]


def test_signed_envelope_with_malformed_fields_is_refused(grid, policy_agent, r, tmp_path):
    """Even a validly signed envelope can't crash a slot with fields of the wrong type."""
    agent = policy_agent(max_timeout=60, env_allow=["A"], cwd_roots=[str(tmp_path)])
    for field, value in MALFORMED:
        jid = uuid.uuid4().hex
        over = {"cwd": str(tmp_path), "timeout": 30, field: value}
        env = forge.envelope(grid, f"touch {tmp_path / 'marker'}", jid, **over)
        state, reason = outcome(grid, forge.signed_job(r, grid.signer.sign(env), jid))
        assert (state, reason) == (JobState.FAILED, f"refused: envelope has a malformed {field}"), value
    ok = grid.submit(JobSpec(command="true", cwd=str(tmp_path), timeout=5))
    assert outcome(grid, ok)[0] is JobState.FINISHED and agent.proc.poll() is None
    assert not (tmp_path / "marker").exists()
