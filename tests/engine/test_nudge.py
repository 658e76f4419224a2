"""Nudges and wakes on a grid of several nodes. The nudge that wakes an idle slot for a job placed
on its node reaches a slot of that node,
whichever node's idle slot the shared pool queue hands it to first (no agents: the slots' own
wait and pop, as a slot runs them)."""

from __future__ import annotations

from agent import claim
from gridcore import keys
from gridcore.models import JobSpec, Resources
from gridcore.placing import NUDGE_HOPS, nudge
from tests.support.records import node_record, put_node

POOL = keys.rq_queue("default")


def slot_wakes(r, node: str) -> claim.Popped:
    """An idle slot of `node` woken on the pool queue: its wait, and the pop behind it."""
    return claim.wait_pop(r, node, f"{node}.x.0", [keys.rq_queue(keys.node_queue(node)), POOL], POOL, 0.1)


def test_another_nodes_idle_slot_passes_the_nudge_on(grid, r):
    for n in ("a", "b"):
        put_node(r, n, grid.broker_time(), node_record(queues=("default",)))
    job = grid.submit(JobSpec(command="true", resources=Resources(memory=10 * 2**20, node="a")))
    assert r.lrange(keys.rq_queue(keys.node_queue("a")), 0, -1) == [job.encode()]
    # Passed on at most as often as node b has idle slots (4) that may wait ahead of a's in line.
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS - 4).encode()]
    # Node b's slot waited longest: it gets the nudge, takes nothing and passes it on.
    popped = slot_wakes(r, "b")
    assert popped.taken is None
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS - 3).encode()]
    assert not r.llen(keys.node_taking("b"))
    # Node a's slot gets it next and takes the placed job; the nudge is gone.
    popped = slot_wakes(r, "a")
    assert popped.taken is not None and popped.taken.job_id == job
    assert not r.llen(POOL) and not r.llen(keys.node_taking("a"))


def test_a_nudge_reaches_its_node_behind_every_idle_slot_of_a_big_grid(grid, r):
    """On a lab's grid of many slots, every idle slot of the other nodes may wait ahead of the
    placed job's node's own in line: the nudge is passed on that often, not dropped at a fixed
    count, which left the placed job to the node's next periodic look (seconds)."""
    others = [f"b{i}" for i in range(12)]  # 4 idle slots each: 48 ahead of node a's
    for n in ("a", *others):
        put_node(r, n, grid.broker_time(), node_record(queues=("default",)))
    job = grid.submit(JobSpec(command="true", resources=Resources(memory=10 * 2**20, node="a")))
    for n in others:
        for _ in range(4):
            assert slot_wakes(r, n).taken is None
    assert r.llen(POOL) == 1  # still on its way
    popped = slot_wakes(r, "a")
    assert popped.taken is not None and popped.taken.job_id == job
    assert not r.llen(POOL)


def test_a_nudge_is_passed_on_a_bounded_number_of_times(r):
    r.rpush(POOL, nudge("a", "default", hops=NUDGE_HOPS - 1))
    slot_wakes(r, "b")
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS).encode()]
    slot_wakes(r, "b")
    assert not r.llen(POOL)


def test_a_forged_nudge_is_dropped_without_failing_the_pop(r):
    """A nudge names a queue, never a key: it can only be pushed onto an RQ queue, and one of
    another type (anyone may write one) drops it."""
    r.hset(keys.rq_queue("evil"), "x", "y")
    r.rpush(POOL, nudge("a", "evil"), "grid-placed-nudge:9999999999999999999999:a:default")
    r.rpush(POOL, "j1")
    assert slot_wakes(r, "b").taken.job_id == "j1"  # the nudges before it hold nothing up
    assert r.type(keys.rq_queue("evil")) == b"hash" and not r.llen(POOL)


def _nodes(r, grid, busy: dict[str, int], slots: int = 2) -> None:
    """Nodes serving "default" with `slots` slots each, `busy[n]` of them running a job."""
    for n, k in busy.items():
        put_node(r, n, grid.broker_time(), node_record(queues=("default",), slots=slots))
        for i in range(k):
            r.hset(keys.node_running(n), f"running-{n}-{i}", str(i))


def test_a_slot_placing_at_its_jobs_end_nudges_no_slot_for_the_job_it_takes_itself(grid, r):
    """The slot whose job just ended places the next waiting job onto its node and takes it
    itself at once: a nudge for it would only be passed around between other nodes' idle slots
    (a ping-pong at every cell end of a sweep that fits one node). A second job placed in the
    same pass does nudge, if the node has another idle slot."""
    from agent.negotiator import Negotiator

    jobs = grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20)) for _ in range(3)])
    _nodes(r, grid, {"a": 1, "b": 0, "c": 0})  # a's other slot is busy; b's and c's slots wait idle
    slot = Negotiator(r, "a.x.0", node="a", taker=True)
    r.hset(keys.node_held("a"), "running-a-0", '{"cpus": 7}')  # room for one more job on a
    assert slot.run_once(full=False, lock=False) == 1
    assert r.lrange(keys.rq_queue(keys.node_queue("a")), 0, -1) == [jobs[0].encode()]
    assert not r.llen(POOL)
    # a's other slot is idle now, and the freed room takes two jobs: the second one is nudged for.
    r.delete(keys.node_running("a"), keys.node_held("a"))
    r.lpop(keys.rq_queue(keys.node_queue("a")))
    assert slot.run_once(full=False, lock=False) == 2
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS - 4).encode()]


def test_a_nudge_is_passed_on_at_most_as_often_as_other_nodes_have_idle_slots(grid, r):
    """Idle slots wait on a pool queue in line: a nudge reaches its node's waiting slot after at
    most one pass per idle slot of the other nodes. If that slot is not waiting (it is between
    two pops, and looks at its node queue anyway), passing it on further is only a ping-pong."""
    _nodes(r, grid, {"a": 0, "b": 0, "c": 2})  # b has 2 idle slots; c's are busy
    job = grid.submit(JobSpec(command="true", resources=Resources(memory=10 * 2**20, node="a")))
    assert r.lrange(keys.rq_queue(keys.node_queue("a")), 0, -1) == [job.encode()]
    for _ in range(2):
        assert slot_wakes(r, "b").taken is None
        assert r.llen(POOL) == 1
    assert slot_wakes(r, "b").taken is None
    assert not r.llen(POOL)


def test_placed_jobs_a_down_node_never_started_wake_every_placement_loop(grid, r):
    """Recovery sends the jobs placed on a down node back to placement: the other nodes' loops
    are woken for them (not left to their periodic pass, a heartbeat later), sweep or not."""
    from agent import recovery
    from agent.negotiator import Negotiator

    _nodes(r, grid, {"gone": 0})
    job = grid.submit(JobSpec(command="true", resources=Resources(memory=10 * 2**20)))
    assert r.lrange(keys.rq_queue(keys.node_queue("gone")), 0, -1) == [job.encode()]
    put_node(r, "gone", grid.broker_time() - 1000, node_record(queues=("default",), slots=2))
    _nodes(r, grid, {"b": 0})
    b = Negotiator(r, "b", node="b")
    tail = b._tail()
    assert recovery.replace_queued(r, "gone") == 1
    assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [job.encode()]
    assert b.wait_wake(tail, 0.05)[1]
    assert b.run_once(full=False) == 1


def test_a_slots_pass_that_lost_its_jobs_to_another_nodes_placer_says_so(grid, r):
    """Every node's ending slots race for the head of the waiting queue. A slot's pass that
    placed nothing because another placer took what it tried says so (`raced`): the slot then
    wakes its own node's loop only (the others are placing what was given back), not a pass per
    agent."""
    from agent.negotiator import Negotiator
    from gridcore.placing import Placer

    gid = "sweep-1"
    cells = grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20), group=gid,
                                      params={"i": i}) for i in range(2)], groups={gid: {"max_parallel": 6}})
    _nodes(r, grid, {"a": 0, "b": 0})
    slot = Negotiator(r, "a.x.0", node="a", taker=True)
    survey = slot._survey("token", False, False)  # the slot has read the queue and the grid ...
    out = Placer(r).place_ids(cells, own=False, onto="b")
    assert out.placed == dict.fromkeys(cells, "b"), out  # ... b's won
    assert slot._pass(False, *survey) == 0
    assert slot.raced == 2
    assert slot.run_once(full=False, lock=False) == 0 and slot.raced == 0  # nothing tried, nothing lost


def test_a_draining_nodes_slot_passes_another_nodes_nudge_on(grid, r):
    """A slot of node b waited on the pool queue as b began to drain: what its wait took goes
    back, and a nudge for node a goes on to the next waiting slot, not into the void (a's idle
    slot would otherwise sleep through the job placed on it until its next wake)."""
    put_node(r, "a", grid.broker_time(), node_record(queues=("default",)))
    put_node(r, "b", grid.broker_time(), node_record(queues=("default",), draining=True))
    job = grid.submit(JobSpec(command="true"))
    r.lrem(POOL, 0, job)
    r.rpush(keys.node_taking("b"), job)  # an earlier wait of b took a job...
    r.rpush(POOL, nudge("a", "default", hops=NUDGE_HOPS - 2))  # ...this one takes the nudge
    popped = slot_wakes(r, "b")
    assert popped.draining and popped.taken is None and not r.llen(keys.node_taking("b"))
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS - 1).encode(), job.encode()]
    # Its own node's nudge it drops, as any slot of b would (b's placed job waits in b's queue).
    r.delete(POOL)
    r.rpush(POOL, nudge("b", "default"))
    assert slot_wakes(r, "b").draining and not r.llen(POOL) and not r.llen(keys.node_taking("b"))


def test_a_slot_taking_its_nodes_placed_job_passes_another_nodes_nudge_on(grid, r):
    """What the waits took goes back when a placed job comes first: a nudge among it goes on too."""
    put_node(r, "a", grid.broker_time(), node_record(queues=("default",)))
    put_node(r, "b", grid.broker_time(), node_record(queues=("default",)))
    r.rpush(keys.node_taking("b"), nudge("a", "default", hops=NUDGE_HOPS - 2))
    r.rpush(keys.rq_queue(keys.node_queue("b")), "placed")
    r.hset(keys.rq_job("placed"), mapping={"origin": "default", "status": "queued"})
    popped = claim.pop(r, "b", "b.x.0", [keys.rq_queue(keys.node_queue("b")), POOL])
    assert popped.taken is not None and popped.taken.job_id == "placed"
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS - 1).encode()]


def test_a_slots_pass_looks_at_the_head_only_and_its_nodes_loop_looks_further(grid, r):
    """A slot's pass at its job's end looks at the head of the waiting queue (TAKE_WINDOW jobs),
    never further: at every cell end of a big sweep whose max_parallel another placer had
    already filled, looking on down the queue read every cell's record again. What fits behind
    the head is its node's loop's (the slot wakes it), and the pass says which sweeps it found
    full (a full sweep's freed slot was taken: no other node's loop is woken for it)."""
    from agent.negotiator import TAKE_WINDOW, Negotiator

    gid = "sweep-full"
    grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20), group=gid,
                              params={"i": i}) for i in range(TAKE_WINDOW + 2)], groups={gid: {"max_parallel": 1}})
    behind = grid.submit(JobSpec(command="true", resources=Resources(memory=10 * 2**20)))
    _nodes(r, grid, {"a": 0})
    r.sadd(keys.group_slots(gid), "a-cell-running-elsewhere")  # the sweep is at its max_parallel
    slot = Negotiator(r, "a.x.0", node="a", taker=True)
    assert slot.run_once(full=False, lock=False) == 0
    assert slot.full == {gid} and slot.raced == 0
    assert len(slot._read) <= TAKE_WINDOW + 64  # the head and its prefetch, not the whole queue
    assert Negotiator(r, "a", node="a").run_once(full=False) == 1
    assert r.lrange(keys.rq_queue(keys.node_queue("a")), 0, -1) == [behind.encode()]


def test_a_pass_that_finds_a_sweeps_cells_taken_counts_them_against_its_max_parallel(grid, r):
    """Ending slots race for the head of a sweep. A pass whose view is older than another
    placer's placements finds the cells it tries gone: each one gone most likely took a slot of
    the sweep, so once the cells gone fill its max_parallel the pass stops trying cells (a
    script each, every one refused)."""
    from gridcore.placing import Placer

    gid = "sweep-raced"
    cells = grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20), group=gid,
                                      params={"i": i}) for i in range(4)], groups={gid: {"max_parallel": 2}})
    _nodes(r, grid, {"a": 0, "b": 0})
    slow = Placer(r)
    jobs = [w for w in slow.read(cells)]
    view = slow.view([gid])  # read before the other placer's placements
    assert Placer(r).place_ids(cells, own=False, onto="b").placed == dict.fromkeys(cells[:2], "b")
    out = slow.place(jobs, view=view, explain_rest=(), onto="a")
    assert out.placed == {} and out.raced == 2 and out.full == {gid}
    assert r.scard(keys.group_slots(gid)) == 2


def test_a_placer_that_finds_a_cell_gone_tries_the_next_ones_in_the_same_script(grid, r):
    """On a grid of several nodes the nodes' ending slots race for the head of a sweep: a
    placement whose cell another placer took tries the cells right behind it in the same script
    (as many as the sweep has room for), instead of a script each; what it places is still
    bounded by max_parallel and the node's room."""
    from gridcore.placing import Placer

    gid = "sweep-alt"
    cells = grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20), group=gid,
                                      params={"i": i}) for i in range(6)], groups={gid: {"max_parallel": 4}})
    _nodes(r, grid, {"a": 0, "b": 0})
    slow = Placer(r)
    jobs = slow.read(cells)
    view = slow.view([gid])  # read before the other placer's placements
    assert Placer(r).place_ids(cells[:2], own=False, onto="b").placed == dict.fromkeys(cells[:2], "b")
    scripts = []
    place = slow._place
    slow._place = lambda **kw: scripts.append(kw["args"][0]) or place(**kw)
    out = slow.place(jobs, view=view, explain_rest=(), onto="a")
    assert out.placed == dict.fromkeys(cells[2:4], "a") and out.raced == 2, out
    assert scripts == [cells[0], cells[3]]  # cells 0, 1 (gone) and 2 in one script; then 3
    assert r.scard(keys.group_slots(gid)) == 4
    assert r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1) == [c.encode() for c in cells[4:]]


def test_a_slot_whose_pass_placed_a_job_but_left_jobs_past_its_head_wakes_its_nodes_loop(grid, r):
    """What fits past a slot's pass's head (TAKE_WINDOW), and a job of a higher priority there,
    is its node's loop's: the slot wakes that loop (its node's only) even when its pass placed
    jobs, while a slot of its node is left idle. With every slot taken (a sweep's cell end that
    placed the next cell) or nothing past the head, it wakes none: a woken pass would place
    nothing, at every cell's end."""
    from types import SimpleNamespace

    from agent.negotiator import TAKE_WINDOW, Negotiator
    from agent.perform import Performer

    pending = keys.rq_queue(keys.PENDING_QUEUE)
    node_queue = keys.rq_queue(keys.node_queue("a"))

    def slot_ends(waiting: list[str], busy: int, slots: int) -> list[dict]:
        """A slot's job ends with `waiting` waiting and `busy` of the node's `slots` running; the wakes."""
        r.delete(pending, keys.PLACE_WAKES, keys.node_held("a"), node_queue, keys.node_running("a"))
        r.rpush(pending, *waiting)  # as if they had waited for room
        _nodes(r, grid, {"a": busy}, slots=slots)
        slot = SimpleNamespace(placing=Negotiator(r, "a.x.0", node="a", taker=True), conn=r, node="a")
        Performer._place_next(slot, None)
        assert r.llen(node_queue) >= 1
        return [f for _, f in r.xrange(keys.PLACE_WAKES)]

    jobs = grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20))
                             for _ in range(TAKE_WINDOW + 1)])
    assert slot_ends(jobs, 0, TAKE_WINDOW + 4) == [{b"node": b"a", b"any": b"0", b"idle": b"1"}]
    assert slot_ends(jobs, 1, 2) == []
    assert slot_ends(jobs[:1], 0, TAKE_WINDOW + 4) == []


def test_a_node_giving_back_what_its_waits_took_passes_another_nodes_nudge_on(grid, r):
    """An orphaned slot (agent/pulse.py) and an exiting agent give back what the node's waits
    took (`claim.give_back`): a nudge for node a among it goes on to the next waiting slot, as a
    pop passes it on, not into the void (a's idle slot would sleep through the job placed on it
    until its next wake); node b's own nudge is dropped (its placed job waits in its queue)."""
    put_node(r, "a", grid.broker_time(), node_record(queues=("default",)))
    put_node(r, "b", grid.broker_time(), node_record(queues=("default",)))
    job = grid.submit(JobSpec(command="true"))
    r.lrem(POOL, 0, job)
    r.rpush(keys.node_taking("b"), job, nudge("a", "default", hops=NUDGE_HOPS - 2), nudge("b", "default"))
    assert claim.give_back(r, "b") == 1
    assert not r.llen(keys.node_taking("b"))
    assert r.lrange(POOL, 0, -1) == [nudge("a", "default", hops=NUDGE_HOPS - 1).encode(), job.encode()]
    # Passed on no more often than any nudge: one at its last hop is dropped.
    r.delete(POOL)
    r.rpush(keys.node_taking("b"), nudge("a", "default", hops=NUDGE_HOPS))
    assert claim.give_back(r, "b") == 0 and not r.llen(POOL)


def test_a_loop_woken_for_an_idle_slot_passes_only_if_one_is_still_idle(grid, r):
    """On a grid of several nodes a slot's pass at its job's end often sees its node's other
    slot idle while that slot is between its own job's end and its own pass (which takes the next
    cell itself), and wakes its node's loop for it. That loop reads the node's slots first: with
    none idle any more it runs no pass (on three agents each such wake cost a pass that placed
    nothing). A wake of any other kind in the same read, a due periodic pass, or a slot still
    idle (and no job in its node's queue for it): the pass runs. Another node's idle wake does
    not concern the loop at all."""
    from agent.negotiator import Negotiator
    from gridcore.reservations import wake

    def woken(*wakes: dict, busy: int, periodic: bool = False) -> tuple[bool, bool]:
        """The loop of node a reads `wakes` with `busy` of a's 2 slots running: (woken, passes)."""
        r.delete(keys.node_running("a"))
        _nodes(r, grid, {"a": busy, "b": 0})
        tail = loop._tail()
        with r.pipeline() as pipe:
            for w in wakes:
                wake(pipe, **w)
            pipe.execute()
        woke = loop.wait_wake(tail, 0.05)[1]
        return woke, (woke or periodic) and loop.worth_a_pass(periodic)

    grid.submit(JobSpec(command="true", resources=Resources(memory=10 * 2**20)))  # a job waits
    loop = Negotiator(r, "a", node="a")
    idle_a = {"node": "a", "idle": True}
    assert woken(idle_a, busy=2) == (True, False)
    assert woken(idle_a, busy=1) == (True, True)
    r.rpush(keys.rq_queue(keys.node_queue("a")), "placed-not-taken")  # the idle slot's next job
    assert woken(idle_a, busy=1) == (True, False)
    r.delete(keys.rq_queue(keys.node_queue("a")))
    assert woken(idle_a, {"node": "a"}, busy=2) == (True, True)
    assert woken(idle_a, {"node": "b", "anywhere": True}, busy=2) == (True, True)
    assert woken(idle_a, busy=2, periodic=True) == (True, True)
    assert woken({"node": "b", "idle": True}, busy=0) == (False, False)
    r.delete(keys.rq_queue(keys.PENDING_QUEUE))  # nothing waits: no pass, however woken
    assert woken({"node": "a"}, busy=0) == (True, False)


def test_a_slots_pass_places_only_for_its_nodes_idle_slots_not_spoken_for(grid, r):
    """A slot's pass at its job's end places for its node's idle slots only (its own among them),
    less the jobs already in its node's queue: a slot given a job there that it has not taken yet
    looks idle. On three agents a cell placed past the node's free slots waited in its queue,
    holding its sweep's slot, while another node's slot found the sweep full and sat idle. With
    every idle slot spoken for, the pass places nothing and the slot wakes no loop (it takes a
    job of its node's queue next); the waiting jobs stay for other nodes."""
    from types import SimpleNamespace

    from agent.negotiator import Negotiator
    from agent.perform import Performer

    pending = keys.rq_queue(keys.PENDING_QUEUE)
    node_queue = keys.rq_queue(keys.node_queue("a"))
    jobs = grid.submit_many([JobSpec(command="true", resources=Resources(memory=10 * 2**20)) for _ in range(4)])
    r.delete(pending, node_queue, keys.node_held("a"), keys.PLACE_WAKES)
    r.rpush(pending, *jobs[1:])  # as if they had waited for room
    r.rpush(node_queue, jobs[0])  # placed by another pass, not taken yet
    _nodes(r, grid, {"a": 1, "b": 0}, slots=2)  # a's other slot runs a job: this one is a's only idle slot
    slot = SimpleNamespace(placing=Negotiator(r, "a.x.0", node="a", taker=True), conn=r, node="a")
    Performer._place_next(slot, None)
    assert r.lrange(pending, 0, -1) == [j.encode() for j in jobs[1:]]
    assert r.xlen(keys.PLACE_WAKES) == 0 and slot.placing.spoken
    r.delete(keys.node_running("a"))  # both of a's slots idle: one of them is spoken for
    assert slot.placing.run_once(full=False, lock=False) == 1 and not slot.placing.spoken
    assert r.lrange(node_queue, 0, -1) == [jobs[0].encode(), jobs[1].encode()]
