"""An idle slot's wait for a job and the pop that claims it go in one round trip (issue 17,
latency): the pop is sent behind the blocking BLMOVE, and the broker runs it as soon as the
wait ends. A job submitted to an idle grid was two round trips from its claim before."""

from __future__ import annotations

import threading

import pytest
import redis

from agent import claim
from gridcore import keys
from gridcore.models import JobSpec
from tests.engine.test_idle import _worker

POOL = keys.rq_queue("default")
NODE_QUEUE = keys.rq_queue(keys.node_queue("n"))

pytestmark = pytest.mark.both_brokers


class Sends:
    """What one thread sends to the broker: each command, or each pipeline (packed into one
    send), is one `send_packed_command` of a connection: one round trip."""

    def __init__(self, monkeypatch):
        import redis.connection

        self.thread = threading.get_ident()
        self.sent: list[bytes] = []
        real = redis.connection.AbstractConnection.send_packed_command

        def send(conn, command, check_health=True):
            if threading.get_ident() == self.thread:
                self.sent.append(b"".join(command) if isinstance(command, list) else command)
            return real(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)

    def since_wait(self) -> list[bytes]:
        """The sends from the last one that holds a BLMOVE on."""
        last = max(i for i, c in enumerate(self.sent) if b"BLMOVE" in c)
        return self.sent[last:]


def _queued(r, jid: str, queue: str = POOL) -> None:
    r.hset(keys.rq_job(jid), mapping={"origin": "default", "status": "queued"})
    r.rpush(queue, jid)


def _pop(r, timeout: float = 0.05) -> claim.Popped:
    return claim.wait_pop(r, "n", "n.x.0", [NODE_QUEUE, POOL], POOL, timeout)


def test_an_idle_slot_claims_a_job_submitted_while_it_waits_in_the_waits_round_trip(settings, grid, r, monkeypatch):
    worker = _worker(r, settings)
    worker.register_birth()
    sends = Sends(monkeypatch)
    came = threading.Event()

    def submit() -> None:
        # Once the slot is blocked in its wait (a client of the broker blocked on a list).
        for _ in range(500):
            if int(r.info("clients")["blocked_clients"]):
                break
            threading.Event().wait(0.01)
        came.jid = grid.submit(JobSpec(command="true"))
        came.set()

    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    job, queue = worker.dequeue_job_and_maintain_ttl(30)
    submitter.join(10)
    assert came.is_set() and job.id == came.jid and queue.key == POOL
    trip = sends.since_wait()
    assert len(trip) == 1 and b"EVALSHA" in trip[0] and claim._POP_SCRIPT.sha.encode() in trip[0], trip
    assert r.hget(keys.node_running(worker.node), job.id) == claim.marker(worker.name).encode()
    assert not r.llen(keys.node_taking(worker.node))


def test_a_timed_out_waits_pop_is_the_idle_slots_next_look(settings, r, monkeypatch):
    """An idle slot's loop pops once, then only behind its waits: a wait that timed out has
    popped already, so the loop waits again without a pop of its own (one was sent each time)."""
    worker = _worker(r, settings)
    worker.register_birth()
    monkeypatch.setattr(worker, "turn_wait", lambda now=None: 0.05)
    sends = Sends(monkeypatch)
    threading.Timer(0.6, lambda: setattr(worker, "_stop_requested", True)).start()
    assert worker.dequeue_job_and_maintain_ttl(30) is None
    sha = claim._POP_SCRIPT.sha.encode()
    waits = [c for c in sends.sent if b"BLMOVE" in c]
    pops = [c for c in sends.sent if sha in c and b"BLMOVE" not in c]
    assert len(waits) >= 3 and all(sha in c for c in waits) and len(pops) == 1, (len(waits), len(pops))


def test_a_job_claimed_as_the_agent_went_silent_goes_back_in_line(settings, grid, r):
    """The agent's pulse stopped while the slot waited (agent/pulse.py): the job its wait's pop
    claimed is not started here but put back, as the waits' takings are."""
    worker = _worker(r, settings)
    worker.register_birth()
    box = {}

    def submit() -> None:
        for _ in range(500):
            if int(r.info("clients")["blocked_clients"]):
                break
            threading.Event().wait(0.01)
        worker.performer.orphaned.set()
        box["jid"] = grid.submit(JobSpec(command="true"))
        threading.Event().wait(0.3)
        worker._stop_requested = True

    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    assert worker.dequeue_job_and_maintain_ttl(30) is None
    submitter.join(10)
    assert r.lrange(POOL, 0, -1) == [box["jid"].encode()]
    assert not r.hlen(keys.node_running(worker.node)) and not r.llen(keys.node_taking(worker.node))


def test_a_wait_that_times_out_pops_the_node_queue_in_its_round_trip(r, monkeypatch):
    sends = Sends(monkeypatch)
    popped = _pop(r)
    assert popped.taken is None and not popped.draining and len(sends.sent) == 1
    _queued(r, "placed", NODE_QUEUE)  # a placed job whose nudge went to another node
    before = len(sends.sent)
    popped = _pop(r)
    assert popped.taken is not None and popped.taken.job_id == "placed" and popped.taken.queue_key == NODE_QUEUE
    assert len(sends.sent) - before == 1


def test_the_node_queue_goes_first_and_what_the_wait_took_goes_back(r):
    _queued(r, "placed", NODE_QUEUE)
    _queued(r, "plain")
    popped = _pop(r)
    assert popped.taken.job_id == "placed"
    assert r.lrange(POOL, 0, -1) == [b"plain"] and not r.llen(keys.node_taking("n"))


def test_a_draining_node_takes_nothing_and_gives_back_what_its_wait_took(r):
    r.hset(keys.node("n"), "draining", "1")
    _queued(r, "plain")
    popped = _pop(r)
    assert popped.draining and popped.taken is None
    assert r.lrange(POOL, 0, -1) == [b"plain"] and not r.hlen(keys.node_running("n"))


def test_a_script_the_broker_forgot_is_loaded_and_the_job_still_claimed(r):
    _queued(r, "plain")
    r.script_flush()
    popped = _pop(r)
    assert popped.taken.job_id == "plain" and not r.llen(keys.node_taking("n"))
    assert r.hget(keys.node_running("n"), "plain") == claim.marker("n.x.0").encode()


def test_a_retyped_pool_queue_is_raised_unless_the_pop_took_a_job(r):
    r.set(POOL, "x")  # a writer retyped the pool queue: the wait is refused at once
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        _pop(r)
    _queued(r, "placed", NODE_QUEUE)
    assert _pop(r).taken.job_id == "placed"  # the job first; the next wait meets the error again
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        _pop(r)


def test_a_retyped_running_hash_fails_the_pop_not_the_job(r):
    r.set(keys.node_running("n"), "x")  # the pop script removes it (quarantined) and takes the job
    _queued(r, "plain")
    assert _pop(r).taken.job_id == "plain"
    r.set(keys.node_taking("n"), "x")  # the taking list retyped: neither runs; nothing is lost
    _queued(r, "second")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        _pop(r)
    assert r.lrange(POOL, 0, -1) == [b"second"]
