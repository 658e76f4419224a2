"""Retries with backoff, every attempt on the record, and priority among waiting jobs — for real.

Priority between two non-default priorities behind a busy slot is covered by
tests/engine/test_placement.py::test_priority_orders_waiting_jobs; the tests here add the
default priority (0) and a grid whose agent starts after the jobs were submitted.
"""

from __future__ import annotations

import json

import pytest

from descriptors import load_text, to_specs
from gridcore import keys
from gridcore.submission import rq_retry_intervals
from gridcore.models import JobSpec, JobState
from tests.support.wait import eventually


def descriptor(tmp_path, **task) -> str:
    f = tmp_path / "task.json"
    f.write_text(json.dumps({"tasks": [task]}))
    return str(f)


def gaps(attempts) -> list[float]:
    """Seconds from the end of each attempt to the start of the next (broker time)."""
    return [b["start"] - a["end"] for a, b in zip(attempts, attempts[1:])]


def shown(cli, jid: str) -> tuple[dict, str]:
    """`grid show --json` and the human `grid show` of one job."""
    return json.loads(cli("show", "--json", jid, check=True).stdout), cli("show", jid, check=True).stdout


def attempt_rows(human: str) -> list[list[str]]:
    """The rows of the attempts table in `grid show`, split on whitespace."""
    lines = human.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "attempts") + 2  # title, header
    rows = []
    for line in lines[start:]:
        cells = line.split()
        if not cells or not cells[0].isdigit():
            break
        rows.append(cells)
    return rows


@pytest.mark.parametrize(("retries", "backoff", "intervals"), [
    (3, (1, 4), [2, 5, 5]), (2, (5,), 6), (2, (), 0), (3, (0, 3), [0, 4, 4]), (1, (2, 9), 3)])
def test_rq_intervals_one_per_retry_the_last_repeating(retries, backoff, intervals):
    # RQ would repeat the first value, and rounds its schedule down to a whole second.
    assert rq_retry_intervals(JobSpec(command="x", retries=retries, retry_backoff=backoff)) == intervals


def test_descriptor_retries_run_every_attempt_and_show_each(cli, agents, tmp_path):
    agents("node-a", slots=1)
    f = descriptor(tmp_path, name="always-fails", command="echo trying; exit 3", retries={"count": 2, "backoff": 1})
    jid = json.loads(cli("submit", "--json", "-f", f, check=True).stdout)["ids"][0]
    assert cli("wait", jid, "--timeout", "60").returncode == 1

    job, human = shown(cli, jid)
    assert job["state"] == "failed" and job["exit_code"] == 3 and job["retries_left"] == 0
    attempts = job["attempts"]
    assert len(attempts) == 3, attempts
    for a in attempts:
        assert a["node"] == "node-a" and a["exit_code"] == 3 and a["reason_kind"] == "exit"
        assert "3" in a["reason"]
    assert len({a["run_id"] for a in attempts}) == 3  # three runs, not one record written thrice
    assert all(g >= 1.0 for g in gaps(attempts)), gaps(attempts)

    rows = attempt_rows(human)
    assert [r[:3] for r in rows] == [[str(i), "node-a", "3"] for i in (1, 2, 3)], human
    assert all(a["reason"] in " ".join(r[3:]) for r, a in zip(rows, attempts)), human  # e.g. "exit code 3"


def test_backoff_list_waits_each_value_then_repeats_the_last(grid, agents):
    agents("node-a", slots=1)
    desc = load_text(json.dumps({"name": "flaky", "command": "exit 3", "retries": {"count": 3, "backoff": [1, 4]}}))
    [task] = to_specs(desc)
    jid = grid.submit(task.spec, job_id=task.job_id)
    assert grid.wait([jid], timeout=60)[jid] is JobState.FAILED
    attempts = grid.get(jid).attempts
    assert len(attempts) == 4, attempts
    waits = gaps(attempts)
    # One wait per retry from the list, the last one repeating: at least 1 s, 4 s, 4 s.
    assert waits[0] >= 1.0 and waits[1] >= 4.0 and waits[2] >= 4.0, waits
    assert waits[0] < 4.0, waits  # the first retry waits the first value, not the longest


def test_fails_once_then_succeeds(grid, agents, tmp_path):
    agents("node-a", slots=1)
    marker = tmp_path / "tried"
    cmd = f"if [ -e {marker} ]; then echo second; else touch {marker}; exit 5; fi"
    desc = load_text(json.dumps({"command": cmd, "retries": {"count": 2, "backoff": "1s"}}))
    [task] = to_specs(desc)
    jid = grid.submit(task.spec, job_id=task.job_id)
    assert grid.wait([jid], timeout=60)[jid] is JobState.FINISHED
    job = grid.get(jid)
    assert job.exit_code == 0 and "second" in job.stdout and job.retries_left == 1
    assert [(a["node"], a["exit_code"]) for a in job.attempts] == [("node-a", 5), ("node-a", 0)]
    assert "5" in job.attempts[0]["reason"] and job.attempts[1]["reason"] is None
    assert gaps(job.attempts)[0] >= 1.0


def test_cli_retries_option(cli, agents, tmp_path):
    agents("node-a", slots=1)
    jid = cli("submit", "--retries", "2", "--", "exit 4", check=True).stdout.strip()
    marker = tmp_path / "tried"
    flaky = cli("submit", "--retries", "1", "--",
                f"if [ -e {marker} ]; then true; else touch {marker}; exit 6; fi", check=True).stdout.strip()
    assert cli("wait", jid, "--timeout", "60").returncode == 1
    assert cli("wait", flaky, "--timeout", "60").returncode == 0

    job, human = shown(cli, jid)
    assert job["state"] == "failed" and job["retries_left"] == 0
    assert [(a["node"], a["exit_code"]) for a in job["attempts"]] == [("node-a", 4)] * 3
    assert all(a["reason"] for a in job["attempts"])
    assert [r[:3] for r in attempt_rows(human)] == [[str(i), "node-a", "4"] for i in (1, 2, 3)], human

    job, human = shown(cli, flaky)
    assert job["state"] == "finished"
    assert [a["exit_code"] for a in job["attempts"]] == [6, 0]
    assert [r[:3] for r in attempt_rows(human)] == [["1", "node-a", "6"], ["2", "node-a", "0"]], human


def test_cli_backoff_and_priority_options(cli, grid, agents, gate):
    agents("node-a", slots=1)
    jid = cli("submit", "--retries", "2", "--backoff", "1", "--backoff", "2", "--", "exit 5", check=True).stdout.strip()
    assert cli("wait", jid, "--timeout", "60").returncode == 1
    job, _ = shown(cli, jid)
    assert [a["exit_code"] for a in job["attempts"]] == [5, 5, 5]
    first, second = gaps(job["attempts"])
    assert first >= 1.0 and second >= 2.0, (first, second)
    # Behind a busy slot, the higher --priority runs first whatever the submit order (the
    # blocker holds the slot until all three are submitted).
    blocker = wait_running(grid, grid.submit(JobSpec(command=gate.command())))
    low = cli("submit", "--priority", "-1", "--", "true", check=True).stdout.strip()
    plain = cli("submit", "--", "true", check=True).stdout.strip()
    high = cli("submit", "--priority", "3", "--", "true", check=True).stdout.strip()
    assert grid.state(blocker) is JobState.RUNNING
    gate.open()
    assert cli("wait", blocker, low, plain, high, "--timeout", "60").returncode == 0
    starts = [grid.get(j).started_at for j in (high, plain, low)]
    assert starts == sorted(starts), starts


def test_retry_goes_behind_jobs_already_waiting(grid, agents):
    """A retry waits its backoff, and meanwhile the queue moves on: it never blocks the slot."""
    agents("node-a", slots=1)
    flaky = grid.submit(JobSpec(command="exit 2", retries=1, retry_backoff=(2,)))
    eventually(lambda: grid.get(flaky).attempts, 20, message="the first attempt to end")
    other = grid.submit(JobSpec(command="true"))
    assert grid.wait([flaky, other], timeout=60)[flaky] is JobState.FAILED
    first, second = grid.get(flaky).attempts
    assert first["end"] <= grid.get(other).started_at < second["start"]


def wait_running(grid, jid: str) -> str:
    eventually(lambda: grid.state(jid) is JobState.RUNNING, 20, message=f"job {jid} to run")
    return jid


def busy_slot(grid, agents, gate, then: str = "") -> str:
    """One agent with one slot, busy with a job (returned) until the test opens `gate`."""
    agents("node-a", slots=1, cpus=1)
    return wait_running(grid, grid.submit(JobSpec(command=gate.command(then), name="blocker")))


# Priorities 1 and 10 behind a busy slot: test_placement.py::test_priority_orders_waiting_jobs.
# The cases here mix in the default priority 0 and negative ones (gridcore/priority.py).


def wait_finished(grid, ids) -> None:
    states = grid.wait(ids, timeout=30)
    assert set(states.values()) == {JobState.FINISHED}, [(grid.get(j).name, s, grid.get(j).reason)
                                                         for j, s in states.items()]


@pytest.mark.parametrize(("low_priority", "high_priority"), [(0, 10), (-5, 0)])
def test_priority_with_the_default_priority_behind_a_busy_slot(grid, agents, gate, low_priority, high_priority):
    blocker = busy_slot(grid, agents, gate)
    low = grid.submit(JobSpec(command="true", name="low", priority=low_priority))
    high = grid.submit(JobSpec(command="true", name="high", priority=high_priority))
    gate.open()
    wait_finished(grid, [blocker, low, high])
    assert grid.get(blocker).ended_at <= grid.get(high).started_at < grid.get(low).started_at


@pytest.mark.parametrize(("low_priority", "high_priority"), [
    (0, 10), (-5, 0), (1, 10)])
def test_priority_when_the_agent_starts_after_submit(grid, agents, low_priority, high_priority):
    lows = [grid.submit(JobSpec(command="true", name=f"low{i}", priority=low_priority)) for i in range(3)]
    highs = [grid.submit(JobSpec(command="true", name=f"high{i}", priority=high_priority)) for i in range(3)]
    agents("node-a", slots=1, cpus=1)
    wait_finished(grid, lows + highs)
    started = {grid.get(jid).name: grid.get(jid).started_at for jid in lows + highs}
    assert max(started[f"high{i}"] for i in range(3)) < min(started[f"low{i}"] for i in range(3)), started


# A job that comes back to its queue keeps its priority: the retry with no backoff (the slot's
# own queue class), the retry after a backoff (RQ's scheduler), a requeue, a released dependent.


FAILS_ONCE = 'if [ -e "$MARK" ]; then echo second; else touch "$MARK"; exit 3; fi'


@pytest.mark.parametrize("backoff", [(), (1,)])
def test_a_retry_goes_back_where_its_priority_puts_it(grid, agents, gate, tmp_path, backoff):
    blocker = busy_slot(grid, agents, gate)
    # With a backoff, lows that last long enough to be still waiting when the retry is due.
    lows = [grid.submit(JobSpec(command="sleep 1" if backoff else "true", name=f"low{i}")) for i in range(6)]
    high = grid.submit(JobSpec(command=FAILS_ONCE, name="high", priority=5, retries=1, retry_backoff=backoff,
                               env={"MARK": str(tmp_path / "mark")}))
    gate.open()
    wait_finished(grid, [blocker, high, *lows])
    first, second = grid.get(high).attempts
    starts = sorted(grid.get(j).started_at for j in lows)
    assert first["exit_code"] == 3 and first["end"] <= starts[0]  # the first try went first
    if not backoff:  # straight back to the front, ahead of every waiting low
        assert second["start"] < starts[0]
    else:  # back after its backoff (RQ: up to 2 s late), ahead of the lows still waiting then
        assert second["start"] - first["end"] >= 1 and second["start"] < starts[-1]


def test_a_requeued_job_goes_back_where_its_priority_puts_it(grid, agents, r, gate):
    agents("node-a", slots=1, cpus=1)
    high = grid.submit(JobSpec(command="exit 1", name="high", priority=5))
    assert grid.wait([high], timeout=30)[high] is JobState.FAILED
    wait_running(grid, grid.submit(JobSpec(command=gate.command(), name="blocker")))
    lows = [grid.submit(JobSpec(command="true", name=f"low{i}")) for i in range(2)]
    grid.requeue(high)
    assert [j.decode() for j in r.lrange(keys.rq_queue("default"), 0, -1)] == [high, *lows]


def test_a_released_dependent_goes_where_its_priority_puts_it(grid, agents, gate):
    parent = busy_slot(grid, agents, gate, "echo parent")
    lows = [grid.submit(JobSpec(command="true", name=f"low{i}")) for i in range(2)]
    child = grid.submit(JobSpec(command="true", name="child", priority=5, after=(parent,)))
    gate.open()
    wait_finished(grid, [parent, child, *lows])
    assert grid.get(parent).ended_at <= grid.get(child).started_at < min(grid.get(j).started_at for j in lows)
