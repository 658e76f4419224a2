"""Bad records are contained: bounded before they are inflated or parsed, set aside (quarantined)
and reported where they would stop a node, and never a crash of a slot, the placement pass or
the daemon."""

from __future__ import annotations

import json
import os
import tracemalloc
import zlib

import pytest

from agent.negotiator import Negotiator
from agent.rqadapter.jobs import GridJob
from gridcore import acl, keys, quarantine
from gridcore.dependencies import fail_dependents
from gridcore.models import JobSpec, JobState, Resources
from gridcore.records import CorruptRecord
from gridcore.reservations import Reservations
from tests.support.cli import call_cli
from tests.support.records import put_node
from tests.support.wait import eventually

BOMB = zlib.compress(b"\0" * (260 * 1024 * 1024), 9)
"""About 255 KB that inflate to 260 MB."""


def pending(r) -> list[str]:
    return [i.decode() for i in r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1)]


def corrupt_events(grid) -> list[str]:
    return [e.message for e in grid.events(1000) if e.kind == "corrupt"]


def test_a_zlib_bomb_in_data_is_refused_before_it_inflates(grid, r):
    jid = grid.submit(JobSpec(command="echo hi"))
    r.hset(keys.rq_job(jid), "data", BOMB)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRecord, match="inflates to more than"):
            GridJob.fetch(jid, connection=r)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak


def test_a_payload_stored_uncompressed_up_to_the_bound_is_read():
    """The grid stores a job's payload at zlib level 0 (gridcore/rqjob.py): a stored stream is a
    little longer than its text, so a payload whose text is within the bound still reads, and one
    stored past the bound's stored size is refused unread."""
    from gridcore.signedview import MAX_DATA, MAX_STORED, _payload

    text = json.dumps(["f", "a" * (MAX_DATA - 20)]).encode()
    assert len(text) <= MAX_DATA
    assert _payload(zlib.compress(text, 0))[1] == "a" * (MAX_DATA - 20)
    with pytest.raises(ValueError, match=f"{MAX_STORED + 1} bytes"):
        _payload(b"x" * (MAX_STORED + 1))


def test_an_oversized_meta_in_pending_is_set_aside_unread(grid, r, monkeypatch, capsys, settings):
    # Submitted before the node is up, so that they wait (a submitter places what fits at once).
    big = grid.submit(JobSpec(command="echo big", resources=Resources(cpus=2)))
    good = grid.submit(JobSpec(command="echo good", resources=Resources(cpus=2)))
    put_node(r, "n1", grid.broker_time())
    r.hset(keys.rq_job(big), "meta", b"{" + b" " * (50 * 1024 * 1024) + b"}")
    neg = Negotiator(r, owner="test")
    assert neg.run_once() == 1
    assert pending(r) == []  # the good one placed, the oversized one out of the window for good
    assert r.lrange(keys.rq_queue(keys.node_queue("n1")), 0, -1) == [good.encode()]
    assert any(big in m and "more than the" in m for m in corrupt_events(grid))
    assert "more than the" in r.hget(keys.WHY, big).decode()
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)
    code, out, _ = call_cli(capsys, "show", big)
    assert code == 0 and "quarantined" in out


def test_a_job_key_of_another_type_in_pending_fails_alone(grid, r):
    """The records of a pass are read in one script call: a waiting id whose key is no hash (anyone
    can write one) is set aside, and the jobs beside it are read and placed all the same."""
    first = grid.submit(JobSpec(command="echo first", resources=Resources(cpus=2)))  # before the node: waits
    r.lpush(keys.rq_queue(keys.PENDING_QUEUE), "no-hash")
    r.set(keys.rq_job("no-hash"), "not a hash")
    last = grid.submit(JobSpec(command="echo last", resources=Resources(cpus=2)))
    put_node(r, "n1", grid.broker_time())
    assert Negotiator(r, owner="test").run_once() == 2
    assert r.lrange(keys.rq_queue(keys.node_queue("n1")), 0, -1) == [first.encode(), last.encode()]
    assert "no-hash" not in pending(r)  # out of the window for good
    assert "not a job record" in r.hget(keys.WHY, "no-hash").decode()
    assert any("no-hash" in m for m in corrupt_events(grid))
    assert r.get(keys.rq_job("no-hash")) == b"not a hash"  # set aside from the queue, not deleted


def test_a_corrupt_held_entry_stops_neither_reserve_nor_placement(grid, r, monkeypatch, capsys, settings):
    jid = grid.submit(JobSpec(command="echo hi", resources=Resources(cpus=2)))  # before the node: it waits
    put_node(r, "n1", grid.broker_time())
    r.hset(keys.node_held("n1"), mapping={"x": "not-json", "y": '{"cpus": "lots", "gpus": 7}', "z": "[1]"})
    assert Reservations(r).reserve("n1", "j0", Resources(cpus=1), [], 8, 0)
    assert Negotiator(r, owner="test").run_once() == 1, r.hgetall(keys.WHY)
    assert pending(r) == []
    assert set(r.hkeys(keys.node_held("n1"))) == {b"j0", jid.encode()}  # the corrupt ones set aside
    assert len(corrupt_events(grid)) == 3
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)
    code, out, _ = call_cli(capsys, "nodes")
    assert code == 0 and "quarantined grid:node:n1:held x" in out


def test_a_member_of_a_dependents_set_that_is_no_job_id_is_set_aside(grid, r):
    parent = grid.submit(JobSpec(command="true"))
    r.sadd(keys.rq_dependents(parent), "not a job id!", "\x1b]0;t\x07", "0" * 300, "no-such-job")
    assert fail_dependents(r, parent, grid.broker_time(), 60) == []
    assert r.smembers(keys.rq_dependents(parent)) == {b"no-such-job"}
    assert len(quarantine.entries(r, keys.rq_dependents(parent))) == 3


@pytest.mark.slow
def test_a_node_runs_on_through_poisoned_records(grid, agents, node, r, gate):
    """One agent: a corrupt held entry of its own node, a dependents set written to while a job
    runs, and a job whose data is a zlib bomb; its jobs still finish and no process exits."""
    agent = agents(node, slots=2)
    r.hset(keys.node_held(node), "x", "not-json")
    blocker = grid.submit(JobSpec(command=gate.command("echo done")))
    eventually(lambda: grid.state(blocker) is JobState.RUNNING, 20)
    r.sadd(keys.rq_dependents(blocker), "not a job id!", "no-such-job")
    bomb = grid.submit(JobSpec(command="echo never", queue="parked"))  # no node serves it: planted first
    r.hset(keys.rq_job(bomb), mapping={"data": BOMB, "origin": "default"})
    r.lrem(keys.rq_queue("parked"), 0, bomb)
    r.rpush(keys.rq_queue("default"), bomb)
    placed = grid.submit(JobSpec(command="echo placed", resources=Resources(cpus=1)))
    gate.open()
    states = grid.wait([blocker, placed, bomb], timeout=30)
    assert states[blocker] is JobState.FINISHED and states[placed] is JobState.FINISHED, states
    assert states[bomb] is JobState.FAILED and "refused" in (grid.get(bomb).reason or "")
    after = grid.submit(JobSpec(command="echo after"))
    assert grid.wait([after], timeout=20)[after] is JobState.FINISHED
    assert agent.proc.poll() is None, agent.log.read_text()[-3000:]
    assert "Traceback" not in agent.log.read_text(), agent.log.read_text()[-3000:]


def test_a_pushed_twin_of_a_running_job_is_refused_without_its_grid_active_entry(grid, agents, node, r, gate,
                                                                                   tmp_path):
    """`HDEL grid:active <id>` and a push of the id: RQ's record (started by a live worker) is the
    second witness, and the running copy's entry in the node's running hash is left alone."""
    agent = agents(node, slots=2)
    runs = tmp_path / "runs"
    jid = grid.submit(JobSpec(command=f"echo run >> {runs}; echo out; {gate.wait}"))
    eventually(lambda: grid.state(jid) is JobState.RUNNING and runs.exists(), 20)
    entry = r.hget(keys.node_running(node), jid)
    r.hdel(keys.ACTIVE, jid)
    r.rpush(keys.rq_queue("default"), jid)
    eventually(lambda: any(e.kind == "refused" and e.job == jid and "already running" in e.message
                           for e in grid.events(100)), 20)
    assert r.hget(keys.node_running(node), jid) == entry
    gate.open()
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED
    assert runs.read_text() == "run\n"  # one copy ran
    logs = agent.cfg["log_dir"]
    assert os.stat(os.path.join(logs, f"{jid}.log")).st_mode & 0o777 == 0o600  # the agent's user only
    assert os.stat(logs).st_mode & 0o777 == 0o700
    assert agent.proc.poll() is None


def test_an_agent_user_may_set_corrupt_records_aside(r, node):
    account = acl.users([node], roles=["agent"])[0]
    acl.apply(r, [account])
    try:
        for cmd in (("HSET", keys.QUARANTINE, "k", "v"), ("HDEL", keys.node_held(node), "x"),
                    ("SREM", keys.rq_dependents("j"), "x"), ("LREM", keys.rq_queue(keys.PENDING_QUEUE), "1", "x")):
            assert r.execute_command("ACL", "DRYRUN", account.name, *cmd) in (b"OK", "OK"), cmd
        # Another node's corrupt held entries are that node's to set aside (its own placement pass).
        refused = r.execute_command("ACL", "DRYRUN", account.name, "HDEL", keys.node_held("other"), "x")
        assert b"no permissions" in refused
    finally:
        r.execute_command("ACL", "DELUSER", account.name)


def test_a_priority_that_is_no_number_stops_no_submission(grid, r):
    waiting = grid.submit(JobSpec(command="true"))
    r.hset(keys.PRIORITY, mapping={waiting: "lots", "ghost": "\x1b[2J"})
    jid = grid.submit(JobSpec(command="true", priority=5))  # inserted by priority: reads the junk
    assert r.lrange(keys.rq_queue("default"), 0, -1) == [jid.encode(), waiting.encode()]
