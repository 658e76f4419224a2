"""Short ids, as the console and `grid ls` show them, resolve in every command that takes an id."""

from __future__ import annotations

import json

import pytest

from gridcore.errors import AmbiguousId, JobNotFound
from gridcore.models import JobSpec, JobState
from tests.support.cli import run_cli

A = "517e6378" + "a" * 24
B = "517e63ff" + "b" * 24


@pytest.fixture
def two(grid):
    for jid, name in ((A, "alpha"), (B, "beta")):
        grid.submit(JobSpec(command="true", name=name), job_id=jid)
    return A, B


def test_a_unique_start_resolves_and_an_ambiguous_one_lists_the_jobs(grid, two):
    assert grid.resolve("517e6378") == A and grid.resolve("517E63F") == B and grid.resolve(A) == A
    with pytest.raises(AmbiguousId) as e:
        grid.resolve("517e63")
    assert A in str(e.value) and B in str(e.value)
    with pytest.raises(JobNotFound, match="6 characters"):
        grid.resolve("517e6")
    with pytest.raises(JobNotFound):
        grid.resolve("517e6300")


def test_every_command_that_takes_an_id_takes_a_short_one(cli, grid, two):
    short = A[:8]
    shown = json.loads(cli("show", "--json", short, check=True).stdout)
    assert shown["id"] == A and shown["name"] == "alpha"
    assert cli("logs", short).returncode == 0
    assert "no node serving queue 'default'" in cli("why", short, check=True).stdout
    waited = cli("wait", "--timeout", "0.2", "--json", short)
    assert waited.returncode == 1 and json.loads(waited.stdout) == {A: "queued"}
    assert cli("cancel", short, check=True).stdout.strip() == f"{A} canceled"
    assert grid.state(A) is JobState.CANCELED
    assert cli("requeue", short, check=True).stdout.strip() == f"{A} requeued: true"
    ambiguous = cli("show", "517e63")
    assert ambiguous.returncode == 2 and A in ambiguous.stderr and B in ambiguous.stderr
    assert len(ambiguous.stderr.strip().splitlines()) == 1
