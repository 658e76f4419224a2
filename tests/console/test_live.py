"""With real agents: nodes, live output, progress, cancel of a running job, requeue of failures."""

from __future__ import annotations

import pytest

from console.screens.confirm import ConfirmScreen
from console.screens.detail import JobDetailScreen
from console.screens.jobs import JobsTable
from console.screens.nodes import NodesTable
from console.widgets.output import OutputView
from gridcore.models import JobSpec, JobState
from tests.console.conftest import notes, rows, settle, until, wait_workers

pytestmark = [pytest.mark.asyncio, pytest.mark.both_brokers]

PROGRESS_JOB = (
    "python3 -u -c \"import sys,time\n"
    "print('starting', flush=True)\n"
    "for i in range(1000):\n"
    "    sys.stderr.write('\\r%3d%%|bar|' % (i // 10)); sys.stderr.flush()\n"
    "    print('step %d/1000' % i, flush=True) if i % 50 == 0 else None\n"
    "    time.sleep(0.05)\""
)


async def test_nodes_view_shows_live_agents(make, agents):
    agents("node-a", slots=2, labels=["big"], gpus=[{"index": 0, "name": "Test GPU", "memory_total": 2**34}])
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        table = app.screen.query_one(NodesTable)
        await until(app, pilot, lambda: table.row_count == 1, what="node-a in the table")
        row = rows(table)[0]
        assert row["name"] == "node-a" and row["state"] == "up" and row["slots"] == "0/2"
        detail = str(app.screen.query_one("#node-detail").render())
        assert "gpu0 Test GPU" in detail and "big" in detail
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.current_mode == "jobs" and app.screen.filter.node == "node-a"


async def test_output_progress_and_cancel_of_a_running_job(make, grid, agents):
    agents("node-a", slots=2)
    jid = grid.submit(JobSpec(command=PROGRESS_JOB, name="trainer"))
    app = make()
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one(JobsTable)

        def progress_shown():
            r = rows(table)
            return r and r[0]["state"] == "running" and r[0].get("progress", "").endswith("%")

        await until(app, pilot, progress_shown, what="a progress value in the jobs table")
        await pilot.press("enter")
        assert isinstance(app.screen, JobDetailScreen)
        detail = app.screen
        view = detail.query_one(OutputView)
        await until(app, pilot, lambda: len(detail.buffer.lines) >= 2, what="output lines")
        lines = view.plain_lines()
        assert lines[0] == "  starting"
        assert any(line.startswith("  step ") for line in lines)
        # tqdm-style redraws stay one stderr line at the bottom, marked by the gutter.
        assert lines[-1].startswith("▌ ") and "%|bar|" in lines[-1]
        assert sum(1 for line in lines if "%|bar|" in line) == 1
        assert "following" in str(detail.query_one("#output-status").render())
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_workers(app, pilot)
        assert grid.state(jid) is JobState.CANCELED
        assert f"canceled {jid}" in notes(app)
        await until(app, pilot, lambda: detail.buffer.ended, what="the end marker")
        assert "end of output" in view.plain_lines()[-1]
        await until(app, pilot, lambda: detail.job.state is JobState.CANCELED, what="detail shows canceled")
        await pilot.press("escape")
        await settle(app, pilot)
        assert rows(table)[0]["state"] == "canceled"


async def test_scroll_back_keeps_position_and_end_follows(make, grid, agents):
    agents("node-a", slots=1)
    jid = grid.submit(JobSpec(command="for i in $(seq 1 400); do echo line $i; sleep 0.005; done; sleep 30",
                              name="chatty"))
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_job(jid)
        await pilot.pause()
        detail = app.screen
        view = detail.query_one(OutputView)
        await until(app, pilot, lambda: len(detail.buffer.lines) >= 100, what="100 lines")
        view.focus()
        await pilot.press("pageup", "pageup")
        held = view.scroll_y
        await until(app, pilot, lambda: len(detail.buffer.lines) >= 400, what="all lines")
        assert view.scroll_y == held  # new output did not drag the view down
        assert "new below" in str(detail.query_one("#output-status").render())
        await pilot.press("end")
        await pilot.pause()
        assert view.is_vertical_scroll_end
        assert "following" in str(detail.query_one("#output-status").render())
        assert view.plain_lines()[399] == "  line 400"
        grid.cancel(jid, wait=10)


async def test_requeue_failed_one_and_all(make, grid, agents):
    agents("node-a", slots=2)
    ids = [grid.submit(JobSpec(command=f"echo try; exit {3 + i}", name=f"bad {i}")) for i in range(2)]
    assert set(grid.wait(ids, timeout=30).values()) == {JobState.FAILED}
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        # Once in CI one row had no exit code (unexplained): the message says why if it recurs.
        assert {r["exit"] for r in rows(app.screen.query_one(JobsTable))} == {"3", "4"}, [
            (j.id, j.state, j.exit_code, j.reason, j.attempts, j.problems) for j in map(grid.get, ids)]
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_workers(app, pilot)
        assert "requeued 1 job" in notes(app)
        grid.wait(ids, timeout=30)
        await pilot.press("R")
        await wait_workers(app, pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.title_text.startswith("Requeue 2 failed jobs")
        await pilot.press("y")
        await wait_workers(app, pilot)
        assert "requeued 2 jobs" in notes(app)
        kinds = [e.kind for e in grid.events(count=50)]
        assert kinds.count("requeued") == 3
