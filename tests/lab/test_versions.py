"""Versions that differ: nodes report theirs, envelopes carry a format an agent checks."""

from __future__ import annotations

import json
import uuid

from gridcore.models import JobSpec, JobState
from gridcore.records import ENVELOPE_VERSION
from gridcore.version import package_version
from tests.security import forge


def test_an_envelope_format_the_agent_does_not_know_is_refused_with_that_reason(grid, agents, r):
    agent = agents("node-v", slots=1)
    ok = grid.submit(JobSpec(command="true"))
    future = uuid.uuid4().hex
    signed = grid.signer.sign(forge.envelope(grid, "echo from-the-future", future, v=ENVELOPE_VERSION + 1))
    forge.signed_job(r, signed, future)
    assert grid.wait([ok, future], timeout=20) == {ok: JobState.FINISHED, future: JobState.FAILED}
    job = grid.get(future)
    assert job.reason_kind == "refused"
    assert f"envelope format v{ENVELOPE_VERSION + 1}" in job.reason and f"v{ENVELOPE_VERSION}" in job.reason
    assert "Traceback" not in agent.log.read_text()


def test_every_node_reports_its_version_and_grid_nodes_shows_it(grid, agents, cli):
    agents("node-v", slots=1)
    node = grid.node("node-v")
    assert node.version == package_version() != "unknown"
    out = cli("nodes")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split()[-1] == "VERSION" and row.split()[-1] == package_version()
    assert json.loads(cli("nodes", "--json").stdout)[0]["version"] == package_version()
