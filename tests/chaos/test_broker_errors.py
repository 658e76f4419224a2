"""A broker that answers with errors (out of memory under noeviction, MISCONF after a failed
save, READONLY after a failover) is an outage, not a success: output stays buffered and goes
out later, the end is recorded once it can be written, and the slots ride it out."""

from __future__ import annotations

import psutil
from redis._parsers.base import BaseParser

from agent.outage import OUTAGE_ERRORS
from gridcore import keys
from gridcore.models import JobSpec, JobState
from tests.chaos.conftest import NODE_TIMEOUT, TRANSIENT, assert_accounted, job_procs, running_on
from tests.support.wait import eventually

LINES = 12
STREAM = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.25; done"


def slot_pids(agent) -> set[int]:
    return {p.pid for p in psutil.Process(agent.proc.pid).children() if "agent.slotmain" in " ".join(p.cmdline())}


def test_a_broker_out_of_memory_loses_no_output_and_no_end(broker, agents, gate, grid, r, cleanup_jobs):
    a = agents("node-a", slots=2, node_timeout=NODE_TIMEOUT)
    slots = slot_pids(a)
    # The short job ends once writes are refused (the gate opens then), however late the long
    # one's first lines reach the broker on a loaded machine.
    ids = [grid.submit(JobSpec(command=STREAM)), grid.submit(JobSpec(command=gate.command("echo short")))]
    cleanup_jobs.extend(ids)
    eventually(lambda: all(running_on(r, j) for j in ids), 20, 0.05, "both jobs to run", tolerate=TRANSIENT)
    eventually(lambda: b"line 2" in b"".join(c.data for c in grid.tail(ids[0], count=1000)), 20, 0.05,
               "the first lines of output")
    r.config_set("maxmemory", 1)  # noeviction (the grid's policy): every write is refused
    gate.open()
    try:
        # Both jobs end while the broker refuses writes; their ends wait for it.
        eventually(lambda: not any(job_procs(j) for j in ids), 20, 0.1, "both jobs to end", tolerate=TRANSIENT)
        assert all(r.hexists(keys.ACTIVE, j) for j in ids), "an end was recorded while writes were refused"
    finally:
        r.config_set("maxmemory", 0)
    states = assert_accounted(r, grid, ids, timeout=30)
    assert all(s is JobState.FINISHED for s in states.values()), {j: s.value for j, s in states.items()}
    chunks = grid.tail(ids[0], count=100_000)
    assert b"".join(c.data for c in chunks if c.stream == "stdout").decode() == "".join(
        f"line {i}\n" for i in range(1, LINES + 1))
    assert [c.stream for c in chunks].count("end") == 1 and chunks[-1].stream == "end"
    assert grid.get(ids[1]).stdout == "short\n"
    for jid in ids:
        assert [x.get("reason") for x in grid.get(jid).attempts] == [None]
    assert slot_pids(a) == slots, "a slot died while the broker refused writes"


def test_misconf_is_an_outage():
    """MISCONF (the broker's last save failed, so it refuses writes) reads as an outage."""
    error = BaseParser.parse_error("MISCONF Redis is configured to save RDB snapshots, but it's currently "
                                   "unable to persist to disk.")
    assert isinstance(error, OUTAGE_ERRORS)
    assert isinstance(BaseParser.parse_error("OOM command not allowed when used memory > 'maxmemory'."),
                      OUTAGE_ERRORS)
