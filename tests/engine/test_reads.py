"""The console's bounded reads: node states without inventories, a state's page across queues."""

from __future__ import annotations

from gridcore import keys
from gridcore.client import Grid
from gridcore.models import JobSpec, JobState, NodeState
from gridcore.records import RunningEntry
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
    r.zadd(keys.NODES, {"gone": grid.broker_time()})  # a heartbeat but no hash
    running(r, "up", j2=1, j1=0)
    nodes = grid.nodes()
    assert grid.node_states() == {n.name: n.state for n in nodes}
    assert grid.node_states() == {"down": NodeState.DOWN, "stale": NodeState.STALE, "slow": NodeState.UP,
                                  "up": NodeState.UP, "draining": NodeState.DRAINING, "gone": NodeState.UP}


def test_nodes_reads_every_field_a_node_shows(r, grid):
    beat(r, grid, "up", 0, draining=True, drain_reason="maintenance")
    running(r, "up", j2=1, j1=0)
    (node,) = grid.nodes()
    h = {k.decode(): v.decode() for k, v in r.hgetall(keys.node("up")).items()}
    assert node == Grid._node_from("up", h, ("j1", "j2"), node.heartbeat_age)
    assert node.gpus[0].utilization == 40 and node.drain_reason == "maintenance" and node.slots_busy == 2


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
