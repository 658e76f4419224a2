"""The broker restarts mid-run (AOF on): running jobs go on, their output is buffered and
flushed, results are written once it is back, idle slots reconnect, nothing is lost, nothing
is marked lost, nothing runs twice."""

from __future__ import annotations

import time

from gridcore import keys
from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import NODE_TIMEOUT, TRANSIENT, assert_accounted, job_procs, running_on
from tests.support.wait import eventually

LINES = 80
TICKER = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.1; done"


def test_broker_restart_during_run_loses_and_doubles_nothing(broker, agents, grid, r, cleanup_jobs):
    for name in ("node-a", "node-b"):
        agents(name, slots=2, node_timeout=NODE_TIMEOUT)
    ticker = grid.submit(JobSpec(command=TICKER, name="ticker"))
    batch = grid.submit_many([JobSpec(command=f"sleep 0.3; echo job {i}") for i in range(24)])
    ids = [ticker, *batch]
    cleanup_jobs.extend(ids)
    eventually(lambda: running_on(r, ticker) and job_procs(ticker), 20, 0.1, "the ticker to run", tolerate=TRANSIENT)
    time.sleep(0.5)
    running_before = {j for j in ids if r.hexists(keys.ACTIVE, j)}
    assert running_before, "no job was running when the broker went away"

    broker.stop()  # SIGTERM: Redis writes the AOF out and exits
    time.sleep(NODE_TIMEOUT + 2)  # longer than the node timeout: no one may count it as node loss
    assert job_procs(ticker), "the running job died with the broker"
    broker.start()

    late = grid.submit(JobSpec(command="echo after the restart"))  # idle slots reconnected
    ids.append(late)
    cleanup_jobs.append(late)
    states = assert_accounted(r, grid, ids, timeout=90)
    assert all(s is JobState.FINISHED for s in states.values()), {j: s.value for j, s in states.items()}
    # Nothing was taken for lost, and each job ran exactly once.
    for jid in ids:
        job = grid.get(jid)
        assert [a.get("reason") for a in job.attempts] == [None], (jid, job.attempts)
    assert not [e for e in grid.events(count=10_000) if e.kind in ("lost", "node_down")]
    # The ticker's output went on through the outage: every line once, in order.
    chunks = grid.tail(ticker, count=100_000)
    out = b"".join(c.data for c in chunks if c.stream == "stdout").decode()
    assert out == "".join(f"line {i}\n" for i in range(1, LINES + 1))
    assert [c.stream for c in chunks].count("end") == 1 and chunks[-1].stream == "end"
    assert {grid.get(j).stdout for j in batch} == {f"job {i}\n" for i in range(24)}


def test_idle_agents_ride_out_a_long_outage(broker, agents, grid, r):
    a = agents("node-a", slots=2, node_timeout=NODE_TIMEOUT)
    broker.stop()
    time.sleep(8)
    broker.start()
    assert a.proc.poll() is None, "the agent quit during the outage"
    jid = grid.submit(JobSpec(command="echo back"))
    assert grid.wait([jid], timeout=30)[jid] is JobState.FINISHED
    assert grid.get(jid).stdout == "back\n"
    eventually(lambda: grid.node("node-a").state.value == "up", 10, 0.1, "node-a up again", tolerate=TRANSIENT)
