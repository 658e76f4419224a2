"""`R` requeues exactly the failed jobs the `/` filter shows (one JobFilter for both)."""

from __future__ import annotations

import pytest
from rq.job import JobStatus

from console.screens.confirm import ConfirmScreen
from console.screens.jobs import JobsTable
from gridcore import keys
from gridcore.client import Grid
from gridcore.models import JobSpec, JobState
from gridcore.records import Result
from tests.console.conftest import notes, settle, wait_workers

pytestmark = pytest.mark.asyncio

LOST = Result(node="node-b", reason="node lost: node-b stopped heartbeating", reason_kind="lost")
EXIT = Result(node="node-b", exit_code=1, reason="exit code 1", reason_kind="exit")


def fail(r, grid: Grid, jid: str, result: Result) -> None:
    """End a queued job as failed the way the agent records it: RQ's status and registry, our result."""
    queue = grid.get(jid).queue
    r.lrem(keys.rq_queue(queue), 0, jid)
    r.hset(keys.rq_job(jid), "status", JobStatus.FAILED.value)
    r.zadd(keys.rq_registry(JobState.FAILED.value, queue), {jid: grid.broker_time()})
    r.set(keys.result(jid), result.encode())


def on_node(r, jid: str, node: str, order: int) -> None:
    """List a job under a node, as its claim does (higher `order`: newer)."""
    r.zadd(keys.node_jobs(node), {jid: order})


async def filter_to(app, pilot, query: str) -> list[str]:
    await pilot.press("slash")
    app.screen.query_one("#filter-input").value = query
    await pilot.press("enter")
    await settle(app, pilot)
    return app.screen.query_one(JobsTable).keys


async def requeue_all(app, pilot) -> str:
    await pilot.press("R")
    await wait_workers(app, pilot)
    assert isinstance(app.screen, ConfirmScreen)
    title = app.screen.title_text
    await pilot.press("y")
    await wait_workers(app, pilot)
    return title


def requeued(grid: Grid) -> list[str]:
    return sorted(e.job for e in grid.events(count=100) if e.kind == "requeued")


async def test_R_requeues_exactly_the_failed_rows_the_filter_shows(make, grid, r):
    lost = [grid.submit(JobSpec(command="echo x", name=f"sim {i}")) for i in range(3)]
    exited = [grid.submit(JobSpec(command="echo y", name=f"fit {i}")) for i in range(2)]
    named = grid.submit(JobSpec(command="echo z", name="lost+found scan"))  # matches by its name
    queued = grid.submit(JobSpec(command="echo lost", name="still queued"))  # matches, but not failed
    for jid in lost:
        fail(r, grid, jid, LOST)
    for jid in [*exited, named]:
        fail(r, grid, jid, EXIT)
    app = make()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        shown = await filter_to(app, pilot, "state:failed lost")
        assert sorted(shown) == sorted([*lost, named])
        assert await requeue_all(app, pilot) == "Requeue 4 failed jobs?"
        assert "requeued 4 jobs" in notes(app)
    assert requeued(grid) == sorted(shown)
    assert {grid.state(j) for j in shown} == {JobState.QUEUED}
    assert {grid.state(j) for j in exited} == {JobState.FAILED}
    assert grid.state(queued) is JobState.QUEUED


async def test_R_with_a_node_filter_counts_each_failed_job_once(make, grid, r):
    # Newest first on node-b: two queued jobs, then two failed ones; pages of the node's index
    # must not be counted in failed jobs found, or the failed ones are read (and asked) twice.
    failed = [grid.submit(JobSpec(command="false", name=f"bad {i}")) for i in range(2)]
    waiting = [grid.submit(JobSpec(command="true", name=f"next {i}")) for i in range(2)]
    for order, jid in enumerate([*failed, *waiting]):
        on_node(r, jid, "node-b", order)
    for jid in failed:
        fail(r, grid, jid, EXIT)
    app = make()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        shown = await filter_to(app, pilot, "node:node-b")
        assert shown == [*reversed(waiting), *reversed(failed)]
        assert await requeue_all(app, pilot) == "Requeue 2 failed jobs?"
        assert "requeued 2 jobs" in notes(app)
        assert not [n for n in notes(app) if "could not be requeued" in n]
    assert requeued(grid) == sorted(failed)
