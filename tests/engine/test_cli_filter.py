"""`grid ls --filter` and `grid requeue --all-failed --filter` select with the console's JobFilter."""

from __future__ import annotations

import json

import pytest

from gridcore import keys
from gridcore.models import JobSpec, JobState
from gridcore.records import Result
from tests.engine.test_reads import fail



def failed(r, grid, name: str, reason: str, kind: str) -> str:
    """A job that failed with this reason, as its slot records it (no agent needed)."""
    jid = grid.submit(JobSpec(command="true", name=name))
    fail(r, jid, "default", grid.broker_time())
    r.set(keys.result(jid), Result(reason=reason, reason_kind=kind).encode())
    return jid


@pytest.fixture
def jobs(r, grid):
    lost = [failed(r, grid, f"fit {i}", "node lost: n2 stopped heartbeating", "lost") for i in range(2)]
    exited = [failed(r, grid, "fit other", "exit code 1", "exit") for _ in range(2)]
    queued = grid.submit(JobSpec(command="true", name="fit queued"))
    return lost, exited, queued


def test_ls_filter_selects_what_the_console_shows(cli, jobs):
    lost, exited, queued = jobs
    listed = json.loads(cli("ls", "--json", "--filter", "state:failed lost", check=True).stdout)
    assert {j["id"] for j in listed["jobs"]} == set(lost) and listed["total"] == 2
    listed = json.loads(cli("ls", "--json", "--filter", "fit", "--limit", "2", "--offset", "4", check=True).stdout)
    assert [j["id"] for j in listed["jobs"]] == [lost[0]] and listed["total"] == 5
    listed = json.loads(cli("ls", "--json", "--filter", "queue:default state:queued", check=True).stdout)
    assert [j["id"] for j in listed["jobs"]] == [queued]
    bad = cli("ls", "--filter", "state:nope")
    assert bad.returncode == 2 and "unknown state 'nope'" in bad.stderr


def test_requeue_all_failed_filter_requeues_exactly_the_matching_jobs(cli, grid, jobs):
    lost, exited, _ = jobs
    p = cli("requeue", "--all-failed", "--filter", "lost", check=True)
    assert sorted(line.split()[0] for line in p.stdout.splitlines()) == sorted(lost)
    assert [grid.state(j) for j in lost + exited] == [JobState.QUEUED] * 2 + [JobState.FAILED] * 2
    p = cli("requeue", "--all-failed", "--reason", "exit code", check=True)
    assert sorted(line.split()[0] for line in p.stdout.splitlines()) == sorted(exited)
    wrong = cli("requeue", "--all-failed", "--filter", "state:canceled")
    assert wrong.returncode == 2 and "failed" in wrong.stderr
    assert cli("requeue", "--filter", "lost").returncode == 2  # a filter selects among --all-failed only
