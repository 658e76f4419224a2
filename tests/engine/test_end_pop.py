"""A slot's next job popped in the round trip of its job's END (issue 17, a faster plain path).

A busy slot made three round trips per job: its pop, its START, its END. The pop of its next job
now goes in the END's write (agent/rqadapter/worker.py `pop_with_end`, agent/lua.py `Lua.then`),
and what it claims is the slot's next job; what it claimed and the slot does not take (it stops,
is suspended, or the reply is lost) goes back in line, never lost, never run twice. Round trips
are counted on the process's writes to the broker, not timed."""

from __future__ import annotations

import pytest
import redis

from agent import claim, guarded
from gridcore import keys
from gridcore.models import JobSpec, JobState
from tests.engine.test_idle import _worker


class _Sends:
    """The process's writes to the broker (one round trip each), and the scripts each names."""

    def __init__(self, monkeypatch):
        import redis.connection

        self.sent: list[set[str]] = []
        self.raw: list[bytes] = []
        real = redis.connection.AbstractConnection.send_packed_command
        names = {claim._POP_SCRIPT.sha.encode(): "pop", guarded.END.sha.encode(): "end",
                 guarded.START.sha.encode(): "start"}

        def send(conn, command, check_health=True):
            data = b"".join(bytes(p) for p in (command if isinstance(command, list) else [command]))
            self.sent.append({name for sha, name in names.items() if sha in data})
            self.raw.append(data)
            return real(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)

    def count(self, names: set[str]) -> int:
        return sum(1 for s in self.sent if s == names)


def _known_scripts(r) -> None:
    """A broker that knows the slot's scripts, as one does after its first jobs (each is loaded
    at its first NOSCRIPT; the first END's pop then runs before the END it went with, and takes
    nothing: claim.pop_command)."""
    for script in (claim._POP_SCRIPT, guarded.START, guarded.END):
        r.script_load(script.text)


def _finished(grid, ids) -> list[JobState]:
    return [grid.state(i) for i in ids]


def test_a_busy_slot_pops_its_next_job_in_its_jobs_end(settings, r, grid, monkeypatch):
    """Five jobs queued, one slot draining them (burst): each END carries the next pop, which
    takes the next job; the slot pops on its own only for its first job and after its last (the
    last END's pop found nothing). Before, a pop of its own per job: six."""
    ids = grid.submit_many([JobSpec(command="true") for _ in range(5)])
    worker = _worker(r, settings)
    _known_scripts(r)
    sends = _Sends(monkeypatch)
    worker.work(burst=True)
    assert _finished(grid, ids) == [JobState.FINISHED] * 5
    assert sends.count({"end", "pop"}) == 5, sends.sent
    assert sends.count({"end"}) == 0 and sends.count({"pop"}) == 2, [s for s in sends.sent if s]
    assert sends.count({"start"}) == 5
    assert not r.hlen(keys.node_running(worker.node))


def test_the_next_jobs_order_is_the_queues(settings, r, grid, monkeypatch):
    """The job the END's pop takes is the one the slot's own pop would: the queue's first, one
    of a higher priority submitted while the first job ran ahead of those queued before it."""
    ids = grid.submit_many([JobSpec(command="true") for _ in range(3)])
    worker = _worker(r, settings)
    _known_scripts(r)
    urgent: list[str] = []
    perform = worker.performer.perform

    def performing(job, queue, taken):
        if not urgent:  # the first job is taken: the urgent one comes while it runs
            urgent.append(grid.submit(JobSpec(command="true", priority=10)))
        return perform(job, queue, taken)

    worker.performer.perform = performing
    order = _order(worker)
    sends = _Sends(monkeypatch)
    worker.work(burst=True)
    assert order == [ids[0], urgent[0], *ids[1:]]
    assert sends.count({"end", "pop"}) == 4


def test_a_job_with_dependents_lets_them_go_ahead_of_what_its_end_would_pop(settings, r, grid):
    """A job whose END leaves its end to RQ's steps (it has dependents, released by those steps):
    the pop sent with it takes nothing, so a dependent of higher priority runs before the jobs
    queued behind (the pop would have taken the first of those before the release)."""
    parent = grid.submit(JobSpec(command="true", name="parent"))
    lows = [grid.submit(JobSpec(command="true", name=f"low{i}")) for i in range(2)]
    child = grid.submit(JobSpec(command="true", name="child", priority=5, after=(parent,)))
    worker = _worker(r, settings)
    order = _order(worker)
    worker.work(burst=True)
    assert order == [parent, child, *lows]


def _order(worker) -> list[str]:
    """The ids of the jobs the worker performs, in order."""
    order: list[str] = []
    perform = worker.performer.perform
    worker.performer.perform = lambda job, queue, taken: order.append(job.id) or perform(job, queue, taken)
    return order


def _stop_at_the_pop(worker, action):
    """`action(worker)` once, right after the first END whose pop took a job was answered."""
    pop_with_end = worker.pop_with_end
    done: list[bool] = []

    def wrapped(*args):
        then = pop_with_end(*args)
        if then is None or done:
            return then
        command, settle = then

        def settled(reply, later):
            settle(reply, later)
            if worker._next is not None:
                done.append(True)
                action(worker)

        return command, settled

    worker.performer.next_pop = wrapped
    return done


def test_a_slot_stopped_after_its_ends_pop_puts_that_job_back(settings, r, grid):
    """A stop that comes after the END's pop took the next job: RQ's loop ends before the slot
    looks for a job, and the slot puts it back at the front of its queue, unstarted."""
    ids = grid.submit_many([JobSpec(command="true") for _ in range(3)])
    worker = _worker(r, settings)
    _known_scripts(r)
    done = _stop_at_the_pop(worker, lambda w: setattr(w, "_stop_requested", True))
    worker.work(burst=False)
    assert done
    assert _finished(grid, ids) == [JobState.FINISHED, JobState.QUEUED, JobState.QUEUED]
    assert [i.decode() for i in r.lrange(keys.rq_queue("default"), 0, -1)] == ids[1:]
    assert not r.hlen(keys.node_running(worker.node))


def test_a_suspension_after_the_ends_pop_puts_that_job_back(settings, r, grid):
    """`rq suspend` after the END's pop took the next job: RQ's suspension wait would hold that
    job claimed for as long as it lasts; the slot puts it back as the wait begins, and waits."""
    import threading

    from rq.suspension import resume, suspend

    from tests.support.wait import eventually

    ids = grid.submit_many([JobSpec(command="true") for _ in range(2)])
    worker = _worker(r, settings)
    worker._install_signal_handlers = lambda: None  # not the main thread's loop
    _known_scripts(r)
    worker._suspension_checked = -1e9

    def suspended(w):
        suspend(r)
        w._suspension_checked = -1e9  # due at the loop's next look

    done = _stop_at_the_pop(worker, suspended)
    loop = threading.Thread(target=worker.work, kwargs={"burst": False}, daemon=True)
    loop.start()
    try:
        eventually(lambda: done, 20, 0.02, "the first job's END to pop the next")
        eventually(lambda: r.lrange(keys.rq_queue("default"), 0, -1) == [ids[1].encode()], 10, 0.02,
                   "the next job back in line while the slot is suspended")
        assert loop.is_alive()
        assert _finished(grid, ids) == [JobState.FINISHED, JobState.QUEUED]
        assert not r.hlen(keys.node_running(worker.node))
    finally:
        worker._stop_requested = True
        resume(r)
        loop.join(10)
    assert not loop.is_alive()


@pytest.mark.parametrize("how", ["lost", "refused"])
def test_an_ends_pop_whose_reply_was_not_taken_is_put_back_and_run_once(settings, r, grid, monkeypatch, how):
    """The END's round trip fails after the broker ran it and the pop (`lost`: the link drops
    as the replies come back), or the END finds the job not this slot's (`refused`: the pop ran
    all the same, its reply not taken): the claim it made goes back in line at the slot's next
    look, and every job runs once."""
    from agent.attempt import JobAttempt

    ids = grid.submit_many([JobSpec(command="true") for _ in range(3)])
    worker = _worker(r, settings)
    _known_scripts(r)
    end_script = JobAttempt._end_script
    tripped: list[str] = []

    def once(self, envelope, result, commands):
        if tripped or not commands:
            return end_script(self, envelope, result, commands)
        tripped.append(self.id)
        if how == "refused":
            ok, detail, replies = end_script(self, envelope, result, commands)
            return 0, detail, replies  # as if another node had reclaimed it: replies not taken
        end_script(self, envelope, result, commands)
        raise redis.ConnectionError("the link dropped as the replies came back")

    monkeypatch.setattr(JobAttempt, "_end_script", once)
    requeued: list[int] = []
    requeue_own = claim.requeue_own
    monkeypatch.setattr(claim, "requeue_own", lambda *a: requeued.append(requeue_own(*a)) or requeued[-1])
    worker.work(burst=True)
    assert tripped == [ids[0]]
    assert _finished(grid, ids) == [JobState.FINISHED] * 3
    assert requeued[0] == 1  # the next job, claimed by the lost pop, back in line first
    assert [len(grid.get(i).attempts) for i in ids] == [1, 1, 1]
    assert not r.hlen(keys.node_running(worker.node))


def test_a_sweeps_next_cell_is_placed_and_popped_in_its_cells_end(settings, r, grid, monkeypatch):
    """A throttled sweep on one node: a cell's END, the hint's PLACE of the next cell and the
    pop that takes it go in one write (agent/perform.py `_with_end`); the sweep stays within its
    max_parallel, every cell runs once."""
    from agent import runner
    from gridcore.placing import PLACE
    from tests.engine.test_end_place import _sweep_on_one_node

    monkeypatch.setattr("agent.negotiator.HINT_TTL", 60.0)  # as tests/engine/test_end_place.py says
    worker = _worker(r, settings, queues=(keys.node_queue(settings.agent.node_name), "default"))
    gid, ids = _sweep_on_one_node(grid, r, worker.node, cells=5)
    for text in (claim._POP_SCRIPT.text, guarded.START.text, guarded.END.text, PLACE):
        r.script_load(text)
    sends = _Sends(monkeypatch)
    import hashlib

    place = hashlib.sha1(PLACE.encode()).hexdigest()
    most = [0]  # the sweep's cells holding its slots, at each start
    real = type(guarded.START).__call__

    def counting(self, client, keys_, args, meanwhile=None):
        if self is guarded.START:
            most[0] = max(most[0], r.scard(keys.group_slots(gid)))
        return real(self, client, keys_, args, meanwhile)

    monkeypatch.setattr(type(guarded.START), "__call__", counting)
    try:
        worker.work(burst=True)
    finally:
        runner.close_cgroups()
    assert _finished(grid, ids) == [JobState.FINISHED] * 5
    assert [len(grid.get(i).attempts) for i in ids] == [1] * 5
    assert most[0] == 1
    trips = [s for s, data in zip(sends.sent, sends.raw) if place.encode() in data and s == {"end", "pop"}]
    assert len(trips) >= 3, [s for s in sends.sent if s]


def test_a_placed_jobs_end_without_a_hint_leaves_its_slot_to_the_placed_job_waiting(settings, r, grid):
    """A placed job ends with no hint of its slot's (the submitter placed it): its END carries no
    pop, and the slot's pass after it places the job waiting for placement, which its pop then
    takes ahead of the pool queue's plain jobs. A pop in the END's write would have claimed the
    first plain job, the pass would have found the node's one slot taken, and the placed job
    would have waited behind every plain job."""
    from gridcore.models import Resources
    from gridcore.records import Inventory
    from tests.support.records import node_record, put_node

    gb = 10**9
    node = settings.agent.node_name
    sec, usec = r.time()
    put_node(r, node, sec + usec / 1e6, node_record(inventory=Inventory(cpus=4, memory_total=8 * gb), slots=1,
                                                      queues=("default",)))
    first = grid.submit(JobSpec(command="true", resources=Resources(memory=5 * gb)))
    assert r.lrange(keys.rq_queue(keys.node_queue(node)), 0, -1) == [first.encode()]  # placed at once
    waiting = grid.submit(JobSpec(command="true", resources=Resources(memory=5 * gb)))  # does not fit beside it
    plain = grid.submit_many([JobSpec(command="true") for _ in range(3)])
    worker = _worker(r, settings, queues=(keys.node_queue(node), "default"))
    order = _order(worker)
    try:
        worker.work(burst=True)
    finally:
        from agent import runner

        runner.close_cgroups()
    assert order == [first, waiting, *plain]
