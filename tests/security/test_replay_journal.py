"""Replays and moved jobs that the broker's own state cannot stop: a broker writer resets the
attempt counter and the status, or pushes a job onto a queue it was not signed for.

Each attack must be refused by the node itself (its replay journal, the envelope's signed
bounds), with the reason in a `refused` event, and the command must not run.
"""

from __future__ import annotations

import json
import uuid

import pytest
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from gridcore import keys
from gridcore.models import JobSpec, JobState
from tests.security import forge
from tests.support.wait import eventually

pytestmark = pytest.mark.both_brokers


def refusal(grid, jid: str, timeout: float = 20) -> str:
    """Wait for the node's `refused` event for `jid`; return its message."""
    def found():
        return next((e.message for e in grid.events(1000) if e.kind == "refused" and e.job == jid), None)
    eventually(found, timeout, message=f"job {jid} to be refused")
    return found()


def nonce_of(r, jid: str) -> str:
    signed = RQJob.fetch(jid, connection=r, serializer=JSONSerializer).args[0]
    return json.loads(signed["envelope"])["nonce"]


def push_again(r, jid: str, queue: str = "default") -> None:
    """What a broker writer does to run a job again: status back to queued, its id on a queue."""
    r.hset(keys.rq_job(jid), "status", "queued")
    r.lpush(keys.rq_queue(queue), jid)


def test_replay_after_resetting_the_broker_counter_is_refused_by_the_node(grid, agents, node, r, tmp_path):
    agents(node, slots=1)
    log = tmp_path / "runs"
    jid = grid.submit(JobSpec(command=f"echo ran >> {log}"))
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED
    r.delete(keys.nonce(nonce_of(r, jid)))  # the broker forgets the envelope was spent
    push_again(r, jid)
    assert "already ran to its end on this node" in refusal(grid, jid)
    assert log.read_text() == "ran\n"


def test_jobs_moved_across_node_label_and_queue_lines_are_refused(grid, agents, node, r, tmp_path):
    agents(node, slots=1)
    marker = tmp_path / "marker"
    res = {"cpus": 1.0, "gpus": 0, "memory": 0, "labels": [], "node": None}
    cases = [  # (what was signed, the queue a broker writer pushes it onto, what the refusal says)
        ({"resources": {**res, "node": "n2"}}, keys.node_queue(node), "signed for node 'n2'"),
        ({"resources": {**res, "labels": ["gpu"]}}, "default", "needs label gpu"),
        ({"queue": "secret", "job_queue": "secret"}, "default", "signed for queue 'secret', found in queue 'default'"),
        ({"queue": keys.PENDING_QUEUE, "job_queue": "secret"}, keys.node_queue(node), "does not serve"),
    ]
    for over, queue, says in cases:
        jid = uuid.uuid4().hex
        signed = grid.signer.sign(forge.envelope(grid, f"touch {marker}", jid, **over))
        forge.signed_job(r, signed, jid, queue=queue)
        assert says in refusal(grid, jid), over
    assert not marker.exists()


def test_dependent_of_a_failed_parent_moved_to_a_queue_is_refused(grid, agents, node, r, tmp_path):
    agents(node, slots=1)
    marker = tmp_path / "marker"
    parent = grid.submit(JobSpec(command="exit 3"))
    child = grid.submit(JobSpec(command=f"touch {marker}", after=(parent,)))
    assert grid.wait([parent], timeout=20)[parent] is JobState.FAILED
    push_again(r, child)
    assert f"parent {parent} did not finish (failed)" in refusal(grid, child)
    assert not marker.exists()
