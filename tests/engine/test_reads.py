"""The console's bounded reads: node states without inventories, a state's page across queues."""

from __future__ import annotations

from gridcore import keys
from gridcore.client import Grid
from gridcore.models import JobSpec, JobState, NodeState, Resources
from gridcore.placement import Committed
from gridcore.records import HeldEntry, RunningEntry
from tests.support.records import node_record, put_node


def beat(r, grid: Grid, name: str, age: float, **fields) -> None:
    """A node's hash as its agent writes it (bookkeeping fields too), heartbeating `age` seconds ago."""
    put_node(r, name, grid.broker_time() - age, node_record(**fields))


def running(r, node: str, **slots: int) -> None:
    """Jobs running on `node`'s slots, as its running hash holds them."""
    r.hset(keys.node_running(node), mapping={j: RunningEntry("started", slot=s).encode() for j, s in slots.items()})


def test_node_states_are_the_states_nodes_gives(r, grid):
    beat(r, grid, "up", 0)
    beat(r, grid, "draining", 0, draining=True, drain_reason="maintenance")
    beat(r, grid, "stale", 10)
    beat(r, grid, "down", 100)
    beat(r, grid, "slow", 10, hb_interval=5.0)  # its own interval: 10 s is not stale for it
    r.zadd(keys.NODES, {"gone": grid.broker_time()})  # a name in the registry, no heartbeat of its own
    running(r, "up", j2=1, j1=0)
    nodes = grid.nodes()
    assert grid.node_states() == {n.name: n.state for n in nodes}
    assert grid.node_states() == {"down": NodeState.DOWN, "stale": NodeState.STALE, "slow": NodeState.UP,
                                  "up": NodeState.UP, "draining": NodeState.DRAINING, "gone": NodeState.DOWN}


def test_nodes_reads_every_field_a_node_shows(r, grid):
    beat(r, grid, "up", 0, draining=True, drain_reason="maintenance")
    running(r, "up", j2=1, j1=0)
    (node,) = grid.nodes()
    assert node.state is NodeState.DRAINING and node.draining and node.drain_reason == "maintenance"
    assert (node.cpus, node.memory_total, node.memory_used, node.labels) == (8, 2**34, 2**30, ("big",))
    assert node.load == (0.5, 0.4, 0.3) and node.slots_total == 4 and node.slots_busy == 2
    assert node.running == ("j1", "j2") and node.queues == ("default",) and node.hostname == "h"
    assert node.agent_pid == 123 and node.started_at == 1.0 and not node.problems
    (gpu,) = node.gpus
    assert (gpu.index, gpu.name, gpu.memory_total, gpu.utilization) == (0, "Test GPU", 2**33, 40)


def fail(r, jid: str, queue: str, score: float) -> None:
    """Move a queued job to its queue's failed registry, as a failure would."""
    r.lrem(keys.rq_queue(queue), 0, jid)
    r.hset(keys.rq_job(jid), "status", "failed")
    r.zadd(keys.rq_registry("failed", queue), {jid: score})


def old_page(grid: Grid, state: JobState, queues, offset: int, limit: int):
    """The page as `Grid.list` read it before: every candidate in full, sorted by submit time."""
    ids = []
    for q in queues:
        ids += [m.decode().split(":")[0]
                for m in grid.redis.zrevrange(keys.rq_registry(state.value, q), 0, offset + limit - 1)]
    jobs = grid.get_many(ids)
    jobs.sort(key=lambda j: j.enqueued_at or 0, reverse=True)
    return [j.id for j in jobs[offset : offset + limit]]


def calls(r) -> dict[str, int]:
    """Commands served so far, by name (our own test broker: no other client counts)."""
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def test_failed_page_across_queues_reads_one_page(r, grid):
    ids = [grid.submit(JobSpec(command="false", name=f"job {i}", queue=("default", "gpu")[i % 3 == 0]))
           for i in range(40)]
    for i, jid in enumerate(ids):
        # Failure order is not submit order: the registries' scores must not decide the page.
        fail(r, jid, ("default", "gpu")[i % 3 == 0], 1000 + (i * 7) % 40)
    before = calls(r)
    grid.list(state=JobState.FAILED, limit=10)
    used = {k: v - before.get(k, 0) for k, v in calls(r).items()}
    assert used["hmget"] == 10 and used["get"] == 10  # only the page's records, not 10 per queue
    r.delete(keys.rq_job(ids[-1]), keys.rq_job(ids[20]))  # expired records still in a registry
    queues = grid.queue_names()
    for offset, limit in ((0, 10), (0, 50), (10, 10), (25, 10), (35, 10)):
        jobs, total = grid.list(state=JobState.FAILED, offset=offset, limit=limit)
        assert [j.id for j in jobs] == old_page(grid, JobState.FAILED, queues, offset, limit), (offset, limit)
        assert total == 40 and all(j.state is JobState.FAILED for j in jobs)
        assert [j.enqueued_at for j in jobs] == sorted((j.enqueued_at for j in jobs), reverse=True)
    for offset in (0, 5):
        gpu, total = grid.list(state=JobState.FAILED, queue="gpu", offset=offset, limit=5)
        assert [j.id for j in gpu] == old_page(grid, JobState.FAILED, ["gpu"], offset, 5) and total == 14


def test_console_reads_nodes_in_full_on_the_nodes_view_only(r, grid):
    from console.poller import Poller, Request

    beat(r, grid, "up", 0)
    beat(r, grid, "down", 100)
    poller = Poller(app=None, grid=grid, request=None)
    jobs = poller.read(Request(view="jobs"))
    assert jobs.nodes is None and jobs.node_states == {"down": NodeState.DOWN, "up": NodeState.UP}
    nodes = poller.read(Request(view="nodes"))
    assert [n.name for n in nodes.nodes] == ["down", "up"] and nodes.nodes[1].gpus[0].name == "Test GPU"
    assert nodes.node_states == {"down": NodeState.DOWN, "up": NodeState.UP}


def test_a_queue_pages_through_its_own_jobs_behind_newer_jobs_of_other_queues(grid):
    small = [grid.submit(JobSpec(command="true", queue="small")) for _ in range(4)]
    small.append(grid.submit(JobSpec(command="true", queue="small", resources=Resources(cpus=2))))  # placed
    grid.submit_many([JobSpec(command="true") for _ in range(60)])
    pages = [grid.list(queue="small", offset=offset, limit=2) for offset in (0, 2, 4, 6)]
    assert [j.id for jobs, _ in pages for j in jobs] == small[::-1]
    assert [total for _, total in pages] == [5, 5, 5, 5]


def test_a_waiting_job_names_the_jobs_it_waits_on(grid):
    parent = grid.submit(JobSpec(command="true"))  # no agent: it stays queued
    child = grid.submit(JobSpec(command="true", after=(parent,)))
    job = grid.get(child)
    assert job.state is JobState.WAITING and job.waiting_on == (parent,)
    assert grid.why(child) == [f"waiting for {parent}"]


def placed(r, grid, node: str) -> str:
    """A job the placement pass put on `node` and that waits there for a slot."""
    from gridcore.records import HeldEntry, JobMeta, Placement

    jid = grid.submit(JobSpec(command="true", resources=Resources(cpus=2)))
    meta = JobMeta.decode(r.hget(keys.rq_job(jid), "meta"), "meta")
    r.hset(keys.rq_job(jid), "meta", meta.model_copy(update={"placement": Placement(node=node)}).encode())
    r.hset(keys.node_held(node), jid, HeldEntry(cpus=2).encode())
    r.hset(keys.WHY, jid, "n1: all 1 slot busy")
    return jid


def test_canceling_a_placed_job_gives_back_what_it_held(r, grid):
    jid = placed(r, grid, "n1")
    assert grid.committed(grid.nodes()) == {} and grid.cancel(jid) is JobState.CANCELED
    assert not r.hexists(keys.node_held("n1"), jid) and not r.hexists(keys.WHY, jid)
    assert grid.get(jid).reason == "canceled"


def test_canceling_a_placed_job_with_unreadable_meta_gives_back_its_hold_everywhere(r, grid):
    beat(r, grid, "n1", 0)
    beat(r, grid, "n2", 0)
    jid = placed(r, grid, "n2")
    r.hset(keys.rq_job(jid), "meta", b"{garbage")
    assert grid.committed()["n2"].cpus == 2
    assert grid.cancel(jid) is JobState.CANCELED
    assert not r.hexists(keys.node_held("n2"), jid) and grid.committed()["n2"].cpus == 0


def test_a_down_nodes_own_keys_are_not_believed(r, grid):
    """Recovery leaves a dead node's keys alone (no agent may write them): what they still say it
    runs or holds is neither shown nor counted, until the node is back and drops it itself."""
    beat(r, grid, "down", 100)
    beat(r, grid, "up", 0)
    for name in ("down", "up"):
        running(r, name, j1=0)
        r.hset(keys.node_held(name), "j1", HeldEntry(cpus=2, memory=2**30).encode())
    nodes = {n.name: n for n in grid.nodes()}
    assert nodes["down"].running == () and nodes["down"].slots_busy == 0
    assert nodes["up"].running == ("j1",) and nodes["up"].slots_busy == 1
    committed = grid.committed()
    assert committed["down"] == Committed() and committed["up"].cpus == 2


def test_an_agent_of_an_earlier_version_is_up_by_its_registry_score(r, grid):
    """Mid rolling upgrade, an older agent heartbeats only into the registry's score: believed for
    a node whose own hash an agent wrote (it has an agent_id) and that has no `beat` of its own."""
    now = grid.broker_time()
    fields = node_record().encode() | {"draining": "0"}
    del fields["beat"]
    r.hset(keys.node("old"), mapping=fields)
    r.zadd(keys.NODES, {"old": now, "name-only": now})
    assert grid.node_states() == {"old": NodeState.UP, "name-only": NodeState.DOWN}
    assert {n.name: n.state for n in grid.nodes()} == {"old": NodeState.UP, "name-only": NodeState.DOWN}
