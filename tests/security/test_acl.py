"""Roles on a real broker with the users `grid acl --apply` installs.

The agent runs with its own node's user; the operator and the viewer use the client API with
theirs. Every denied call must be denied by the broker (NOPERM), not by politeness.
"""

from __future__ import annotations

import signal
import uuid

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from agent.negotiator import Negotiator
from gridcore import acl, keys
from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import JobSpec, JobState, NodeState, Resources
from gridcore.placing import Placer, place_submitted
from gridcore.records import Inventory
from gridcore.signing import SigningError
from tests.chaos.conftest import NODE_TIMEOUT, running_on, signal_node
from tests.security import forge
from tests.support.cli import call_cli
from tests.support.records import node_record, put_node
from tests.support.wait import eventually


@pytest.fixture
def users(r, node):
    """ACL users for operator, viewer and agents of `node` and `<node>-b`; name -> (user, password)."""
    accounts = acl.users([node, f"{node}-b"])
    passwords = acl.apply(r, accounts)
    yield {u.node or u.role: (u.name, passwords[u.name]) for u in accounts}
    for u in accounts:
        r.execute_command("ACL", "DELUSER", u.name)


def as_user(settings, cred, **over) -> Grid:
    s = settings.model_copy(update={"redis_username": cred[0], "redis_password": cred[1], **over})
    return Grid(connect(s), s)


@pytest.fixture
def agent_as_user(agents, node, users, monkeypatch):
    """A real agent for `node` (or `name`, another node with a user), logged in as that node's
    ACL user (settings from GRID_* env)."""
    def start(name: str | None = None, slots: int = 2, **cfg):
        name = name or node
        monkeypatch.setenv("GRID_REDIS_USERNAME", users[name][0])
        monkeypatch.setenv("GRID_REDIS_PASSWORD", users[name][1])
        try:
            return agents(name, slots=slots, **cfg)
        finally:
            monkeypatch.delenv("GRID_REDIS_USERNAME")
            monkeypatch.delenv("GRID_REDIS_PASSWORD")
    return start


def denied(call) -> None:
    with pytest.raises(redis.ResponseError) as e:
        call()
    # Inside MULTI the NOPERM comes at queue time and EXEC reports the discarded transaction.
    assert isinstance(e.value, redis.exceptions.NoPermissionError) or "NOPERM" in str(e.value) \
        or "previous errors" in str(e.value), repr(e.value)


def no_permission_errors(agent) -> None:
    text = agent.log.read_text()
    assert "NOPERM" not in text and "Traceback" not in text, text[-3000:]


def test_operator_and_agent_users_run_the_grid(settings, users, agent_as_user, node, tmp_path):
    agent = agent_as_user()
    op = as_user(settings, users["operator"])
    ok = op.submit(JobSpec(command="echo hello"))
    bad = op.submit(JobSpec(command="echo partial; exit 3"))
    long = op.submit(JobSpec(command="sleep 30"))
    states = op.wait([ok, bad], timeout=30)
    assert states == {ok: JobState.FINISHED, bad: JobState.FAILED}
    assert op.get(ok).stdout == "hello\n" and op.get(ok).node == node
    assert op.wait([long], timeout=0)[long] in (JobState.QUEUED, JobState.RUNNING)
    assert op.cancel(long, wait=20) is JobState.CANCELED
    op.requeue(bad)
    assert op.wait([bad], timeout=30)[bad] is JobState.FAILED and op.get(bad).exit_code == 3
    op.drain(node, "maintenance")
    op.resume(node)
    again = op.submit(JobSpec(command="true"))
    assert op.wait([again], timeout=30)[again] is JobState.FINISHED
    # The operator is not a broker admin.
    denied(lambda: op.redis.execute_command("ACL", "SETUSER", "mallory", "on", ">x", "+@all", "~*"))
    denied(lambda: op.redis.flushall())
    denied(lambda: op.redis.config_set("appendonly", "no"))
    no_permission_errors(agent)


def test_viewer_reads_everything_and_changes_nothing(settings, grid, users, agent_as_user, node):
    agent = agent_as_user()
    done = grid.submit(JobSpec(command="echo visible"))
    assert grid.wait([done], timeout=30)[done] is JobState.FINISHED, (grid.get(done), agent.log.read_text()[-3000:])
    queued = grid.submit(JobSpec(command="true", queue="parked"))  # no slot serves it: stays queued
    viewer = as_user(settings, users["viewer"])
    # Every read the CLI and the console make; any write among them would be refused here.
    job = viewer.get(done)
    assert job.stdout == "visible\n" and job.state is JobState.FINISHED
    jobs, total = viewer.list()
    assert total == 2 and {j.id for j in jobs} == {done, queued}
    assert viewer.list(state=JobState.FINISHED)[0][0].id == done
    assert viewer.list(node=node)[0][0].id == done
    assert b"visible" in b"".join(c.data for c in viewer.tail(done))
    assert viewer.tail(done, block_ms=10)
    assert [n.name for n in viewer.nodes()] == [node]
    assert {q.name for q in viewer.queues()} >= {"default", "parked"}
    assert viewer.events() and viewer.wait([done], timeout=1)[done] is JobState.FINISHED
    # ...and nothing that changes the grid.
    denied(lambda: viewer.submit(JobSpec(command="echo nope")))
    denied(lambda: viewer.cancel(queued))
    denied(lambda: viewer.drain(node))
    denied(lambda: viewer.redis.set(keys.cancel(queued), "1"))
    denied(lambda: viewer.redis.lpush(keys.rq_queue("default"), "x"))
    denied(lambda: viewer.redis.delete(keys.rq_job(done)))
    denied(lambda: viewer.redis.publish(f"rq:pubsub:{node}.x.0", "{}"))
    assert grid.state(queued) is JobState.QUEUED and grid.redis.llen(keys.rq_queue("default")) == 0


def test_viewer_uses_the_cli_read_commands_only(settings, grid, users, agent_as_user, node, monkeypatch, capsys):
    agent_as_user()
    done = grid.submit(JobSpec(command="echo visible"))
    assert grid.wait([done], timeout=30)[done] is JobState.FINISHED
    parked = grid.submit(JobSpec(command="true", queue="parked"))
    monkeypatch.setenv("GRID_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("GRID_REDIS_USERNAME", users["viewer"][0])
    monkeypatch.setenv("GRID_REDIS_PASSWORD", users["viewer"][1])

    for args in (("ls", "--json"), ("show", "--json", done), ("nodes", "--json"), ("logs", done),
                 ("wait", done, "--timeout", "1")):
        code, out, err = call_cli(capsys, *args)
        assert code == 0 and out and err == "", (args, err)
    for args in (("submit", "--", "echo", "nope"), ("cancel", parked), ("drain", node)):
        code, out, err = call_cli(capsys, *args)
        assert code == 1 and err.count("\n") == 1 and "denied" in err, (args, err)
    assert grid.state(parked) is JobState.QUEUED


def test_agent_user_cannot_make_jobs_run_nor_touch_other_nodes(settings, grid, users, agent_as_user, node, tmp_path):
    agent = agent_as_user()
    me = as_user(settings, users[node], key_file=str(tmp_path / "no-such-key"))
    # It holds no signing key...
    with pytest.raises(SigningError):
        me.submit(JobSpec(command="true"))
    # ...and what it can write to RQ without one is refused by every agent, its own included.
    marker = tmp_path / "marker"
    jid = uuid.uuid4().hex
    forged = forge.stranger(tmp_path / "made-up").sign(forge.envelope(grid, f"touch {marker}", jid))
    Queue("default", connection=me.redis, serializer=JSONSerializer).enqueue_call(
        func=keys.RUNNER_FUNC, args=(forged,), job_id=jid)
    assert me.wait([jid], timeout=30)[jid] is JobState.FAILED
    assert "not authorized" in me.get(jid).reason and not marker.exists()
    # Other nodes' keys are not its to write, nor the grid's job index, nor other workers' channels.
    other = f"{node}-b"
    for key in (keys.node(other), keys.node(node + "x"), keys.node_jobs(other), keys.node_held(other)):
        denied(lambda key=key: me.redis.hset(key, "draining", "1"))
    denied(lambda: me.redis.zadd(keys.JOBS, {"x": 1}))
    denied(lambda: me.redis.publish(f"rq:pubsub:{other}.x.0", "{}"))
    denied(lambda: me.redis.execute_command("ACL", "LIST"))
    denied(lambda: me.redis.flushdb())
    no_permission_errors(agent)


@pytest.mark.both_brokers
def test_an_agent_writes_no_key_of_another_node(settings, grid, users, node):
    """One compromised node cannot touch another's reservations (GPUs included), jobs, claims, inventory
    or heartbeat, nor fake its liveness through the shared registry of node names."""
    other = f"{node}-b"
    me = as_user(settings, users[node])
    for call in (
        lambda: me.redis.hset(keys.node_held(other), "j", '{"cpus": 64}'),
        lambda: me.redis.hdel(keys.node_held(other), "j"),
        lambda: me.redis.hset(keys.node_running(other), "j", "0"),
        lambda: me.redis.hdel(keys.node_running(other), "j"),
        lambda: me.redis.rpush(keys.node_taking(other), "j"),
        lambda: me.redis.rpop(keys.node_taking(other)),
        lambda: me.redis.hset(keys.node(other), "beat", str(grid.broker_time())),
        lambda: me.redis.hset(keys.node(other), "inventory", "{}"),
        lambda: me.redis.delete(keys.node(other)),
        # The registry of names: add only, never remove or rewrite.
        lambda: me.redis.zrem(keys.NODES, other),
        lambda: me.redis.delete(keys.NODES),
        lambda: me.redis.zincrby(keys.NODES, 100, other),
        lambda: me.redis.zpopmin(keys.NODES),
    ):
        denied(call)
    # What n2's agent writes of itself, n2's ACL user may write; n1 writes its own the same way.
    them = as_user(settings, users[other])
    for agent, name in ((me, node), (them, other)):
        now = agent.broker_time()
        agent.redis.hset(keys.node_held(name), "j", '{"cpus": 1}')
        agent.redis.hset(keys.node_running(name), "j", "0")
        agent.redis.rpush(keys.node_taking(name), "j")
        agent.redis.zadd(keys.NODES, {name: now}, nx=True)
    them.redis.hset(keys.node(other), mapping={"beat": repr(them.broker_time() - 3600), "node_timeout": "30"})
    # n2 went silent an hour ago; n1 re-adds it to the registry with a fresh score: it stays down.
    me.redis.zadd(keys.NODES, {other: me.broker_time(), f"{other}-ghost": me.broker_time()})
    states = {n.name: n.state for n in grid.nodes()}
    assert states[other] is NodeState.DOWN and states[f"{other}-ghost"] is NodeState.DOWN, states


def test_agents_as_their_users_fill_their_own_nodes_and_rerun_a_dead_nodes_job(settings, grid, users, agent_as_user,
                                                                                node, r):
    """Placement and node-loss recovery work with the narrow agent users: each agent places onto
    itself only, and the survivor reruns a dead node's job without writing any of its keys."""
    other = f"{node}-b"
    cfg = {"cpus": 2, "node_timeout": NODE_TIMEOUT}
    a, b = agent_as_user(node, slots=1, **cfg), agent_as_user(other, slots=1, **cfg)
    op = as_user(settings, users["operator"])
    # Two CPUs each: one such job per node at a time; the rest wait and the agents place them.
    where = 'sleep 0.3; echo "$GRID_JOB_NODE"'
    jobs = [op.submit(JobSpec(command=where, resources=Resources(cpus=2))) for _ in range(6)]
    assert set(op.wait(jobs, timeout=30).values()) == {JobState.FINISHED}
    ran = [op.get(j).stdout.strip() for j in jobs]
    assert set(ran) == {node, other}, ran
    # A job on the other node (this one drained meanwhile); then that whole node dies.
    op.drain(node, "keep it off")
    slow = f'if [ "$GRID_JOB_NODE" = {other} ]; then sleep 60; fi; echo "done on $GRID_JOB_NODE"'
    jid = op.submit(JobSpec(command=slow, resources=Resources(cpus=2)))
    eventually(lambda: running_on(r, jid) == other, 20, 0.1, "the job to run on the other node")
    op.resume(node)
    signal_node(b, r, signal.SIGKILL)
    assert op.wait([jid], timeout=30)[jid] is JobState.FINISHED, (op.get(jid), a.log.read_text()[-3000:])
    assert op.get(jid).stdout == f"done on {node}\n"
    assert [(x.get("node"), x.get("reason_kind")) for x in op.get(jid).attempts] == [(other, "lost"), (node, None)]
    # The survivor wrote none of the dead node's keys: its entries wait for it to come back...
    assert r.hexists(keys.node_running(other), jid) and r.hexists(keys.node_held(other), jid)
    assert {n.name: n.running for n in op.nodes()}[other] == ()  # ...and are not shown as running
    no_permission_errors(a)
    # Back, the node drops what was recovered elsewhere before it takes work.
    b.start()
    eventually(lambda: not r.hexists(keys.node_running(other), jid) and not r.hexists(keys.node_held(other), jid),
               10, 0.1, "the node back to drop its stale entries")
    no_permission_errors(b)


def test_an_agents_pass_places_onto_its_own_node_only(settings, grid, users, node, r):
    """Under its narrow user an agent's placement pass fills its own node, leaves a job that fits
    elsewhere to that node's pass (without a reason: it is not stuck), and leaves another node's
    corrupt hold for that node to set aside."""
    other = f"{node}-b"
    jobs = [grid.submit(JobSpec(command="true", resources=Resources(cpus=2))) for _ in range(3)]  # no node yet
    inv = Inventory(cpus=2, memory_total=8 * 2**30)
    for n in (node, other):
        put_node(r, n, grid.broker_time(), node_record(inventory=inv, slots=4, queues=()))
    r.hset(keys.node_held(other), "junk", "not json")
    mine = as_user(settings, users[node]).redis
    assert Negotiator(mine, owner="a", node=node).run_once() == 1
    placed = r.lrange(keys.rq_queue(keys.node_queue(node)), 0, -1)
    assert len(placed) == 1 and not r.llen(keys.rq_queue(keys.node_queue(other)))
    waiting = [j for j in jobs if j.encode() not in placed]
    assert r.hmget(keys.WHY, waiting) == [None, None]  # the other node fits them now: its pass places one
    assert r.hexists(keys.node_held(other), "junk")
    assert Negotiator(as_user(settings, users[other]).redis, owner="b", node=other).run_once() == 1
    assert r.llen(keys.rq_queue(keys.node_queue(other))) == 1 and not r.hexists(keys.node_held(other), "junk")
    last = next(j for j in waiting if r.hget(keys.WHY, j))
    assert f"{node}: needs 2 CPUs free" in r.hget(keys.WHY, last).decode()


def test_a_slot_places_released_dependents_onto_its_own_node_only(settings, grid, users, node, r):
    """A parent's end places the dependents it released from the slot, under the node's narrow
    user: onto that node only (another node's holds are not its to write), never a refusal."""
    other = f"{node}-b"
    jobs = [grid.submit(JobSpec(command="true", resources=Resources(cpus=2))) for _ in range(2)]
    inv = Inventory(cpus=2, memory_total=8 * 2**30)
    for n in (node, other):
        put_node(r, n, grid.broker_time(), node_record(inventory=inv, slots=4, queues=()))
    mine = as_user(settings, users[node]).redis
    out = Placer(mine).place_ids(jobs, own=False, onto=node)
    assert len(out.placed) == 1 and r.llen(keys.rq_queue(keys.node_queue(node))) == 1
    assert not r.llen(keys.rq_queue(keys.node_queue(other))) and not r.hlen(keys.node_held(other))
    # The one left fits the other node only: every agent's loop is woken for it (its narrow user
    # may write the wake stream), as that node's periodic pass would find it only later.
    r.delete(keys.PLACE_WAKES)
    place_submitted(mine, jobs, own=False, onto=node)
    assert [f for _, f in r.xrange(keys.PLACE_WAKES)] == [{b"node": b"", b"any": b"1"}]
    with pytest.raises(redis.ResponseError, match="NOPERM|permission"):
        Placer(mine).place_ids(jobs, own=False)  # onto any node: the one left fits the other's holds
