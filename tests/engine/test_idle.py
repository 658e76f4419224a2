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

from gridcore import keys
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
