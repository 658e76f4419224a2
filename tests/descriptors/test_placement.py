"""gridcore.placement on constructed nodes: fits now, later, never, and the words for why."""

import pytest

from gridcore.models import GpuInfo, JobSpec, Node, NodeState, Resources
from gridcore.placement import Committed, Fit, NodeVerdict, choose_gpus, choose_node, explain, never_fits, verdict


@pytest.fixture(autouse=True)
def _lasting_hints(monkeypatch):
    """A slot's hint lives HINT_TTL (2 s) from the pass that made it: on a loaded machine a job
    between two ends may take that long, and the hint these tests follow would be gone."""
    monkeypatch.setattr("agent.negotiator.HINT_TTL", 60.0)


GB = 10**9


def node(name, *, state=NodeState.UP, cpus=8, mem=32, gpus=0, labels=(), slots=4, busy=0, **kw):
    return Node(name=name, state=state, heartbeat_age=1.0, cpus=cpus, memory_total=mem * GB,
                gpus=tuple(GpuInfo(index=i, name="A100") for i in range(gpus)), labels=tuple(labels),
                slots_total=slots, slots_busy=busy, running=tuple(f"j{i}" for i in range(busy)), **kw)


GRID = [
    node("node-a", gpus=2, labels=("a100", "cuda")),
    node("node-b", mem=32),
    node("node-c", state=NodeState.DRAINING, draining=True),
    node("node-d", state=NodeState.DOWN),
    node("node-e", labels=("cuda",)),
    node("node-f", gpus=2),
]


def by_node(verdicts):
    return {v.node: v for v in verdicts}


def test_plain_words_per_node():
    res = Resources(cpus=2, gpus=1, memory=24 * GB, labels=("a100",))
    committed = {"node-a": Committed(cpus=2, memory=8 * GB, gpus=frozenset({1}), jobs=1)}
    v = by_node(explain(res, GRID, committed))
    assert v["node-a"] == NodeVerdict("node-a", Fit.NOW, (), (0,))
    assert str(v["node-b"]) == 'node-b: lacks label "a100"; needs 1 GPU, has 0'
    assert str(v["node-e"]) == 'node-e: lacks label "a100"; needs 1 GPU, has 0'
    assert v["node-f"].fit is Fit.NEVER


def test_memory_and_state_reasons():
    res = Resources(memory=24 * GB)
    committed = {"node-b": Committed(memory=22 * GB, cpus=1, jobs=1)}
    v = by_node(explain(res, GRID, committed))
    assert str(v["node-b"]) == "node-b: needs 24GB free, has 10GB"
    assert v["node-b"].fit is Fit.LATER
    assert str(v["node-c"]) == "node-c: draining"
    assert str(v["node-d"]) == "node-d: down"
    assert v["node-c"].fit is v["node-d"].fit is Fit.LATER
    assert v["node-a"].fit is Fit.NOW


def test_gpu_count_reasons():
    res = Resources(gpus=3)
    assert str(verdict(res, GRID[5])) == "node-f: needs 3 GPUs, has 2"
    two = Resources(gpus=2)
    held = Committed(gpus=frozenset({0}), jobs=1)
    assert str(verdict(two, GRID[5], held)) == "node-f: needs 2 GPUs free, has 1"


def test_cpu_slot_and_drain_reason_words():
    n = node("node-g", cpus=4, slots=2, busy=2, state=NodeState.DRAINING, draining=True, drain_reason="new disk")
    v = verdict(Resources(cpus=3), n, Committed(cpus=2))
    assert v.fit is Fit.LATER
    assert v.reasons == ("draining (new disk)", "all 2 slots busy", "needs 3 CPUs free, has 2")
    assert str(verdict(Resources(cpus=6), n)) == "node-g: needs 6 CPUs, has 4"
    stale = node("node-h", state=NodeState.STALE)
    assert str(verdict(Resources(), stale)) == "node-h: stale (no heartbeat for 1s)"


def test_fractional_cpus_fill_a_node_exactly():
    n = node("node-x", cpus=1)
    assert verdict(Resources(cpus=0.3), n, Committed(cpus=0.1 + 0.6)).fit is Fit.NOW


def test_pinned_and_queue():
    res = Resources(node="node-b")
    v = by_node(explain(res, GRID, {}))
    assert v["node-b"].fit is Fit.NOW
    assert str(v["node-a"]) == 'node-a: the job is pinned to "node-b"'
    q = node("node-q", queues=("gpu",))
    assert str(verdict(Resources(), q, queue="default")) == 'node-q: does not serve queue "default"'
    assert verdict(Resources(), q, queue="gpu").fit is Fit.NOW


def test_unknown_inventory_is_not_a_refusal():
    n = node("node-z", cpus=0, mem=0)
    assert verdict(Resources(cpus=64, memory=10**12), n).fit is Fit.NOW


def test_explain_orders_fitting_nodes_first():
    fits = [v.fit for v in explain(Resources(), GRID, {})]
    assert fits == sorted(fits, key=[Fit.NOW, Fit.LATER, Fit.NEVER].index)


@pytest.mark.parametrize(("res", "reason"), [
    (Resources(gpus=3), "needs 3 GPUs; the largest node has 2"),
    (Resources(labels=("h100",)), 'no node has label "h100"'),
    (Resources(labels=("h100", "ib", "cuda")), 'no node has labels "h100", "ib"'),
    (Resources(node="node-z"), 'no node named "node-z" on this grid'),
    (Resources(node="node-b", gpus=1), 'node "node-b" can never run it: needs 1 GPU, has 0'),
    (Resources(cpus=9), "needs 9 CPUs; the largest node has 8"),
    (Resources(memory=64 * GB), "needs 64GB memory; the largest node has 32GB"),
])
def test_never_fits(res, reason):
    assert never_fits(res, GRID) == reason


def test_never_fits_combination_lists_each_node():
    grid = [node("node-a", gpus=2), node("node-b", labels=("cuda",))]
    assert never_fits(Resources(gpus=1, labels=("cuda",)), grid) == (
        'no node has all of it: node-a: lacks label "cuda"; node-b: needs 1 GPU, has 0')


def test_could_fit_is_not_refused():
    assert never_fits(Resources(gpus=2, labels=("a100",)), GRID) is None
    assert never_fits(Resources(node="node-d"), GRID) is None  # down, but it may come back
    assert never_fits(Resources(gpus=8), []) is None  # no node has joined yet


def test_choose_gpus():
    gpus = [GpuInfo(index=i) for i in (3, 0, 1, 2)]
    assert choose_gpus(0, gpus, set()) == []
    assert choose_gpus(1, gpus, {0}) == [1]
    assert choose_gpus(2, gpus, {0, 2}) == [1, 3]
    assert choose_gpus(3, gpus, {0, 2}) is None
    assert choose_gpus(2, [0, 1], {1}) is None


def test_two_one_gpu_jobs_get_different_gpus():
    n = node("node-a", gpus=2)
    held = {}
    taken = []
    for _ in range(2):
        v = choose_node(Resources(gpus=1), [n], held)
        taken.extend(v.gpus)
        held["node-a"] = held.get("node-a", Committed()).plus(Resources(gpus=1), v.gpus)
    assert sorted(taken) == [0, 1]
    assert choose_node(Resources(gpus=1), [n], held) is None


def test_choose_node_keeps_gpu_nodes_for_gpu_jobs():
    grid = [node("node-a", gpus=2), node("node-b")]
    assert choose_node(Resources(), grid, {}).node == "node-b"
    assert choose_node(Resources(gpus=1), grid, {}).node == "node-a"


def test_committed_plus():
    c = Committed(cpus=1, memory=GB, gpus=frozenset({0}), jobs=1).plus(Resources(cpus=2, memory=GB), [1])
    assert c == Committed(cpus=3, memory=2 * GB, gpus=frozenset({0, 1}), jobs=2)


# ---- placing for real: racing placers on a real broker (gridcore/placing.py) --------------------

RACERS = 6


def _grid_nodes(r, names, *, cpus, memory, gpus):
    """Fake nodes, heartbeating now, as their agents publish them (big slot counts: only the
    declared cpus, memory and GPUs can bound what is placed)."""
    from gridcore.records import GpuRecord, Inventory
    from tests.support.records import node_record, put_node

    sec, usec = r.time()
    inv = Inventory(cpus=cpus, memory_total=memory, gpus=[GpuRecord(index=i, name="G") for i in range(gpus)])
    for n in names:
        put_node(r, n, sec + usec / 1e6, node_record(inventory=inv, slots=64, queues=()))


def _where(r, names):
    """job id -> where it is now: a node's queue, or 'pending'."""
    from gridcore import keys

    at = {}
    for n in names:
        for jid in r.lrange(keys.rq_queue(keys.node_queue(n)), 0, -1):
            assert jid.decode() not in at, f"job {jid} placed twice"
            at[jid.decode()] = n
    for jid in r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1):
        assert jid.decode() not in at, f"job {jid} both placed and pending"
        at[jid.decode()] = "pending"
    return at


def _check_never_overcommitted(r, names, *, cpus, memory, gpus, sweeps):
    from gridcore import keys
    from gridcore.reservations import Reservations

    at = _where(r, names)
    held = Reservations(r).held(list(names))
    for n in names:
        entries = held[n]
        assert sum(e.cpus for e in entries.values()) <= cpus + 1e-9, n
        assert sum(e.memory for e in entries.values()) <= memory, n
        used = [g for e in entries.values() for g in e.gpus]
        assert len(used) == len(set(used)) and set(used) <= set(range(gpus)), (n, used)
        # Every job placed here holds its resources here, and nothing else holds any.
        assert set(entries) == {j for j, where in at.items() if where == n}, n
    for gid, (mp, members) in sweeps.items():
        slots = {s.decode() for s in r.smembers(keys.group_slots(gid))}
        assert len(slots) <= mp, (gid, slots)
        assert slots == {j for j in members if at.get(j, "pending") != "pending"}
    return at


def _finish(r, at, k, sweeps, rng):
    """`k` placed jobs end as an attempt ends: out of the node's queue, what they held given back."""
    from gridcore import keys
    from gridcore.reservations import release

    group_of = {j: g for g, (_, members) in sweeps.items() for j in members}
    done = rng.sample(sorted(j for j, w in at.items() if w != "pending"), k)
    with r.pipeline() as pipe:
        for j in done:
            pipe.lrem(keys.rq_queue(keys.node_queue(at[j])), 1, j)
            release(pipe, j, at[j], group_of.get(j))
        pipe.execute()
    return done


def test_racing_submitters_and_placers_never_overcommit_nor_exceed_max_parallel(grid, broker, r):
    """Clients placing at submit and agents' passes, all at once, on separate connections:
    no node ever holds more than it declared, no GPU is given twice, no sweep runs above its
    max_parallel, no job is placed twice, and as jobs end every waiting job gets placed."""
    import random
    import threading
    import uuid

    from agent.negotiator import Negotiator
    from gridcore.client import Grid
    from gridcore.models import JobSpec
    from gridcore.placing import Placer

    names, caps = ["node-a", "node-b"], dict(cpus=4, memory=8 * GB, gpus=2)
    _grid_nodes(r, names, **caps)
    rng = random.Random(17)
    kinds = [Resources(cpus=2), Resources(memory=3 * GB), Resources(gpus=1), Resources(cpus=1.5, memory=GB),
             Resources(labels=()), Resources(cpus=1, gpus=1)]
    batches, sweeps = [], {}
    for b in range(RACERS):
        gid = uuid.uuid4().hex
        specs = [JobSpec(command="true", resources=kinds[(b + i) % len(kinds)], group=gid,
                         params={"_cell": i}, priority=rng.randrange(3)) for i in range(8)]
        batches.append((specs, gid, 1 + b % 3))
    ids: list[str] = []
    lock, start = threading.Lock(), threading.Barrier(2 * RACERS)
    errors: list[BaseException] = []

    def submitter(specs, gid, mp):
        try:
            g = Grid(broker.client(), grid.settings)
            start.wait()
            got = g.submit_many(specs, groups={gid: {"name": gid, "max_parallel": mp}})
            with lock:
                ids.extend(got)
                sweeps[gid] = (mp, got)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    def placer(i):
        try:
            conn = broker.client()
            # One negotiator per racer for all its passes: what it remembers between passes (the
            # records read, the unfit head) is raced too; racer 3 passes as an ending slot does
            # (no pass lock, alongside the agents', the head of the queue only). An agent's pass
            # places onto its own node only.
            neg = Negotiator(conn, owner=f"agent{i}", node=names[i // 2 % 2], taker=i == 3) if i % 2 else None
            start.wait()
            for _ in range(15):
                if i == 3:
                    neg.take_next() or neg.run_once(full=False, lock=False)  # as a slot at its job's end
                elif i % 2:
                    neg.run_once(full=bool(_ % 2))
                else:
                    Placer(conn).place_ids([j.decode() for j in conn.lrange("rq:queue:grid.pending", 0, -1)])
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    threads = [threading.Thread(target=submitter, args=b) for b in batches]
    threads += [threading.Thread(target=placer, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(ids) == 8 * RACERS
    at = _check_never_overcommitted(r, names, **caps, sweeps=sweeps)
    assert any(w != "pending" for w in at.values())
    ended: set[str] = set()
    slot, agent = Negotiator(broker.client(), "slot"), Negotiator(broker.client(), "agent")  # passes that remember
    taker = Negotiator(broker.client(), "node-b.x.0", node="node-b", taker=True)  # an ending slot's quick pass
    for _ in range(40):  # jobs end a few at a time while placers race again, until none waits
        if not [j for j, w in at.items() if w != "pending"]:
            break
        ended.update(_finish(r, at, min(3, len([w for w in at.values() if w != "pending"])), sweeps, rng))
        racers = [threading.Thread(target=lambda: Placer(broker.client()).place_ids(
            [j.decode() for j in r.lrange("rq:queue:grid.pending", 0, -1)])) for _ in range(RACERS - 2)]
        racers += [threading.Thread(target=slot.run_once, kwargs={"full": False, "lock": False}),
                   threading.Thread(target=lambda: taker.take_next() or taker.run_once(full=False, lock=False)),
                   threading.Thread(target=agent.run_once, kwargs={"full": False, "wait": 1.0})]
        for t in racers:
            t.start()
        for t in racers:
            t.join(60)
        at = _check_never_overcommitted(r, names, **caps, sweeps=sweeps)
    assert ended | set(at) == set(ids) and not [w for w in at.values() if w == "pending"]


def test_a_release_wakes_its_nodes_loop_and_a_freed_throttle_slot_wakes_every_loop(r):
    """Resources given back on a node wake that node's agent (what came back fits there); a
    sweep's throttle slot wakes every agent (its next cell may go anywhere); a spoiled wake key
    fails the wake alone and stops no loop."""
    import redis

    from agent.negotiator import Negotiator
    from gridcore import keys
    from gridcore.reservations import release

    def released(*args):
        with r.pipeline() as pipe:
            release(pipe, *args)
            pipe.execute()

    a, b = Negotiator(r, "a", node="node-a"), Negotiator(r, "b", node="node-b")
    at_a, at_b = a._tail(), b._tail()
    released("j1", "node-a")
    at_a, woke_a = a.wait_wake(at_a, 0.05)
    at_b, woke_b = b.wait_wake(at_b, 0.05)
    assert woke_a and not woke_b
    released("j2", "node-b", "sweep")
    released("j3")  # nothing held on a node, no sweep slot: nothing given back, nobody woken
    assert a.wait_wake(at_a, 0.05)[1] and b.wait_wake(at_b, 0.05)[1]
    assert r.xlen(keys.PLACE_WAKES) == 2
    for spoil in ({"node": "x" * 1000}, "spoiled"):  # an entry no later one can follow; another type
        r.delete(keys.PLACE_WAKES)
        if isinstance(spoil, dict):
            r.xadd(keys.PLACE_WAKES, spoil, id="18446744073709551615-18446744073709551615")
        else:
            r.set(keys.PLACE_WAKES, spoil)
        r.hset(keys.node_held("node-a"), "j4", '{"cpus": 1}')
        with r.pipeline() as pipe:  # the release's own writes still apply (as in MULTI/EXEC)
            release(pipe, "j4", "node-a", "sweep")
            assert isinstance(pipe.execute(raise_on_error=False)[2], redis.ResponseError)
        assert a.wait_wake("0-0", 0.05)[1] is False  # and no loop stops
    assert r.hlen(keys.node_held("node-a")) == 0


def test_a_job_whose_record_changed_since_it_was_read_is_not_placed(grid, r):
    """A placer decides on the meta it read; if the job left and came back meanwhile (a lost
    job requeued, its meta rewritten), that decision is void: nothing is held, nothing moves."""
    import json

    from gridcore import keys
    from gridcore.models import JobSpec
    from gridcore.placing import Placer

    jid = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))  # no node yet: it waits
    _grid_nodes(r, ["node-a"], cpus=4, memory=8 * GB, gpus=0)
    placer = Placer(r)
    [read] = placer.read([jid])
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    r.hset(keys.rq_job(jid), "meta", json.dumps(meta | {"lost": 1}))
    out = placer.place([read])
    assert out.changed == [jid] and not out.placed
    assert not r.hlen(keys.node_held("node-a"))
    assert _where(r, ["node-a"]) == {jid: "pending"}
    assert placer.place_ids([jid]).placed == {jid: "node-a"}  # read again, it is placed


def test_the_periodic_pass_runs_even_when_woken_at_every_turn(grid, broker, r):
    """On a busy grid job ends wake the placement loop all the time; its periodic pass (every
    reason written, the whole window looked at) must still come round."""
    import threading

    from agent.negotiator import Negotiator
    from gridcore import keys
    from gridcore.models import JobSpec
    from gridcore.reservations import Reservations, wake
    from tests.support.wait import eventually

    _grid_nodes(r, ["node-a"], cpus=4, memory=8 * GB, gpus=2)
    assert Reservations(r).reserve("node-a", "holder", Resources(gpus=1), [0], 4, 8 * GB)
    stop = threading.Event()
    loop = threading.Thread(target=Negotiator(broker.client(), "agent").loop, args=(stop, 0.3))

    def wakes():
        while not stop.is_set():
            with r.pipeline() as pipe:
                wake(pipe, anywhere=True)
                pipe.execute()
            stop.wait(0.01)

    waker = threading.Thread(target=wakes)
    loop.start()
    waker.start()
    try:
        jid = grid.submit(JobSpec(command="true", resources=Resources(gpus=2)))  # waits: one GPU is free
        eventually(lambda: r.hget(keys.WHY, jid), 10, 0.05, "the periodic pass to say why the job waits")
    finally:
        stop.set()
        waker.join(10)
        loop.join(10)
    assert b"needs 2 GPUs free, has 1" in r.hget(keys.WHY, jid)


def test_a_woken_pass_places_a_job_that_fits_behind_many_that_fit_nowhere(grid, r):
    """A woken pass looks at a small window of the waiting queue; a job that fits must still be
    placed at once when 150 jobs ahead of it fit nowhere, and the next passes start past that
    unfit head (unless something in it fits now: then from the top, priority order kept, and the
    head stays known for the passes after)."""
    from agent.negotiator import EVENT_WINDOW, Negotiator
    from gridcore import keys
    from gridcore.models import JobSpec
    from gridcore.reservations import Reservations, release

    blocked = grid.submit_many([JobSpec(command="true", resources=Resources(gpus=2)) for _ in range(150)])
    fits = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))
    assert len(blocked) > EVENT_WINDOW
    _grid_nodes(r, ["node-a"], cpus=64, memory=8 * GB, gpus=2)
    assert Reservations(r).reserve("node-a", "holder", Resources(gpus=1), [0], 64, 8 * GB)
    neg = Negotiator(r, "agent")
    assert neg.run_once(full=False) == 1
    assert _where(r, ["node-a"])[fits] == "node-a"
    assert neg._skip is not None and neg._skip.count == 150 and neg._skip.last == blocked[-1]
    later = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))
    r.lrem(keys.rq_queue(keys.node_queue("node-a")), 1, later)  # as if placed elsewhere: put back to wait
    r.hdel(keys.node_held("node-a"), later)
    r.rpush(keys.rq_queue(keys.PENDING_QUEUE), later)
    assert neg.run_once(full=False) == 1 and _where(r, ["node-a"])[later] == "node-a"
    with r.pipeline() as pipe:  # the GPU comes back: the head's first job fits now, and goes first
        release(pipe, "holder", "node-a")
        pipe.execute()
    assert neg.run_once(full=False) == 1
    at = _where(r, ["node-a"])
    assert at[blocked[0]] == "node-a" and all(at[j] == "pending" for j in blocked[1:])
    # The head stays known (a job left it): with its shape unfit again, the next pass starts past it.
    assert neg._skip is not None and neg._skip.last == blocked[-1]
    read_from: list[int] = []
    ids = neg._ids
    neg._ids = lambda offset, full: read_from.append(offset) or ids(offset, full)
    assert neg.run_once(full=False) == 0 and neg._skip.count == 149 and neg._skip.last == blocked[-1]
    assert read_from == [149]


def test_a_pass_looks_from_the_top_when_the_queue_moved_under_its_unfit_head(grid, r):
    """The remembered unfit head is checked by its last job: a job that goes back to the top of
    the queue (a lost job, a higher priority) shifts it, and the next pass starts from the top."""
    from agent.negotiator import Negotiator
    from gridcore import keys
    from gridcore.models import JobSpec

    blocked = grid.submit_many([JobSpec(command="true", resources=Resources(gpus=4)) for _ in range(120)])
    _grid_nodes(r, ["node-a"], cpus=64, memory=8 * GB, gpus=2)
    _grid_nodes(r, ["node-b"], cpus=64, memory=8 * GB, gpus=4)
    r.hset(keys.node("node-b"), "draining", "1")
    neg = Negotiator(r, "agent")
    assert neg.run_once(full=False) == 0 and neg._skip.count == 120 and neg._skip.last == blocked[-1]
    assert neg.run_once(full=False) == 0 and neg._skip.count == 120  # started past it: still unfit
    fits = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))
    r.lrem(keys.rq_queue(keys.node_queue("node-a")), 1, fits)  # placed at submit: put back, at the top
    r.hdel(keys.node_held("node-a"), fits)
    r.lpush(keys.rq_queue(keys.PENDING_QUEUE), fits)
    assert neg.run_once(full=False) == 1 and _where(r, ["node-a", "node-b"])[fits] == "node-a"


def test_a_pass_still_skips_the_unfit_head_after_jobs_left_it(grid, r):
    """Jobs that leave the remembered unfit head (a sweep's cells as other nodes take them,
    cancels) move its last job up, not down: the next pass starts past what is left of it
    instead of reading the whole queue from the top again (a busy sweep's head moves at every
    cell, and every woken pass read all its cells); a job that fits behind it is placed."""
    from agent.negotiator import Negotiator
    from gridcore import keys
    from gridcore.models import JobSpec

    blocked = grid.submit_many([JobSpec(command="true", resources=Resources(gpus=4)) for _ in range(120)])
    _grid_nodes(r, ["node-a"], cpus=64, memory=8 * GB, gpus=2)
    neg = Negotiator(r, "agent")
    assert neg.run_once(full=False) == 0 and neg._skip.count == 120
    for j in blocked[:5]:  # taken out of the head meanwhile
        r.lrem(keys.rq_queue(keys.PENDING_QUEUE), 1, j)
    fits = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))
    r.lrem(keys.rq_queue(keys.node_queue("node-a")), 1, fits)  # placed at submit: put back, behind the head
    r.hdel(keys.node_held("node-a"), fits)
    r.rpush(keys.rq_queue(keys.PENDING_QUEUE), fits)
    read_from: list[int] = []
    ids = neg._ids
    neg._ids = lambda offset, full: read_from.append(offset) or ids(offset, full)
    assert neg.run_once(full=False) == 1 and _where(r, ["node-a"])[fits] == "node-a"
    assert read_from == [115] and neg._skip.count == 115 and neg._skip.last == blocked[-1]


def test_a_pass_from_the_top_jumps_past_the_known_head_once_it_finds_its_shapes_unfit(grid, r):
    """A sweep's cells fill the head of the queue. A pass reads from the top when the sweep may
    take a cell (its shape fits as read); if it finds the cells unfit after all (another placer
    took the sweep's free slot), it jumps past the cells the last passes found, to the job that
    fits behind them, instead of reading every cell."""
    from agent.negotiator import EVENT_WINDOW, Negotiator
    from gridcore import keys
    from gridcore.models import JobSpec

    gid = "sweep-head"
    cells = grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20), group=gid,
                                      params={"i": i}) for i in range(150)], groups={gid: {"max_parallel": 1}})
    _grid_nodes(r, ["node-a"], cpus=64, memory=8 * GB, gpus=0)
    r.sadd(keys.group_slots(gid), "running-elsewhere")
    neg = Negotiator(r, "agent", node="node-a")
    assert neg.run_once(full=False) == 0 and neg._skip.count == 150 and neg._skip.last == cells[-1]
    fits = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))
    r.lrem(keys.rq_queue(keys.node_queue("node-a")), 1, fits)  # placed at submit: put back, behind the cells
    r.hdel(keys.node_held("node-a"), fits)
    r.rpush(keys.rq_queue(keys.PENDING_QUEUE), fits)
    r.srem(keys.group_slots(gid), "running-elsewhere")  # the sweep may take a cell ...
    survey = neg._survey("token", False, False)
    assert survey[2] == 0  # ... so the pass reads from the top
    r.sadd(keys.group_slots(gid), "taken-meanwhile")  # ... but another placer takes that slot first
    read_from: list[int] = []
    ids = neg._ids
    neg._ids = lambda offset, full: read_from.append(offset) or ids(offset, full)
    assert neg._pass(False, *survey) == 1
    assert _where(r, ["node-a"])[fits] == "node-a" and all(_where(r, ["node-a"])[c] == "pending" for c in cells)
    assert read_from == [150] and 150 > EVENT_WINDOW  # not 100, 200, ...: the cells' records not read again


def test_jobs_of_a_shape_no_node_has_room_for_are_matched_once_per_pass(grid, r, monkeypatch):
    """A pass over a sweep's cells on a full grid matches the cells' shape against the nodes
    once, not once per cell (what is committed only grows in a pass); each cell still gets its
    reason when reasons are asked for."""
    from gridcore import placing
    from gridcore.models import JobSpec
    from gridcore.placing import Placer

    cells = grid.submit_many([JobSpec(command="true", resources=Resources(cpus=4), group="full-grid",
                                      params={"i": i}) for i in range(30)])
    _grid_nodes(r, ["node-a", "node-b"], cpus=4, memory=8 * GB, gpus=0)
    from gridcore.reservations import Reservations
    for n in ("node-a", "node-b"):
        assert Reservations(r).reserve(n, f"holder-{n}", Resources(cpus=4), [], 4, 8 * GB)
    calls = []
    real = placing.choose_node
    monkeypatch.setattr(placing, "choose_node", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = Placer(r)
    out = p.place([w for w in p.read(cells)])
    assert not out.placed and len(calls) == 1
    assert set(out.whys) == set(cells) and len(set(out.whys.values())) == 1
    assert "node-a" in out.whys[cells[0]] and "node-b" in out.whys[cells[0]]
    calls.clear()
    out = p.place([w for w in p.read(cells)], explain_rest=cells[:2], onto="node-a")
    assert not out.placed and set(out.whys) == set(cells[:2])


def test_a_pass_reads_the_grid_in_one_round_trip_whatever_the_order_of_the_heartbeats(grid, r):
    """The node registry is ordered by heartbeat time: nodes heartbeating in another order than
    at the last pass are still the same grid, read with the pass's one round trip (not again,
    key by key), each node with its own heartbeat."""
    from gridcore import keys
    from gridcore.placing import ask_view, take_view

    _grid_nodes(r, ["node-a", "node-b"], cpus=4, memory=8 * GB, gpus=0)
    sec, _ = r.time()
    r.zadd(keys.NODES, {"node-a": sec - 1, "node-b": sec - 5})  # b heartbeat first this time
    with r.pipeline(transaction=False) as pipe:
        ask_view(pipe, ["node-a", "node-b"], [])
        view = take_view(pipe.execute(raise_on_error=False), ["node-a", "node-b"], [])
    assert view is not None and [n.name for n in view.nodes] == ["node-a", "node-b"]
    with r.pipeline(transaction=False) as pipe:
        ask_view(pipe, ["node-a"], [])
        assert take_view(pipe.execute(raise_on_error=False), ["node-a"], []) is None  # a node joined


def _waited(r, node, jobs):
    """Jobs placed at submit, put back as if they had waited for room (in this order)."""
    from gridcore import keys

    for j in jobs:
        r.lrem(keys.rq_queue(keys.node_queue(node)), 1, j)
        r.hdel(keys.node_held(node), j)
    pending = keys.rq_queue(keys.PENDING_QUEUE)
    r.delete(pending)
    r.rpush(pending, *jobs)


def test_a_slots_pass_gives_what_its_job_freed_to_a_higher_priority_job_past_its_head(grid, r):
    """The waiting queue is in submission order, and a slot's pass at its job's end looks at its
    head (TAKE_WINDOW jobs): a priority-9 job right behind the head gets the node's one free
    place, not a priority-0 job of the head (issue 17: priority order at a job's end)."""
    from agent.negotiator import TAKE_WINDOW, Negotiator
    from gridcore.reservations import Reservations

    _grid_nodes(r, ["node-a"], cpus=4, memory=8 * GB, gpus=0)
    low = grid.submit_many([JobSpec(command="true", resources=Resources(memory=GB)) for _ in range(TAKE_WINDOW)])
    high = grid.submit(JobSpec(command="true", resources=Resources(memory=GB), priority=9))
    _waited(r, "node-a", [*low, high])
    assert Reservations(r).reserve("node-a", "holder", Resources(cpus=3), [], 4, 8 * GB)  # room for one job
    taker = Negotiator(r, "node-a.x.0", node="node-a", taker=True)
    assert taker.run_once(full=False, lock=False) == 1
    at = _where(r, ["node-a"])
    assert at[high] == "node-a" and all(at[j] == "pending" for j in low), at
    assert taker.beyond  # jobs wait past its head: its node's loop is woken (agent/perform.py)


def test_what_fits_past_a_slots_pass_head_is_placed_by_the_loop_it_wakes(grid, r):
    """A slot's pass that placed a job but left jobs unread past its head says so (`beyond`),
    and the slot wakes its node's loop even so: a second job that fits, behind 7 unfit ones,
    is placed at once by that loop, not at the periodic pass. With the whole queue in its head,
    there is nothing to wake a loop for."""
    from agent.negotiator import TAKE_WINDOW, Negotiator
    from gridcore.reservations import Reservations

    _grid_nodes(r, ["node-a"], cpus=4, memory=8 * GB, gpus=0)
    assert Reservations(r).reserve("node-a", "holder", Resources(cpus=2), [], 4, 8 * GB)
    first = grid.submit(JobSpec(command="true", resources=Resources(memory=GB), priority=5))
    unfit = grid.submit_many([JobSpec(command="true", resources=Resources(cpus=4), priority=5)
                              for _ in range(TAKE_WINDOW - 1)])
    second = grid.submit(JobSpec(command="true", resources=Resources(memory=GB), priority=5))
    _waited(r, "node-a", [first, *unfit, second])
    taker = Negotiator(r, "node-a.x.0", node="node-a", taker=True)
    assert taker.run_once(full=False, lock=False) == 1 and taker.beyond
    assert _where(r, ["node-a"])[second] == "pending"
    assert Negotiator(r, "node-a", node="node-a").run_once(full=False) == 1
    assert _where(r, ["node-a"])[second] == "node-a"
    assert taker.run_once(full=False, lock=False) == 0 and not taker.beyond  # the 7 unfit: all in its head


def test_a_lost_job_put_back_at_the_top_is_placed_by_the_loop_it_wakes_while_the_head_moves(grid, broker, r):
    """Recovery puts a lost job back at the top of the waiting queue and wakes every loop. If a
    job of the loop's remembered unfit head leaves in the same moment (another node takes it),
    the head's last job stays where it was: the woken pass must still look from the top and
    place the lost job, not leave it to the periodic pass (here an hour away)."""
    import threading

    from agent.negotiator import Negotiator
    from gridcore import keys
    from gridcore.reservations import release
    from tests.support.wait import eventually

    blocked = grid.submit_many([JobSpec(command="true", resources=Resources(gpus=4)) for _ in range(120)])
    _grid_nodes(r, ["node-a"], cpus=64, memory=8 * GB, gpus=2)
    _grid_nodes(r, ["node-b"], cpus=64, memory=8 * GB, gpus=4)
    r.hset(keys.node("node-b"), "draining", "1")
    lost = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))
    r.lrem(keys.rq_queue(keys.node_queue("node-a")), 1, lost)  # placed at submit: as if it ran, and was lost
    r.hdel(keys.node_held("node-a"), lost)
    neg = Negotiator(broker.client(), "agent", node="node-a")
    stop = threading.Event()
    loop = threading.Thread(target=neg.loop, args=(stop, 3600.0))
    loop.start()
    try:
        eventually(lambda: neg._skip is not None and neg._skip.count == 120, 10, 0.02,
                   "the first (periodic) pass to find the unfit head")
        with r.pipeline() as pipe:  # one step: a head job taken elsewhere, the lost job requeued (attempt.lost)
            pipe.lrem(keys.rq_queue(keys.PENDING_QUEUE), 1, blocked[0])
            release(pipe, lost, None, None, requeued=True)
            pipe.lpush(keys.rq_queue(keys.PENDING_QUEUE), lost)
            pipe.execute()
        eventually(lambda: _where(r, ["node-a", "node-b"]).get(lost) == "node-a", 10, 0.02,
                   lambda: f"the woken loop to place the lost job (it is {_where(r, ['node-a', 'node-b']).get(lost)})")
    finally:
        stop.set()
        loop.join(10)


@pytest.mark.parametrize("closing", ["drained", "down"])
def test_a_node_drained_or_down_since_the_placers_view_gets_no_job(grid, r, closing):
    """A placer decides on a view read before its PLACE; a node drained meanwhile (by an
    operator, or by itself on a fault) or gone down is refused by the script itself: the job goes
    to another node in the same call, or waits, and nothing is held on the closed node."""
    from gridcore import keys
    from gridcore.placing import Placer

    jid = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))  # no node yet: it waits
    _grid_nodes(r, ["node-a", "node-b"], cpus=4, memory=8 * GB, gpus=0)
    placer = Placer(r)
    view = placer.view()  # the placer's view, taken before the node closes
    choice = choose_node(Resources(memory=GB), view.nodes, view.committed)
    assert choice is not None
    first = choice.node
    other = "node-b" if first == "node-a" else "node-a"

    def close(name):
        if closing == "drained":
            grid.drain(name, "disk failing")
        else:  # its last heartbeat older than its node_timeout (30 s in node_record)
            sec, _ = r.time()
            r.hset(keys.node(name), "beat", repr(sec - 31.0))

    close(first)
    out = placer.place(placer.read([jid]), view=view)
    assert out.placed == {jid: other}, out
    assert not r.hlen(keys.node_held(first))
    assert _where(r, ["node-a", "node-b"]) == {jid: other}

    # The only node closed since the view: the job waits, nothing held, nothing queued there.
    r.delete(keys.rq_queue(keys.node_queue(other)), keys.node_held(other))
    r.rpush(keys.rq_queue(keys.PENDING_QUEUE), jid)
    view = placer.view()
    close(other)
    out = placer.place(placer.read([jid]), view=view)
    assert not out.placed and not out.raced, out
    assert not r.hlen(keys.node_held(other))
    assert _where(r, ["node-a", "node-b"]) == {jid: "pending"}


# ---- a slot's next cell from its hint (agent/negotiator.py Negotiator.take_next) ----------------

def _two_slot_node(r, name="node-a"):
    """A node of 2 slots, no GPUs, one slot busy with another job (a slot's pass places for the
    node's idle slots: one, its own)."""
    from gridcore import keys
    from gridcore.records import Inventory
    from tests.support.records import node_record, put_node

    sec, usec = r.time()
    put_node(r, name, sec + usec / 1e6, node_record(inventory=Inventory(cpus=4, memory_total=8 * GB), slots=2,
                                                    queues=("default",)))
    r.hset(keys.node_running(name), "other", "x")


def _sweep(grid, cells, max_parallel, **kw):
    import uuid

    gid = uuid.uuid4().hex
    ids = grid.submit_many([JobSpec(command="true", resources=Resources(memory=GB), group=gid, params={"_cell": i}, **kw)
                            for i in range(cells)], groups={gid: {"name": "s", "max_parallel": max_parallel}})
    return gid, ids


def _ran_and_ended(r, node, jid, gid):
    """A slot took `jid` off its node's queue, ran it, and its end gave back what it held."""
    from gridcore import keys
    from gridcore.reservations import release

    assert r.lrem(keys.rq_queue(keys.node_queue(node)), 1, jid) == 1
    with r.pipeline() as pipe:
        release(pipe, jid, node, gid, wake_loops=False)
        pipe.execute()


def _back_to_pending(r, node, jid, front=False):
    """A job placed at its submission, put back to wait (at the end of the queue, or the front)."""
    from gridcore import keys

    r.lrem(keys.rq_queue(keys.node_queue(node)), 1, jid)
    r.hdel(keys.node_held(node), jid)
    (r.lpush if front else r.rpush)(keys.rq_queue(keys.PENDING_QUEUE), jid)


def _hinted(grid, r, cells):
    """A sweep of `cells` at max_parallel 2 on a node of 2 slots (one busy): a slot's pass placed
    its first cell, which ran and ended, and left the slot a hint (its Negotiator, returned)."""
    from agent.negotiator import Negotiator

    gid, ids = _sweep(grid, cells, 2)
    _two_slot_node(r)
    taker = Negotiator(r, "node-a.x.0", node="node-a", taker=True)
    assert taker.run_once(full=False, lock=False) == 1
    _ran_and_ended(r, "node-a", ids[0], gid)
    return gid, ids, taker


def test_a_slots_next_cell_comes_from_its_hint_until_a_job_it_has_not_read_may_come_first(grid, r):
    """A slot's pass that placed the head of the queue (a sweep's cell) for its own slot leaves a
    hint: at its job's end the next cell is placed by one PLACE, without a read of the queue and
    the grid. A job of a higher priority behind the sweep, unread by that pass, stops the hint:
    the pass runs and places it first (issue 17: priority order at a job's end)."""
    from agent.negotiator import Negotiator

    gid, cells = _sweep(grid, 5, 2)  # before the node: they wait
    _two_slot_node(r)
    taker = Negotiator(r, "node-a.x.0", node="node-a", taker=True)
    assert taker.run_once(full=False, lock=False) == 1
    assert _where(r, ["node-a"])[cells[0]] == "node-a"
    _ran_and_ended(r, "node-a", cells[0], gid)
    assert taker.take_next() and taker.idle_left == 0
    at = _check_never_overcommitted(r, ["node-a"], cpus=4, memory=8 * GB, gpus=0, sweeps={gid: (2, cells)})
    assert at[cells[1]] == "node-a" and all(at[c] == "pending" for c in cells[2:]), at
    high = grid.submit(JobSpec(command="true", resources=Resources(memory=GB), priority=5))
    _back_to_pending(r, "node-a", high)  # at the end of the queue, in a pass's chunk, unread by the last pass
    _ran_and_ended(r, "node-a", cells[1], gid)
    assert not taker.take_next()
    assert _where(r, ["node-a"])[cells[2]] == "pending"
    assert taker.run_once(full=False, lock=False) == 1
    at = _where(r, ["node-a"])
    assert at[high] == "node-a" and all(at[c] == "pending" for c in cells[2:]), at


def test_a_slots_hint_places_nothing_past_a_full_sweep_a_busy_node_queue_or_a_job_pushed_to_the_front(grid, r):
    """The hint's PLACE checks all a placement checks (max_parallel with racing placers) and that
    an idle slot of its node has no job queued for it (a job there is for its slots); a waiting
    job put back at the front of the queue (a lost one) stops it: a pass looks at it."""
    from gridcore import keys
    from gridcore.placing import Placer
    from gridcore.reservations import release

    gid, cells, taker = _hinted(grid, r, 12)
    running, queue = keys.node_running("node-a"), keys.rq_queue(keys.node_queue("node-a"))
    # Other placers (a submitter, other nodes' slots) take the sweep's two slots meanwhile.
    out = Placer(r).place_ids(cells[1:3], own=False)
    assert sorted(out.placed) == sorted(cells[1:3])
    r.delete(queue, running)  # the node's slots took them
    r.hset(running, mapping={cells[1]: "x", cells[2]: "x"})
    assert not taker.take_next()  # the head, cells[3], is one of its candidates: the sweep is full
    _within(r, gid)
    assert r.scard(keys.group_slots(gid)) == 2 and _where(r, ["node-a"])[cells[3]] == "pending"
    r.hdel(running, cells[1])
    with r.pipeline() as pipe:
        release(pipe, cells[1], "node-a", gid, wake_loops=False)
        pipe.execute()
    assert taker.run_once(full=False, lock=False) == 1  # cells[3], and a hint again
    _ran_and_ended(r, "node-a", cells[3], gid)
    r.rpush(queue, "placed-by-another-pass")
    assert not taker.take_next()  # a job waits in its node's queue: its slots take that one first
    assert _where(r, ["node-a"])[cells[4]] == "pending"
    r.delete(queue)
    assert taker.run_once(full=False, lock=False) == 1  # cells[4], and a hint again
    _ran_and_ended(r, "node-a", cells[4], gid)
    r.hset(running, "stale", "x")  # every slot of the node running, as its running hash says
    assert not taker.take_next()
    assert _where(r, ["node-a"])[cells[5]] == "pending"
    r.hdel(running, "stale")
    assert taker.run_once(full=False, lock=False) == 1  # cells[5], and a hint again
    _ran_and_ended(r, "node-a", cells[5], gid)
    lost = grid.submit(JobSpec(command="true", resources=Resources(memory=GB)))
    _back_to_pending(r, "node-a", lost, front=True)
    assert not taker.take_next()
    assert _where(r, ["node-a"])[cells[6]] == "pending"
    assert taker.take_next() is False  # one try per hint: the pass that runs now reads the queue
    _within(r, gid)


def test_a_slots_hint_on_a_node_drained_since_places_nothing_and_raises_nothing(grid, r):
    """A hint armed before its node was drained (an operator, a node fault, a late heartbeat):
    its PLACE refuses the closed node, and the slot is told so, with no error."""
    from agent.negotiator import Negotiator

    gid, cells = _sweep(grid, 4, 2)
    _two_slot_node(r)
    taker = Negotiator(r, "node-a.x.0", node="node-a", taker=True)
    assert taker.run_once(full=False, lock=False) == 1
    _ran_and_ended(r, "node-a", cells[0], gid)
    grid.drain("node-a", reason="maintenance")
    assert not taker.take_next()
    assert _where(r, ["node-a"])[cells[1]] == "pending"


def test_a_slots_hint_is_not_fooled_by_an_id_spanning_two_it_read(grid, r):
    """The head check looks each id of the queue's window up among those the pass read: a
    planted entry whose text joins two read ids with a newline is one it did not read."""
    from agent.negotiator import Negotiator
    from gridcore import keys

    gid, cells = _sweep(grid, 5, 2)
    _two_slot_node(r)
    taker = Negotiator(r, "node-a.x.0", node="node-a", taker=True)
    assert taker.run_once(full=False, lock=False) == 1
    _ran_and_ended(r, "node-a", cells[0], gid)
    pending = keys.rq_queue(keys.PENDING_QUEUE)
    r.linsert(pending, "AFTER", cells[1], f"{cells[2]}\n{cells[3]}")
    assert not taker.take_next()
    assert _where(r, ["node-a"])[cells[1]] == "pending"


def test_a_slots_hint_counts_its_nodes_queue_as_a_pass_does_and_outlives_a_busy_node(grid, r):
    """The head check places for an idle slot of the node that no queued job is there for (a
    job in the node's queue is for one idle slot, as a slot's pass counts them): with two idle
    slots and one job queued, the next cell is placed (two slots ending at once each place their
    next cell). Where every idle slot has its job, nothing is placed, the slot is told its node's
    queue holds its next job (`spoken`: no pass), and the hint serves its next end."""
    from gridcore import keys

    gid, cells, taker = _hinted(grid, r, 6)
    running, queue = keys.node_running("node-a"), keys.rq_queue(keys.node_queue("node-a"))
    r.hdel(running, "other")  # the node's other slot ended too, and a pass placed a job for it
    r.rpush(queue, "placed-for-the-other-slot")
    assert taker.take_next() and taker.idle_left == 0
    assert r.lrange(queue, 0, -1) == [b"placed-for-the-other-slot", cells[1].encode()]
    r.lrem(queue, 1, "placed-for-the-other-slot")
    r.hset(running, "other", "x")  # the other slot runs its job; this one ran cells[1]:
    _ran_and_ended(r, "node-a", cells[1], gid)
    r.rpush(queue, "placed-for-this-slot")  # one idle slot (this one), one job queued for it
    assert not taker.take_next() and taker.spoken
    assert _where(r, ["node-a"])[cells[2]] == "pending"
    r.delete(queue)  # this slot took it and ran it
    assert taker.take_next() and not taker.spoken  # the hint kept: cells[2], without a pass
    assert r.lrange(queue, 0, -1) == [cells[2].encode()]
    _within(r, gid)


def test_a_slots_hint_sends_twice_its_reach_and_three_more_candidates(grid, r):
    """Between two of a slot's ends other nodes' slots take cells ahead of its next one: its PLACE
    sends the candidates that many others took the last time, twice, and three more. A hint whose
    reach grew to 2 places the head where it is the 6th candidate (with 2 + 3 sent, a pass ran:
    on three agents 6% of the cell ends)."""
    from gridcore import keys

    gid, cells, taker = _hinted(grid, r, 20)
    pending = keys.rq_queue(keys.PENDING_QUEUE)
    for c in cells[1:3]:  # taken by other nodes' slots
        r.lrem(pending, 1, c)
    assert taker.take_next()  # cells[3], the 3rd candidate: its reach is 2
    assert _where(r, ["node-a"])[cells[3]] == "node-a"
    _ran_and_ended(r, "node-a", cells[3], gid)
    for c in cells[4:9]:
        r.lrem(pending, 1, c)
    assert taker.take_next()  # cells[9], the 6th candidate
    at = _where(r, ["node-a"])
    assert at[cells[9]] == "node-a" and all(at[c] == "pending" for c in cells[10:]), at
    _within(r, gid)


def test_a_slots_hint_outlasts_a_hundred_cells_of_its_own(grid, r):
    """The pass that arms a hint reads the queue's ids and records well past what it looks at
    (AHEAD): the hint places while the queue's first PREFETCH jobs are among them, here a
    hundred cells in a row (reading 64 past, it ran out after 64: a pass, its reads again)."""
    gid, cells, taker = _hinted(grid, r, 200)
    for c in cells[1:101]:
        assert taker.take_next(), c
        assert _where(r, ["node-a"])[c] == "node-a"
        _ran_and_ended(r, "node-a", c, gid)
    _within(r, gid)


def test_the_pass_after_a_hints_lost_reply_nudges_what_it_places(grid, r):
    """A hint's PLACE sent with a job's END whose reply was lost may have queued the next cell on
    the node, with no nudge (the slot takes it). The slot's pass that follows places for the
    node's other idle slot, and nudges for it: the slot's pop takes the head of its node's queue,
    the cell its PLACE queued, and the other slot, blocked on its pool queue, would look at the
    node's queue only at its periodic wake (seconds)."""
    from gridcore import keys
    from gridcore.placing import NUDGE

    gid, cells, taker = _hinted(grid, r, 6)
    running, queue = keys.node_running("node-a"), keys.rq_queue(keys.node_queue("node-a"))
    pool = keys.rq_queue("default")
    command, settle = taker.with_end()
    taker.placer.run_head(command)  # the broker ran it, its reply lost on the way back
    assert settle(None) is False
    assert r.lrange(queue, 0, -1) == [cells[1].encode()]
    r.hdel(running, "other")  # the node's other slot ended meanwhile: two idle, one job queued
    nudges = sum(x.startswith(NUDGE.encode()) for x in r.lrange(pool, 0, -1))
    assert taker.run_once(full=False, lock=False) == 1
    assert r.lrange(queue, 0, -1) == [cells[1].encode(), cells[2].encode()]
    assert sum(x.startswith(NUDGE.encode()) for x in r.lrange(pool, 0, -1)) == nudges + 1
    _within(r, gid)


def _within(r, gid):
    """node-a holds no more than it declared, the sweep runs no more than 2, no job is placed twice."""
    from gridcore import keys
    from gridcore.reservations import Reservations

    _where(r, ["node-a"])
    held = Reservations(r).held(["node-a"])["node-a"]
    assert sum(e.memory for e in held.values()) <= 8 * GB and sum(e.cpus for e in held.values()) <= 4
    assert r.scard(keys.group_slots(gid)) <= 2


def test_slots_racing_with_hints_and_submitters_never_overcommit_nor_exceed_max_parallel(grid, broker, r):
    """Four slots on two nodes, each ending its cell and placing the next from its hint (or its
    pass), as submitters place a second sweep and one more job at once: every snapshot of a node's
    reservations is within what it declared (two 3 GB cells of 8 GB), every snapshot of a sweep's
    slots within its max_parallel, no job is placed twice, and every cell runs."""
    import threading
    import time

    from agent.negotiator import Negotiator
    from gridcore import keys
    from gridcore.client import Grid
    from gridcore.records import HeldEntry, Inventory
    from gridcore.reservations import release
    from tests.support.records import node_record, put_node

    def sweep(cells, mp):
        import uuid

        gid = uuid.uuid4().hex
        ids = grid.submit_many([JobSpec(command="true", resources=Resources(memory=3 * GB), group=gid,
                                        params={"_cell": i}) for i in range(cells)],
                               groups={gid: {"name": "s", "max_parallel": mp}})
        return gid, ids

    first = sweep(40, 3)  # before the nodes: they wait
    names = ["node-a", "node-b"]
    sec, usec = r.time()
    for n in names:
        put_node(r, n, sec + usec / 1e6, node_record(inventory=Inventory(cpus=4, memory_total=8 * GB), slots=2,
                                                     queues=("default",)))
    group_of: dict[str, str] = {j: first[0] for j in first[1]}
    ran: list[str] = []
    hinted: list[str] = []  # cells placed from a hint
    errors: list[BaseException] = []
    stop = threading.Event()

    def snapshot(conn):
        for n in names:
            held = conn.hgetall(keys.node_held(n))  # one command: an atomic snapshot
            assert sum(HeldEntry.decode(v, "held").memory for v in held.values()) <= 8 * GB, (n, held)
        for gid, mp in ((first[0], 3), (second[0], 2)) if second else ((first[0], 3),):
            assert conn.scard(keys.group_slots(gid)) <= mp, gid

    def slot(node, i):
        try:
            conn = broker.client()
            me = Negotiator(conn, f"{node}.x.{i}", node=node, taker=True)
            job = None
            for _ in range(400):
                if stop.is_set():
                    return
                if job is not None:  # its cell ends: what it held given back
                    with conn.pipeline() as pipe:
                        pipe.hdel(keys.node_running(node), job)
                        release(pipe, job, node, group_of.get(job), wake_loops=False)
                        pipe.execute()
                    ran.append(job)
                    job = None
                if me.take_next():
                    hinted.append(node)
                else:
                    me.run_once(full=False, lock=False)
                snapshot(conn)
                got = conn.lpop(keys.rq_queue(keys.node_queue(node)))  # it takes a job of its node's queue
                if got is not None:
                    job = got.decode()
                    conn.hset(keys.node_running(node), job, "x")
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    second = None
    threads = [threading.Thread(target=slot, args=(n, i)) for n in names for i in range(2)]
    for t in threads:
        t.start()
    g = Grid(broker.client(), grid.settings)
    second = sweep(10, 2)  # placed by its submitter as the slots race
    group_of.update({j: second[0] for j in second[1]})
    g.submit(JobSpec(command="true", resources=Resources(memory=3 * GB), priority=3))
    deadline = time.monotonic() + 60
    while len(ran) < 50 and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(ran) == len(set(ran))  # no job ran twice
    running = {j.decode() for n in names for j in r.hkeys(keys.node_running(n))}  # taken as the slots stopped
    assert set(first[1]) | set(second[1]) <= set(ran) | set(_where(r, names)) | running, "a cell was lost"
    assert set(first[1]) <= set(ran), len(set(first[1]) - set(ran))
    assert hinted, "no cell was placed from a hint"


def test_a_loop_whose_idle_slot_a_full_sweep_kept_out_places_its_cell_when_the_sweep_frees_unwoken(grid, r):
    """A sweep's cell ran on another node; this node's loop found the sweep full. The cell ends
    and its slot gives the sweep's slot back without waking anyone (as a slot that then took
    another job does): the loop, looking again soon after such a pass, places the next cell on
    its idle slot, long before its periodic pass."""
    from agent.negotiator import Negotiator
    from gridcore import keys
    from gridcore.reservations import release
    from tests.support.wait import eventually

    gid, cells = _sweep(grid, 3, 1)  # before the nodes: they wait
    _grid_nodes(r, ["node-a", "node-b"], cpus=4, memory=8 * GB, gpus=0)
    assert Negotiator(r, "node-b", node="node-b").run_once() == 1
    assert _where(r, ["node-a", "node-b"])[cells[0]] == "node-b"
    loop = Negotiator(r, "node-a", node="node-a")
    stop = loop.start(interval=60.0)  # its first pass now, the next periodic one in a minute
    try:
        eventually(lambda: loop.full == {gid}, 10)  # it found the sweep at its max_parallel
        r.lrem(keys.rq_queue(keys.node_queue("node-b")), 1, cells[0])
        with r.pipeline() as pipe:
            release(pipe, cells[0], "node-b", gid, wake_loops=False)
            pipe.execute()
        # (.get: the two queues are read one after the other, as the loop moves the job between them)
        eventually(lambda: _where(r, ["node-a", "node-b"]).get(cells[1]) == "node-a", 10)
    finally:
        stop.set()
