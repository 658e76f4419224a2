"""One node's ACL user turns a shared coordination key (one that belongs to no node and no job,
so every agent may write it) into another type: `SET grid:priority x`, `HSET grid:write-probe a b`.

Every script and pipeline of every node that touches that key would fail with WRONGTYPE (pops,
starts, ends, the daemon's recovery of a dead slot): a one-command stop of the whole grid from
one compromised node. Such a key holds nothing the grid wrote, so agents remove it (`heal`) and
name it in the quarantine; the scripts a slot cannot wait for read past it meanwhile.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest
import redis

from agent import claim, outage, recovery
from agent.daemon import grid_identity
from agent.negotiator import Negotiator
from agent.proctree import ENV_JOB, tagged
from gridcore import keys, quarantine, reservations
from gridcore.models import JobSpec, JobState, Resources
from gridcore.records import ActiveEntry, Inventory
from tests.chaos.conftest import NODE_TIMEOUT, running_on, signal_node
from tests.security import test_acl
from tests.security.test_acl import as_user
from tests.security.test_laundered_ends import planted_running
from tests.support.records import node_record, put_node
from tests.support.wait import eventually

users = test_acl.users
agent_as_user = test_acl.agent_as_user  # a real agent logged in as its node's ACL user  # ACL users: operator, viewer, agents of `node` and `<node>-b`


def poison_shared(conn) -> None:
    """As the writer `conn`: every shared key holds a value of another type than the grid's."""
    for key, kind in quarantine.SHARED_TYPES.items():
        conn.delete(key)
        if kind == "string":
            conn.hset(key, "x", "y")
        else:
            conn.set(key, "x")


@pytest.mark.both_brokers
def test_another_nodes_user_retypes_every_shared_key_and_an_agent_heals_them(settings, grid, users, node, r):
    poison_shared(as_user(settings, users[f"{node}-b"]).redis)
    me = as_user(settings, users[node]).redis
    assert sorted(quarantine.heal(me)) == sorted(quarantine.SHARED_TYPES)
    for key, kind in quarantine.SHARED_TYPES.items():
        assert r.type(key).decode() in ("none", kind), key
    named = " ".join(quarantine.entries(r))
    assert all(f"quarantined {key}: a " in named for key in quarantine.SHARED_TYPES), named
    assert any("not the hash the grid keeps" in e.message for e in grid.events() if e.kind == "corrupt")
    assert quarantine.heal(me) == []  # nothing left to heal; the grid's own types stay


@pytest.mark.both_brokers
def test_a_shared_stream_whose_ids_are_used_up_is_healed_and_its_error_waited_out(settings, grid, users, node, r):
    """One XADD with the largest id from any node's user makes every later XADD * to that stream
    fail (every wake of the placement loops, every event, every end's history): the heal removes
    such a stream, and the error is one the agent's writes wait out until it has."""
    writer = as_user(settings, users[f"{node}-b"]).redis
    streams = [k for k, kind in quarantine.SHARED_TYPES.items() if kind == "stream"]
    for key in streams:
        writer.xadd(key, {"x": "y"}, id="18446744073709551615-18446744073709551614")
    writer.xadd(keys.PLACE_WAKES, {"x": "y"})  # the last id there is
    with pytest.raises(redis.ResponseError) as spoiled:
        writer.xadd(keys.PLACE_WAKES, {"x": "y"})
    assert outage.retyped(spoiled.value)
    me = as_user(settings, users[node]).redis
    assert sorted(quarantine.heal(me)) == sorted(streams)
    assert "ids used up" in " ".join(quarantine.entries(r))
    with me.pipeline(transaction=False) as pipe:
        reservations.wake(pipe, node)
        pipe.execute()
    assert quarantine.heal(me) == []


@pytest.mark.both_brokers
def test_a_retyped_sweep_slots_set_stops_no_placement(settings, grid, users, node, r):
    """A sweep's throttle set is every agent's to write: one of another type failed every
    placement pass of every agent. It is removed (quarantined) and the sweep placed."""
    specs = [JobSpec(command="true", resources=Resources(cpus=1), group="sw") for _ in range(3)]
    jobs = grid.submit_many(specs, groups={"sw": {"name": "sw", "max_parallel": 2}})  # no node yet: all wait
    put_node(r, node, grid.broker_time(), node_record(inventory=Inventory(cpus=4, memory_total=2**33), queues=()))
    as_user(settings, users[f"{node}-b"]).redis.set(keys.group_slots("sw"), "x")
    assert Negotiator(as_user(settings, users[node]).redis, owner="a", node=node).run_once() == 2
    assert set(map(bytes.decode, r.smembers(keys.group_slots("sw")))) < set(jobs)
    assert any(keys.group_slots("sw") in e for e in quarantine.entries(r))


@pytest.mark.both_brokers
def test_a_down_node_whose_own_keys_are_spoiled_stops_no_recovery_of_the_others(settings, grid, r):
    """A node's own keys are its user's to write, of any type: one down node's spoiled running
    hash must not end the sweep before the down nodes after it in the registry."""
    now = grid.broker_time()
    put_node(r, "aa", now - 1000)
    put_node(r, "zz", now - 500)
    r.set(keys.node_running("aa"), "x")
    jid = grid.submit(JobSpec(command="true", queue="parked"))
    planted_running(r, grid, jid, "zz")
    assert recovery.sweep_down_nodes(r, "me", now, 30.0, settings.result_ttl) == [jid]
    assert grid.state(jid) is JobState.FAILED


def test_a_node_keeps_one_grid_id_per_broker(settings, broker, r):
    """The id a node marks its processes with is kept on its disk per broker: rewriting a broker's
    `grid:id` changes nothing, and a second grid on the same machine (its own broker, a node of
    the same name) gets its own id, not the first grid's."""
    other = broker.client(db=1)
    other.delete(keys.GRID_ID)
    first = grid_identity(r, "n1", "redis://lab:6379/0")
    r.set(keys.GRID_ID, "rewritten")
    assert grid_identity(r, "n1", "redis://lab:6379/0") == first
    second = grid_identity(other, "n1", "redis://127.0.0.1:7000/1")
    assert second != first and second == other.get(keys.GRID_ID).decode()


@pytest.mark.both_brokers
def test_a_pop_claims_its_job_past_retyped_priority_and_active_keys(settings, grid, users, node, r):
    """The slot's pop reads `grid:active` and drops the job's `grid:priority` entry in the step
    that claims it: a retyped key of either must not fail the pop midway (the job popped, its
    claim written, the reply an error)."""
    jid = grid.submit(JobSpec(command="true", queue="red2"))
    writer = as_user(settings, users[f"{node}-b"]).redis
    writer.set(keys.PRIORITY, "x")
    writer.set(keys.ACTIVE, "x")
    me = as_user(settings, users[node]).redis
    popped = claim.pop(me, node, f"{node}.w.0", [keys.rq_queue(keys.node_queue(node)), keys.rq_queue("red2")])
    assert popped.taken is not None and popped.taken.job_id == jid
    assert r.hget(keys.node_running(node), jid) == claim.marker(f"{node}.w.0").encode()


@pytest.mark.agents
def test_a_node_runs_on_while_another_nodes_user_retypes_the_shared_keys(settings, grid, users, node, agent_as_user,
                                                                         r):
    agent = agent_as_user(slots=2)
    grid.drain(node, "hold the jobs")
    jobs = [grid.submit(JobSpec(command="echo plain")), grid.submit(JobSpec(command="echo placed", resources=Resources(cpus=1)))]
    poison_shared(as_user(settings, users[f"{node}-b"]).redis)
    grid.redis.hset(keys.node(node), "draining", "0")  # resume by hand: `resume` writes an event
    states = grid.wait(jobs, timeout=30)
    log = agent.log.read_text()
    assert all(s is JobState.FINISHED for s in states.values()), f"{states}\n{log[-6000:]}"
    # Again, with the node busy: the keys retyped under its pops, starts and ends.
    jobs = [grid.submit(JobSpec(command="sleep 0.2; echo again")) for _ in range(4)]
    poison_shared(as_user(settings, users[f"{node}-b"]).redis)
    states = grid.wait(jobs, timeout=30)
    log = agent.log.read_text()
    assert all(s is JobState.FINISHED for s in states.values()), f"{states}\n{log[-6000:]}"
    assert agent.proc.poll() is None, log[-3000:]
    assert " exited with " not in log and "Traceback" not in log, log[-6000:]
    eventually(lambda: keys.PRIORITY in " ".join(quarantine.entries(r)), 10, message="the agent to heal the keys")


@pytest.mark.agents
def test_a_rewritten_grid_id_hides_no_stale_copy_from_the_nodes_next_agent(settings, grid, users, node, agents, r):
    """`grid:id` scopes the markers a node finds its earlier incarnation's processes by. Another
    node's user rewrites it while this node is down: its next agent must still kill the job left
    running there, or that copy runs on beside the job's rerun (two copies of one job)."""
    agent = agents(node, slots=1)
    jid = grid.submit(JobSpec(command="sleep 300 & sleep 300; wait"))
    eventually(lambda: tagged({ENV_JOB: jid}), 20, 0.1, "the job to run")
    stale = [p.pid for p in tagged({ENV_JOB: jid})]
    # The whole node stops at once but its job's processes (their slot gone, nothing kills them).
    daemon = psutil.Process(agent.proc.pid)
    for p in [daemon, *daemon.children()]:
        p.kill()
    agent.proc.wait(10)
    as_user(settings, users[f"{node}-b"]).redis.set(keys.GRID_ID, "another-grid")
    agent.start()
    eventually(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in stale), 20, 0.1, "the earlier incarnation's job to be killed",
               tolerate=(psutil.NoSuchProcess,))


@pytest.mark.agents
def test_a_forged_active_entry_makes_no_node_drop_a_queued_job(settings, grid, users, node, agent_as_user, r):
    """`grid:active` is any agent's to write. An entry that names a live worker (even a made-up
    one: RQ's worker keys are any agent's too) for a job RQ's record does not show started by that
    worker is no running copy: the job runs, instead of being dropped as its twin."""
    agent = agent_as_user(slots=1)
    grid.drain(node, "hold the job")
    jid = grid.submit(JobSpec(command="echo ran"))
    writer = as_user(settings, users[f"{node}-b"]).redis
    live = next(iter(r.smembers(keys.rq_workers()))).decode().removeprefix(keys.rq_worker(""))
    writer.hset(keys.ACTIVE, jid, ActiveEntry(node=node, slot=0, worker=live, started=grid.broker_time()).encode())
    grid.redis.hset(keys.node(node), "draining", "0")
    assert grid.wait([jid], timeout=20)[jid] is JobState.FINISHED, (grid.get(jid), agent.log.read_text()[-3000:])
    assert grid.get(jid).stdout == "ran\n"


@pytest.mark.agents
def test_a_reclaim_lock_set_without_expiry_stops_no_recovery(settings, grid, users, node, agents, r):
    """Reclaim locks are any agent's to write (agents take them with a 30 s expiry). One set with
    no expiry by another node's user would stop every agent from recovering that node's jobs."""
    dead, survivor = f"{node}-c", f"{node}-d"
    cfg = {"node_timeout": NODE_TIMEOUT}
    victim = agents(dead, slots=1, **cfg)
    as_user(settings, users[f"{node}-b"]).redis.set(keys.reclaim_lock(dead), "squatter")
    jid = grid.submit(JobSpec(command=f'if [ "$GRID_JOB_NODE" = {dead} ]; then sleep 60; fi; echo "on $GRID_JOB_NODE"'))
    eventually(lambda: running_on(r, jid) == dead, 20, 0.1, "the job to run on the node that dies")
    agents(survivor, slots=1, **cfg)
    signal_node(victim, r, signal.SIGKILL)
    assert grid.wait([jid], timeout=30)[jid] is JobState.FINISHED, grid.get(jid)
    assert grid.get(jid).stdout == f"on {survivor}\n"


def test_a_pop_heals_its_nodes_running_hash_retyped(grid, r):
    """A broker writer sets the node's running hash to another type: the pop (empty or not) would
    fail every time, after it took a job. It holds nothing the grid wrote: the pop removes it,
    names it in the quarantine, and the node takes jobs again."""
    r.set(keys.node_running("n1"), "x")
    queues = [keys.rq_queue(keys.node_queue("n1")), keys.rq_queue("red3")]
    assert claim.pop(r, "n1", "n1.w.0", queues).taken is None
    assert r.type(keys.node_running("n1")) in (b"none", b"hash")
    assert keys.node_running("n1") in " ".join(quarantine.entries(r))
    jid = grid.submit(JobSpec(command="true", queue="red3"))
    r.set(keys.node_running("n1"), "x")
    popped = claim.pop(r, "n1", "n1.w.0", queues)
    assert popped.taken is not None and popped.taken.job_id == jid
    assert r.hget(keys.node_running("n1"), jid) == claim.marker("n1.w.0").encode()


def test_a_node_takes_jobs_again_after_a_writer_retypes_its_running_hash(grid, agents, r):
    """A real agent, its idle slot's pops (empty, then one that takes a job) past a running hash
    a broker writer set to a string: the job runs, nothing is lost, the key is named."""
    agent = agents("node-a", slots=1)
    r.set(keys.node_running("node-a"), "x")
    time.sleep(1)  # the idle slot's pops meet it
    jid = grid.submit(JobSpec(command="echo ran"))
    assert grid.wait([jid], timeout=30)[jid] is JobState.FINISHED, agent.log.read_text()[-3000:]
    assert grid.get(jid).stdout == "ran\n"
    assert keys.node_running("node-a") in " ".join(quarantine.entries(r))
    assert agent.proc.poll() is None and "Traceback" not in agent.log.read_text()


def test_an_unstarted_give_back_passes_a_retyped_nonce_counter(grid, r):
    """A start whose reply was lost is handed back with its count given back; a broker writer who
    retyped the envelope's nonce counter must not fail the hand-back (the job would wait for
    node-loss recovery): the job is back in its queue, the counter left as it is."""
    from agent import guarded

    jid = grid.submit(JobSpec(command="true", queue="red4"))
    queue = keys.rq_queue("red4")
    assert r.lpop(queue).decode() == jid  # the slot's pop
    r.hset(keys.rq_job(jid), "status", "started")
    r.hset(keys.ACTIVE, jid, ActiveEntry(node="n1", slot=0, worker="n1.w.0", started=1).encode())
    r.hset(keys.node_running("n1"), jid, "0")
    counter = keys.nonce("feedface")
    r.rpush(counter, "x")  # the writer's list where the count is
    moved = guarded.REQUEUE_UNSTARTED(
        r, [queue, keys.rq_job(jid), keys.node_running("n1"), keys.ACTIVE, queue + ":taken", keys.node_held("n1"),
            keys.rq_registry("running", "red4"), counter],
        [jid, "", "n1.w.0", "1", claim.marker("n1.w.0"), str(2**31)])
    assert moved == [1, b"WRONGTYPE Operation against a key holding the wrong kind of value"]
    assert [i.decode() for i in r.lrange(queue, 0, -1)] == [jid] and r.hget(keys.rq_job(jid), "status") == b"queued"
    assert not r.hexists(keys.ACTIVE, jid) and not r.hexists(keys.node_running("n1"), jid)
    assert r.type(counter) == b"list"
