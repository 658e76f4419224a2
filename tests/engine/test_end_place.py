"""A sweep's next cell placed in the round trip of its slot's job end (issue 17): the slot's hint's
PLACE goes in the same write as the END script, and the broker runs it right after it
(agent/negotiator.py `with_end`, agent/attempt.py `_end_at_once`). Round trips are counted on
the slot's own connection (its writes to the broker), not timed."""

from __future__ import annotations

import threading

import pytest
import redis

from agent import guarded
from gridcore import keys
from gridcore.models import JobSpec, JobState, Resources
from gridcore.records import ActiveEntry, Inventory
from tests.engine.test_reconcile import _slot
from tests.support.records import node_record, put_node


@pytest.fixture(autouse=True)
def _lasting_hints(monkeypatch):
    """A slot's hint lives HINT_TTL (2 s) from the pass that made it: on a loaded machine a job
    between two ends may take that long, and the hint these tests follow would be gone."""
    monkeypatch.setattr("agent.negotiator.HINT_TTL", 60.0)


GB = 10**9


class _Counting(redis.Connection):
    """A connection that notes each write it sends (one round trip each) and the scripts in it."""

    sends: list[tuple[int, list[bytes]]] = []

    def send_packed_command(self, command, check_health=True):
        parts = command if isinstance(command, list) else [command]
        data = b"".join(bytes(p) for p in parts)
        shas = [s for s in (guarded.END.sha.encode(), _place_sha()) if s in data]
        _Counting.sends.append((threading.get_ident(), shas))
        return super().send_packed_command(command, check_health)


def _place_sha() -> bytes:
    from gridcore.placing import PLACE

    import hashlib

    return hashlib.sha1(PLACE.encode()).hexdigest().encode()


@pytest.fixture
def n1():
    """A node name of this test's own: a slot's memory cgroups are named for it (agent/cgroup.py),
    and the one the slot keeps for its next job is removed at the end."""
    import uuid

    from agent import runner

    yield f"n1-{uuid.uuid4().hex[:8]}"
    runner.close_cgroups()


@pytest.fixture
def counted(broker):
    _Counting.sends = []
    pool = redis.ConnectionPool(connection_class=_Counting, host="127.0.0.1", port=broker.port,
                                password=broker.password)
    c = redis.Redis(connection_pool=pool)
    yield c
    c.close()
    pool.disconnect()


def _sweep_on_one_node(grid, r, n1, cells=5):
    """A node of 2 slots and 8 GB, and a sweep of 1 GB cells at max_parallel 1, submitted while
    the node is up: its first cell is placed on the node at once, the rest wait."""
    sec, usec = r.time()
    put_node(r, n1, sec + usec / 1e6, node_record(inventory=Inventory(cpus=4, memory_total=8 * GB), slots=2,
                                                    queues=("default",)))
    import uuid

    gid = uuid.uuid4().hex
    ids = grid.submit_many([JobSpec(command="true", resources=Resources(memory=GB), group=gid, params={"_cell": i})
                            for i in range(cells)], groups={gid: {"name": "s", "max_parallel": 1}})
    assert r.lrange(keys.rq_queue(keys.node_queue(n1)), 0, -1) == [ids[0].encode()]
    return gid, ids


def _take(r, slot):
    """What the slot's RQ worker does: pop and claim the job placed in its node's queue."""
    from rq.serializers import JSONSerializer

    from agent import claim
    from agent.rqadapter.jobs import GridJob, GridQueue

    nq = keys.node_queue(slot.node)
    popped = claim.pop(r, slot.node, slot.worker, [keys.rq_queue(nq), keys.rq_queue("default")])
    assert popped.taken is not None
    job = GridJob.fetch(popped.taken.job_id, connection=r, serializer=JSONSerializer)
    return job, GridQueue(nq, connection=r, serializer=JSONSerializer), popped.taken


def _took(monkeypatch) -> list[bool | None]:
    """What each of the slot's placements after a job's end was told the PLACE sent with the END
    did (None: none was sent), in order."""
    from agent.perform import Performer

    took: list[bool | None] = []
    place_next = Performer._place_next

    def placing(self, group, taken=None):
        took.append(taken)
        return place_next(self, group, taken)

    monkeypatch.setattr(Performer, "_place_next", placing)
    return took


def _end_sends(monkeypatch, slot):
    """Each job's writes from its end's script to the end of the slot's placement after it (this
    thread's only: the output's sender thread writes on its own)."""
    from agent.attempt import JobAttempt

    windows: list[list[list[bytes]]] = []
    finish, place_next = JobAttempt.finish, type(slot)._place_next
    marks: list[int] = []

    def finishing(self, *a, **kw):
        marks.append(len(_Counting.sends))
        return finish(self, *a, **kw)

    def placing(self, *a, **kw):
        try:
            return place_next(self, *a, **kw)
        finally:
            me = threading.get_ident()
            windows.append([shas for t, shas in _Counting.sends[marks.pop():] if t == me])

    monkeypatch.setattr(JobAttempt, "finish", finishing)
    monkeypatch.setattr(type(slot), "_place_next", placing)
    return windows


def test_a_cells_end_places_the_next_cell_in_its_own_round_trip(counted, r, grid, settings, monkeypatch, n1):
    """Cell 0's end has no hint yet: its slot's pass places cell 1 and leaves one. Cell 1's end
    sends the hint's PLACE in the END's write: cell 2 is placed, and the end and the placement
    take one round trip (main: two, the END's and the PLACE's), the same scripts run."""
    gid, ids = _sweep_on_one_node(grid, r, n1)
    slot = _slot(counted, settings, n1)
    windows = _end_sends(monkeypatch, slot)
    node_queue = keys.rq_queue(keys.node_queue(n1))
    for k in range(3):
        slot.perform(*_take(counted, slot))
        assert grid.state(ids[k]) is JobState.FINISHED
        assert r.lrange(node_queue, 0, -1) == [ids[k + 1].encode()]
    end, place = guarded.END.sha.encode(), _place_sha()
    # Cell 1's and 2's ends: one write holds both scripts, nothing else is sent.
    for window in windows[1:]:
        assert window == [[end, place]], window
    assert r.scard(keys.group_slots(gid)) == 1 and r.hlen(keys.node_held(n1)) == 1


def test_the_same_end_without_the_pair_takes_one_round_trip_more(counted, r, grid, settings, monkeypatch, n1):
    """The count the test above relies on, taken the other way: the hint's PLACE sent on its own
    after the END (as before the pair) is a write of its own."""
    from agent.perform import Performer

    gid, ids = _sweep_on_one_node(grid, r, n1)
    slot = _slot(counted, settings, n1)
    monkeypatch.setattr(Performer, "_with_end", lambda self, took, attempt: [])
    windows = _end_sends(monkeypatch, slot)
    for k in range(3):
        slot.perform(*_take(counted, slot))
        assert r.lrange(keys.rq_queue(keys.node_queue(n1)), 0, -1) == [ids[k + 1].encode()]
    for window in windows[1:]:
        assert window == [[guarded.END.sha.encode()], [_place_sha()]], window


def test_a_fenced_ends_paired_place_is_not_acted_on(counted, r, grid, settings, monkeypatch, n1):
    """Cell 1 is reclaimed by the grid while it runs (its grid:active entry names another node's
    slot): its END records nothing. The PLACE sent with it runs all the same, and may place (here
    it does: the node's other job ended meanwhile); its reply is not taken as the slot's
    placement: the hint goes and the slot's pass decides, reading the queue and the grid. Nothing
    is overcommitted, the sweep stays within max_parallel, no cell is placed twice."""
    import uuid

    from agent.attempt import JobAttempt

    gid = uuid.uuid4().hex
    ids = grid.submit_many([JobSpec(command="true", resources=Resources(memory=GB), group=gid, params={"_cell": i})
                            for i in range(5)], groups={gid: {"name": "s", "max_parallel": 2}})  # no node yet: they wait
    sec, usec = r.time()
    put_node(r, n1, sec + usec / 1e6, node_record(inventory=Inventory(cpus=4, memory_total=8 * GB), slots=2,
                                                    queues=("default",)))
    running, node_queue = keys.node_running(n1), keys.rq_queue(keys.node_queue(n1))
    r.hset(running, "other", "x")  # the node's other slot is busy: a slot's pass places one cell, for itself
    slot = _slot(counted, settings, n1)
    assert slot.placing.run_once(full=False, lock=False) == 1  # cell 0, and a hint
    took = _took(monkeypatch)
    slot.perform(*_take(counted, slot))
    assert took == [True] and r.lrange(node_queue, 0, -1) == [ids[1].encode()]  # the pair placed cell 1

    end_script = JobAttempt._end_script

    def fenced(self, *a, **kw):
        # Recovery took it from this slot a moment before its end (another node's slot runs it),
        # and the node's other job ended.
        r.hset(keys.ACTIVE, self.id, ActiveEntry(node="n2", slot=0, worker="n2.y.0", started=1.0).encode())
        r.hdel(running, "other")
        return end_script(self, *a, **kw)

    monkeypatch.setattr(JobAttempt, "_end_script", fenced)
    slot.perform(*_take(counted, slot))
    assert took == [True, False]  # the pair's reply not taken: the pass ran
    assert grid.state(ids[1]) is JobState.RUNNING  # not this slot's end to record
    # The PLACE ran after the refused END and placed cell 2 (the fenced cell 1 holds its sweep
    # slot still); the pass placed nothing more.
    assert r.lrange(node_queue, 0, -1) == [ids[2].encode()]
    assert r.smembers(keys.group_slots(gid)) == {ids[1].encode(), ids[2].encode()}
    assert set(r.hkeys(keys.node_held(n1))) <= {ids[1].encode(), ids[2].encode()}
    assert [i.decode() for i in r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1)] == ids[3:]


def test_a_cells_end_whose_node_has_a_job_queued_for_its_slot_runs_no_pass(counted, r, grid, settings,
                                                                           monkeypatch, n1):
    """At cell 1's end a job waits in the node's queue for its one idle slot (placed there by
    another pass): the PLACE sent with the END places nothing, and the slot's pass, which would
    find no room either, is not run (its survey was a round trip of its own); the hint is kept
    for the slot's next end."""
    from agent.attempt import JobAttempt
    from agent.negotiator import Negotiator

    gid, ids = _sweep_on_one_node(grid, r, n1)
    slot = _slot(counted, settings, n1)
    slot.perform(*_take(counted, slot))  # cell 0: the pass places cell 1, with a hint
    passes: list[int] = []
    run_once = Negotiator.run_once

    def counting(self, *a, **kw):
        passes.append(1)
        return run_once(self, *a, **kw)

    end_script = JobAttempt._end_script

    def queued(self, *a, **kw):
        r.hset(keys.node_running(n1), "other", "x")  # the node's other slot runs a job
        r.rpush(keys.rq_queue(keys.node_queue(n1)), "placed-for-this-slot")
        return end_script(self, *a, **kw)

    monkeypatch.setattr(Negotiator, "run_once", counting)
    monkeypatch.setattr(JobAttempt, "_end_script", queued)
    slot.perform(*_take(counted, slot))
    assert grid.state(ids[1]) is JobState.FINISHED
    assert passes == [] and slot.placing.spoken and slot.placing._hint is not None
    assert r.lrange(keys.rq_queue(keys.node_queue(n1)), 0, -1) == [b"placed-for-this-slot"]
    assert r.scard(keys.group_slots(gid)) == 0 and ids[2].encode() in r.lrange(keys.rq_queue(keys.PENDING_QUEUE), 0, -1)


def test_a_pair_whose_reply_was_lost_sends_the_end_again_alone_and_acts_on_no_placement(
        broker, r, grid, settings, monkeypatch, n1):
    """The link drops after the END ran, before its reply came back: the END is sent again, alone
    (it finds its end recorded by the first), and the PLACE sent with it (run or not), whose reply
    is never read, is not taken as the slot's placement: the slot's pass decides (and finds the
    next cell in its node's queue where the PLACE ran). The cell is placed once, the sweep within
    max_parallel, the end recorded once."""
    from tests.support.proxy import ReplyDropper

    gid, ids = _sweep_on_one_node(grid, r, n1)
    armed: list[bool] = []  # from cell 1's end on: the END's reply (ended, no errors) is lost
    proxy = ReplyDropper(broker.port, guarded.END.sha.encode(), lambda reply: bool(armed)
                         and reply.startswith(b"*2\r\n:1\r\n*0\r\n"))
    try:
        cut = redis.Redis(host="127.0.0.1", port=proxy.port, password=broker.password)
        slot = _slot(cut, settings, n1)
        took = _took(monkeypatch)
        for k in range(2):
            armed += [True] * k
            slot.perform(*_take(cut, slot))
            assert grid.state(ids[k]) is JobState.FINISHED
        assert len(proxy.dropped) == 1
        assert took == [None, False]  # cell 0: no hint (the pass); cell 1: the pair's reply lost
        assert r.lrange(keys.rq_queue(keys.node_queue(n1)), 0, -1) == [ids[2].encode()]
        assert r.smembers(keys.group_slots(gid)) == {ids[2].encode()}
        assert [a.get("reason") for a in grid.get(ids[1]).attempts] == [None]
    finally:
        proxy.close()


def test_a_gathered_sweeps_cell_end_places_the_next_cell_from_the_hint(counted, r, grid, settings, monkeypatch, n1):
    """A sweep with a gather job after it (`after=` its cells): every cell has a dependent, so the
    END script leaves the end to RQ's steps (the cell holds its sweep slot until they run) and the
    PLACE sent with it finds the sweep full. The hint is kept for the placement after those steps:
    one pass for the whole sweep (its first cell's end), not one per cell."""
    from agent.negotiator import Negotiator

    gid, ids = _sweep_on_one_node(grid, r, n1)
    grid.submit(JobSpec(command="true", after=tuple(ids)))
    passes: list[int] = []
    run_once = Negotiator.run_once

    def counting(self, *a, **kw):
        passes.append(1)
        return run_once(self, *a, **kw)

    monkeypatch.setattr(Negotiator, "run_once", counting)
    slot = _slot(counted, settings, n1)
    for k in range(4):
        slot.perform(*_take(counted, slot))
        assert grid.state(ids[k]) is JobState.FINISHED
        assert r.lrange(keys.rq_queue(keys.node_queue(n1)), 0, -1) == [ids[k + 1].encode()]
    assert passes == [1]
    assert r.scard(keys.group_slots(gid)) == 1
