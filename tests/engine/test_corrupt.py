"""A corrupt broker record never breaks a read: the job or node is shown with what could be
read, and the problem is named (key and field) on it, by `grid show` and `grid nodes` too."""

from __future__ import annotations

import json

import pytest

from gridcore import keys
from gridcore.models import JobSpec, JobState
from gridcore.records import Attempt, Result
from tests.engine.test_reads import beat



def test_a_job_with_corrupt_result_and_attempt_shows_what_could_be_read(r, grid):
    jid = grid.submit(JobSpec(command="echo hi", name="hello"))
    r.set(keys.result(jid), b"{not json")
    r.rpush(keys.attempts(jid), b'{"exit_code": "three"}', Attempt(node="n1", exit_code=1).encode())
    job = grid.get(jid)
    assert (job.name, job.command, job.state) == ("hello", "echo hi", JobState.QUEUED)
    assert [(a["node"], a["exit_code"]) for a in job.attempts] == [(None, None), ("n1", 1)]  # the attempt kept
    assert len(job.problems) == 2
    assert keys.result(jid) in job.problems[0] and "exit_code" in job.problems[1]
    (listed,), total = grid.list()
    assert listed.id == jid and total == 1 and listed.problems == job.problems[:1]  # a listing reads no attempts


@pytest.mark.parametrize("meta", [b"[1, 2]", b'{"tags": 5}', b'{"resources": "all of them"}', b"\xff" * 10])
def test_a_job_with_corrupt_meta_is_listed_and_explained(r, grid, meta):
    jid = grid.submit(JobSpec(command="true", name="named", queue="q1"))
    r.hset(keys.rq_job(jid), "meta", meta)
    job = grid.get(jid)
    assert job.id == jid and job.queue == "q1" and job.name == "named"  # RQ's own origin and description
    assert len(job.problems) == 1 and "meta" in job.problems[0]
    assert [j.id for j in grid.list(queue="q1")[0]] == [jid]
    assert grid.why(jid)


def test_a_corrupt_group_result_and_events_do_not_break_their_reads(r, grid):
    gid = "g1"
    grid.submit_many([JobSpec(command="true", group=gid, params={"_cell": 0})], groups={gid: {"name": "sweep"}})
    r.hset(keys.group(gid), mapping={"size": "many", "axes": "{"})
    (group,) = grid.groups()
    assert group["name"] == "sweep" and group["size"] == 1 and group["counts"]["queued"] == 1
    r.xadd(keys.EVENTS, {"t": "yesterday", "kind": "x" * 1000, "msg": b"\xff\xfe"})
    newest = grid.events(count=1)[0]
    assert newest.time == 0.0 and len(newest.kind) <= 64


def test_grid_show_and_nodes_name_the_problem(r, grid, cli):
    jid = grid.submit(JobSpec(command="true"))
    r.set(keys.result(jid), Result(exit_code=0).encode().replace('"exit_code":0', '"exit_code":"zero"'))
    shown = cli("show", jid, check=True).stdout
    assert "problems" in shown and f"{keys.result(jid)} field exit_code" in shown
    assert json.loads(cli("show", "--json", jid, check=True).stdout)["problems"]
    beat(r, grid, "n1", 0, inventory="{broken", slots="four")
    nodes = cli("nodes", check=True).stdout
    assert "n1" in nodes and f"{keys.node('n1')} inventory" in nodes and "field slots" in nodes
    (node,) = json.loads(cli("nodes", "--json", check=True).stdout)
    assert node["name"] == "n1" and len(node["problems"]) == 2
