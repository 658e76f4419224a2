"""An idle node costs little, and its blocking waits still end at once for what matters.

The agent's loops used to poll (the daemon ten times a second, each slot and the scheduler
every second): most of an idle node's CPU, and its broker's. Now they block, woken by a signal
(a stop, a slot that exited), a job, or their next due time (issue 17, idle cost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gridcore import events, keys
from tests.support.wait import eventually

IDLE_COMMANDS_PER_S = 25
"""An idle agent with 2 slots (heartbeat every 2 s) sent ~60 commands a second before."""


def commands(r) -> int:
    return int(r.info("stats")["total_commands_processed"])


def test_an_idle_agent_sends_few_commands_yet_stops_and_restarts_slots_at_once(agents, r):
    a = agents("node-a", slots=2, heartbeat_interval=2.0)
    time.sleep(1.0)  # past the start's own traffic
    before, t0 = commands(r), time.monotonic()
    time.sleep(5.0)
    rate = (commands(r) - before - 1) / (time.monotonic() - t0)
    assert rate < IDLE_COMMANDS_PER_S, rate

    # A slot that dies is seen at once (SIGCHLD wakes the agent), not at the next heartbeat.
    workers = {w for w in r.smembers(keys.rq_workers()) if b"node-a" in w}
    slot = next(c for c in _children(a.proc.pid) if "agent.slotmain" in " ".join(c.cmdline()))
    slot.kill()
    eventually(lambda: {w for w in r.smembers(keys.rq_workers()) if b"node-a" in w} - workers, 5, 0.05,
               "the dead slot to be replaced")

    # The slots' long waits for a job end at the stop signal, not at their timeout.
    t0 = time.monotonic()
    assert a.stop() == 0
    assert time.monotonic() - t0 < 2.5, time.monotonic() - t0


def monitored(r, seconds: float) -> list[dict]:
    """The commands clients sent the broker over `seconds` (not those scripts ran), by MONITOR."""
    seen, deadline = [], time.monotonic() + seconds
    with r.monitor() as m:
        for cmd in m.listen():
            if time.monotonic() >= deadline:
                break
            if cmd.get("client_type") != "lua":
                seen.append(cmd)
    return seen


def test_an_idle_nodes_slots_take_turns_and_beat_their_worker_keys_by_rqs_rule(agents, r):
    """An idle node's slots look (a pop and a blocking wait) every DEQUEUE_WAKE s as a node, one
    slot per look, not each slot every DEQUEUE_WAKE s; they write nothing while their worker keys
    live long (RQ's rule), and RQ (`rq info`, rq-dashboard) still shows them alive and idle."""
    from rq import Worker

    from agent.rqadapter.worker import DEQUEUE_WAKE, IDLE_BEAT_MARGIN

    agents("node-a", slots=2, heartbeat_interval=2.0)
    time.sleep(1.0)  # past the start's own traffic
    window = 4 * DEQUEUE_WAKE
    seen = monitored(r, window)
    waits = [c for c in seen if c["command"].upper().startswith("BLMOVE")]
    assert len(waits) <= window / DEQUEUE_WAKE + 2, [c["command"] for c in waits]  # was 2 per DEQUEUE_WAKE
    beats = [c["command"] for c in seen if "rq:worker:node-a" in c["command"]]
    assert beats == []  # was 4 commands per slot per wake
    workers = [w for w in Worker.all(connection=r) if w.name.startswith("node-a.")]
    assert len(workers) == 2 and {w.get_state() for w in workers} == {"idle"}
    ttl = workers[0].worker_ttl + 60
    assert all(r.ttl(w.key) > IDLE_BEAT_MARGIN - window for w in workers) and all(r.ttl(w.key) <= ttl for w in workers)


def _children(pid: int):
    import psutil

    return psutil.Process(pid).children()


def test_the_agents_wait_ends_when_a_child_exits():
    """The daemon's loop (agent/wakeup.py) sleeps until its due time unless a signal comes."""
    from agent.wakeup import Wakeup

    wakeup = Wakeup()
    try:
        t0 = time.monotonic()
        wakeup.wait(0.2)
        assert time.monotonic() - t0 >= 0.19  # nothing came: it waited
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
        t0 = time.monotonic()
        wakeup.wait(10.0)
        assert time.monotonic() - t0 < 5.0
        child.wait(5)
        os.kill(os.getpid(), signal.SIGCHLD)  # one that came before the wait is not lost
        t0 = time.monotonic()
        wakeup.wait(10.0)
        assert time.monotonic() - t0 < 1.0
    finally:
        wakeup.close()


def test_the_agents_loop_does_not_spin_on_a_restart_it_cannot_make_now(settings):
    """A slot due for a restart while the broker is away (or the agent stops) is restarted only
    once the broker is back: the loop then waits for its heartbeat, it does not go round at once."""
    from agent.daemon import Agent, SlotProcess

    agent = Agent(settings)
    dead = SlotProcess(0, "node.x.0")
    agent.slots = [dead]
    beat = time.monotonic() + 2.0
    dead.restart_at = time.monotonic() + 0.5
    assert agent.next_due(beat, 10.0) == dead.restart_at  # its backoff ends before the heartbeat
    dead.restart_at = time.monotonic() - 1.0  # overdue, but the broker is away: no restart yet
    agent.broker_down_since = time.monotonic()
    assert agent.next_due(beat, 10.0) == beat
    agent.broker_down_since = None
    agent.stopping = True  # nor while the agent stops
    assert agent.next_due(beat, 10.0) == beat


def test_a_slots_pulse_watch_looks_when_the_pulse_would_turn_late_not_several_times_a_second(r):
    """A fresh pulse is next looked at when it would turn late (half the silence limit), unless
    stamped again; a late one, and an orphaned slot's, every `every` as before (agent/pulse.py)."""
    import struct

    from agent.pulse import WATCH_EVERY, Pulse, PulseWatch

    pulse = Pulse()
    watch = PulseWatch(pulse.fd, 15.0, r, on_orphaned=lambda: None)
    assert watch.every == 0.75
    pulse.stamp()
    assert 7.0 < watch.next_look() <= 7.5 + WATCH_EVERY[0]  # was every 0.75 s
    os.pwrite(pulse.fd, struct.pack("d", time.monotonic() - 7.3), 0)  # about to turn late
    assert watch.next_look() == watch.every
    os.pwrite(pulse.fd, struct.pack("d", time.monotonic() - 9.0), 0)  # late
    assert not watch.check() and watch.next_look() == watch.every
    watch.orphaned.set()
    pulse.stamp()
    assert watch.next_look() == watch.every


def test_the_scheduler_waits_for_an_event_and_its_stop_ends_the_wait(r):
    """An idle scheduler blocks on the grid's event stream (a retry is scheduled at an attempt's
    end, which writes it) instead of looking at its registries every second; an event ends the
    wait, and so does its stop signal (the slot's exit waits for the scheduler)."""
    import threading

    from agent.rqadapter.scheduler import GridScheduler, _StopWaiting
    from gridcore import events

    scheduler = GridScheduler(["default"], connection=r)
    events.emit(r, 1.0, "finished", job="before", message="m")
    assert scheduler._due() == (False, None)  # the look notes the newest event: the wait is for later ones
    threading.Timer(0.3, lambda: events.emit(r, 1.0, "retried", job="j", message="m")).start()
    scheduler._wait_for_event(60)
    assert scheduler._last_event == r.xrevrange(keys.EVENTS, count=1)[0][0].decode()

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        scheduler._install_signal_handlers()
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(_StopWaiting):
            scheduler._wait_for_event(60)
        assert scheduler._stop_requested
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_the_scheduler_knows_when_its_earliest_job_is_due(r):
    from rq.utils import current_timestamp

    from agent.rqadapter.scheduler import GridScheduler

    scheduler = GridScheduler(["default", "other"], connection=r)
    scheduler._acquired_locks = {"default", "other"}
    now = current_timestamp()
    r.zadd("rq:scheduled:other", {"later": now + 30, "sooner": now + 20})
    assert scheduler._due() == (False, now + 20)
    r.zadd("rq:scheduled:default", {"now": now})
    assert scheduler._due() == (True, now)


def test_an_ordinary_heartbeat_writes_in_one_round_trip_what_the_full_one_does(settings, r, monkeypatch):
    """The first heartbeat writes every field; the next ones write the live fields and the beat at
    the broker's time with one script, in the same round trip as the shared keys' heal; a beat
    after a silence longer than the node timeout still says the node is back."""
    from dataclasses import replace

    from agent.daemon import Agent
    from gridcore.records import NodeRecord

    agent = Agent(settings)
    agent.read_inventory()
    agent.heartbeat(first=True)
    first = NodeRecord.decode(r.hgetall(keys.node(agent.node)), "node")
    trips = []
    real = agent.conn.pipeline
    monkeypatch.setattr(agent.conn, "pipeline", lambda *a, **kw: trips.append(1) or real(*a, **kw))
    sec, usec = r.time()
    agent.heartbeat()
    assert trips == [1]
    beat = NodeRecord.decode(r.hgetall(keys.node(agent.node)), "node")
    # The registry's score (read by earlier versions only): from the last beat's time and the time since.
    assert beat.beat >= sec + usec / 1e6 and abs(beat.beat - r.zscore(keys.NODES, agent.node)) < 1.0
    assert replace(beat, beat=0.0, load=first.load) == replace(first, beat=0.0)

    r.hset(keys.node(agent.node), "beat", repr(beat.beat - agent.cfg.node_timeout - 5))  # silent since
    agent._beat_anchor = (agent._beat_anchor[0] - 100, agent._beat_anchor[1])  # and a clock step
    agent.heartbeat()
    assert [e.kind for e in events.newest(r, 1)] == ["node_back"]
    now = NodeRecord.decode(r.hgetall(keys.node(agent.node)), "node").beat
    assert r.zscore(keys.NODES, agent.node) == now  # written again, at the beat's own time


def test_the_schedulers_wait_outlasts_its_connections_socket_timeout(settings):
    """RQ gives a slot's connection (and so its scheduler's) a socket timeout: a wait longer than
    that is several reads, none of which times out (it was an outage, and a reconnect, each time)."""
    from agent.rqadapter.scheduler import GridScheduler
    from gridcore.connection import connect

    conn = connect(settings, socket_timeout=3.0)
    scheduler = GridScheduler(["default"], connection=conn)
    scheduler._due()
    t0 = time.monotonic()
    scheduler._wait_for_event(4.0)  # raised TimeoutError at 3 s before
    assert time.monotonic() - t0 >= 3.9 and scheduler._last_event == "0-0"


class RoundTrips:
    """Counts the round trips this process makes to the broker: each command, or each pipeline
    (packed into one send), is one `send_packed_command` of a connection."""

    def __init__(self, monkeypatch):
        import redis.connection

        self.sent: list = []
        real = redis.connection.AbstractConnection.send_packed_command

        def send(conn, command, check_health=True):
            self.sent.append(command)
            return real(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)

    def __len__(self) -> int:
        return len(self.sent)


def _worker(r, settings, slot: int = 0, slots: int = 1, queues=("default",)):
    from agent.rqadapter.worker import GridWorker
    from agent.verify import Gatekeeper
    from gridcore.signing import AuthorizedKeys

    return GridWorker(list(queues), connection=r, name=f"{settings.agent.node_name}.x.{slot}",
                      node=settings.agent.node_name, slot=slot, settings=settings,
                      gate=Gatekeeper(r, AuthorizedKeys(settings.authorized_keys_path), settings.agent),
                      marker_env={}, slots=slots)


def test_a_beat_with_a_sweep_due_reads_what_the_sweep_needs_in_its_own_round_trip(settings, r, monkeypatch):
    """The node-loss sweep (every node_timeout / 3) reads the broker's run id and the registry of
    nodes: in the heartbeat's round trip, not in two of its own."""
    from agent.daemon import Agent

    agent = Agent(settings)
    agent.read_inventory()
    agent.heartbeat(first=True)
    agent.last_sweep = 0.0  # a sweep is due
    trips = RoundTrips(monkeypatch)
    agent.heartbeat()
    assert len(trips) == 1, trips.sent
    assert agent.last_sweep > 0 and agent.broker_run_id == r.info("server")["run_id"]
    r.zadd(keys.NODES, {"other": 1.0})  # a node down for long, with nothing to reclaim
    agent.last_sweep = 0.0
    before = len(trips)
    agent.heartbeat()
    assert len(trips) - before == 2  # and the down node's beat, read by the sweep itself


def test_the_placement_loops_wait_reads_what_waits_in_the_same_round_trip(settings, r, monkeypatch):
    """The loop's periodic look at the pending queue (its safety net) rides on its wait for
    wake entries: one round trip per wait, and `waiting` is what waits as the wait ends."""
    from agent.negotiator import Negotiator

    neg = Negotiator(r, owner="n.x", node="n")
    trips = RoundTrips(monkeypatch)
    last, woke = neg.wait_wake("0-0", 0.05)
    assert (woke, neg.waiting, len(trips)) == (False, 0, 1)
    r.rpush(keys.rq_queue(keys.PENDING_QUEUE), "a", "b")
    r.xadd(keys.PLACE_WAKES, {"node": "n", "any": "0"})
    last, woke = neg.wait_wake(last, 0.05)
    assert (woke, neg.waiting, len(trips)) == (True, 2, 4)  # the two writes above, and the wait
    r.delete(keys.rq_queue(keys.PENDING_QUEUE))
    r.set(keys.rq_queue(keys.PENDING_QUEUE), "x")  # retyped by a writer: nothing to place there
    assert neg.wait_wake(last, 0.05) == (last, False) and neg.waiting == 0


def test_an_idle_slot_beats_its_worker_key_by_rqs_rule_not_at_every_wake(settings, r):
    """An idle slot beats when its worker key would expire within IDLE_BEAT_MARGIN (RQ's own idle
    worker beats `worker_ttl - 15` s apart, its key living `worker_ttl + 60` s), whatever TTL the
    last beat gave the key: a job's start gives it less."""
    from agent.rqadapter.worker import IDLE_BEAT_MARGIN

    worker = _worker(r, settings)
    worker.idle_beat()  # never beaten: due
    ttl = worker.worker_ttl + 60
    assert ttl - 2 <= r.ttl(worker.key) <= ttl
    r.expire(worker.key, 1000)
    worker.idle_beat()
    worker._beat_at -= ttl - IDLE_BEAT_MARGIN - 5  # not due yet
    worker.idle_beat()
    assert r.ttl(worker.key) > ttl  # not beaten: still the TTL set by hand
    worker._beat_at -= 5
    worker.idle_beat()
    assert r.ttl(worker.key) <= ttl
    with r.pipeline() as pipe:  # a job's start: a shorter TTL
        worker.heartbeat(90, pipeline=pipe)
        pipe.execute()
        worker.beat_recorded(True)
    worker._beat_at -= 90 - IDLE_BEAT_MARGIN
    worker.idle_beat()
    assert r.ttl(worker.key) > 90


def _looks(slot, now: float, until: float) -> list[float]:
    """When `slot` looks from `now` on, waiting its turn after each look (its idle loop)."""
    out, t = [], now + slot.turn_wait(now)
    while t <= until:
        out.append(t)
        t += slot.turn_wait(t)
    return out


def test_a_nodes_idle_slots_take_turns_to_look(settings, r):
    """Slot i of n wakes at its part of a round of n looks: the node looks every DEQUEUE_WAKE s,
    each look by one slot (each slot's wait shorter than its connection's socket timeout)."""
    from agent.rqadapter.worker import DEQUEUE_WAKE, WAIT_MARGIN

    for n in (1, 2, 3, 5):
        slots = [_worker(r, settings, i, n) for i in range(n)]
        timeout = slots[0].connection.connection_pool.connection_kwargs["socket_timeout"]
        round_ = max(DEQUEUE_WAKE, min(DEQUEUE_WAKE * n, timeout - WAIT_MARGIN))
        for now in (1000.0, 1003.3, 1011.99):
            waits = [s.turn_wait(now) for s in slots]
            assert all(0.05 <= w <= round_ + 0.05 and w < timeout - WAIT_MARGIN + 0.05 for w in waits), waits
            looks = sorted(now + w + k * round_ for w in waits for k in range(3))
            gaps = {round(b - a, 6) for a, b in zip(looks, looks[1:])}
            assert gaps == {round(round_ / n, 6)}, (n, now, waits, gaps)
            assert round_ / n <= DEQUEUE_WAKE
        # Some slots busy (a job each, in the node's running hash): their turns pass, and the
        # idle ones still look often enough that the node looks every DEQUEUE_WAKE s. Each idle
        # slot learns it from its own (empty) pop, no command more.
        for busy in range(1, n):
            r.delete(keys.node_running(settings.agent.node_name))
            r.hset(keys.node_running(settings.agent.node_name), mapping={f"job{i}": str(i) for i in range(busy)})
            idle = slots[busy:]
            for s in idle:
                assert s._pop() is None
            for now in (1000.0, 1003.3, 1011.99):
                looks = sorted(t for s in idle for t in _looks(s, now, now + 60))
                gaps = [b - a for a, b in zip(looks, looks[1:])]
                assert looks[0] - now <= DEQUEUE_WAKE + 0.05 and max(gaps) <= DEQUEUE_WAKE + 1e-6, (n, busy, now, gaps)
        r.delete(keys.node_running(settings.agent.node_name))


def test_a_start_that_wrote_nothing_leaves_the_slots_beat_due(settings, r, grid):
    """A job's start records the slot's heartbeat for its script; a start that wrote nothing (the
    job canceled before it started, the node full, a replay, taken elsewhere) wrote no beat:
    the idle slot must not count it, or it would wait `ttl - IDLE_BEAT_MARGIN` s with its worker
    key possibly gone (`rq info` then lists no worker for a live slot)."""
    from agent.claim import pop
    from agent.rqadapter.jobs import GridJob, GridQueue
    from gridcore.models import JobSpec, JobState

    worker = _worker(r, settings)
    jid = grid.submit(JobSpec(command="true"))
    popped = pop(r, worker.node, worker.name, [keys.rq_queue(keys.node_queue(worker.node)), keys.rq_queue("default")])
    grid.cancel(jid)  # after the slot took it: its start finds it canceled and writes nothing
    job = GridJob.fetch(jid, connection=r, serializer=worker.serializer)
    worker.performer.perform(job, GridQueue("default", connection=r, serializer=worker.serializer), popped.taken)
    assert grid.state(jid) is JobState.CANCELED and not r.exists(worker.key)
    worker.idle_beat()
    assert r.exists(worker.key)  # beaten: the start's beat was never written


def test_a_job_beat_that_failed_is_not_counted_by_a_later_write(settings, grid, r):
    """RQ's beat during a job (`maintain_heartbeats`) queues the worker's beat on a pipeline that
    may fail (here its worker key retyped by a broker writer): the beat is dropped, so a later
    start's script, written without a beat of its own, does not count it as written."""
    import redis

    from agent.rqadapter.jobs import GridJob
    from gridcore.models import JobSpec
    from rq.executions import Execution

    worker = _worker(r, settings)
    job = GridJob.fetch(grid.submit(JobSpec(command="true")), connection=r)
    r.rpush(worker.key, "x")
    with pytest.raises(redis.ResponseError):
        worker.maintain_heartbeats(job, Execution("e1", job.id, connection=r, worker_name=worker.name))
    worker.beat_recorded(True)  # a start's script that wrote, with no beat queued on it
    assert worker.beat_due() and worker._beat_ttl == 0  # never beaten: its idle beat is still due
