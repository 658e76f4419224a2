"""Every view through Pilot, against the real test broker (Redis and Valkey)."""

from __future__ import annotations

import pytest

from console.screens.events import EventsTable
from console.screens.jobs import JobsTable
from console.screens.keys import KeysScreen
from console.screens.queues import QueuesTable
from gridcore.models import JobSpec
from tests.console.conftest import rows, settle

pytestmark = pytest.mark.asyncio


def submit(grid, n, **kw):
    return [grid.submit(JobSpec(command=f"echo {i}", name=f"job {i}", **kw)) for i in range(n)]


async def test_jobs_view_newest_first_with_total(make, grid):
    ids = submit(grid, 3)
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(JobsTable)
        shown = rows(table)
        assert [r["id"] for r in shown] == [i[:8] for i in reversed(ids)]
        assert {r["state"] for r in shown} == {"queued"}
        assert "jobs 1–3 of 3" in str(app.screen.query_one("#jobs-status").render())


async def test_cursor_stays_on_its_row_when_jobs_arrive(make, grid):
    ids = submit(grid, 3)
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(JobsTable)
        await pilot.press("down")
        assert table.cursor_key == ids[1]
        submit(grid, 2)
        await settle(app, pilot)
        assert table.row_count == 5
        assert table.cursor_key == ids[1]  # moved down two rows with its job
        assert table.cursor_row == 3


async def test_filters_state_text_and_clear(make, grid):
    ids = submit(grid, 3)
    grid.submit(JobSpec(command="python train.py", name="training run"))
    grid.cancel(ids[0], wait=0)
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(JobsTable)
        assert table.row_count == 4
        for _ in range(5):  # running -> queued -> failed -> finished -> canceled
            await pilot.press("f")
        await settle(app, pilot)
        assert app.screen.filter.state.value == "canceled"
        assert [r["id"] for r in rows(table)] == [ids[0][:8]]
        await pilot.press("x")
        await pilot.press("slash")
        await pilot.press(*"train")
        await pilot.press("enter")
        await settle(app, pilot)
        assert [r["name"] for r in rows(table)] == ["training run"]
        await pilot.press("slash")
        box = app.screen.query_one("#filter-input")
        box.value = "state:queued job"
        await pilot.press("enter")
        await settle(app, pilot)
        assert sorted(r["name"] for r in rows(table)) == ["job 1", "job 2"]
        await pilot.press("slash")
        box.value = "state:bogus"
        await pilot.press("enter")
        assert any("unknown state" in n for n in (m.message for m in app._notifications))
        await pilot.press("escape")
        assert table.has_focus


async def test_paging(make, grid):
    submit(grid, 12)
    app = make(page_size=5)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(JobsTable)
        status = app.screen.query_one("#jobs-status")
        assert [r["name"] for r in rows(table)] == [f"job {i}" for i in range(11, 6, -1)]
        await pilot.press("right_square_bracket", "right_square_bracket")
        await settle(app, pilot)
        assert [r["name"] for r in rows(table)] == ["job 1", "job 0"]
        assert "jobs 11–12 of 12" in str(status.render())
        await pilot.press("right_square_bracket")  # past the end: stays
        await pilot.press("left_square_bracket")
        await settle(app, pilot)
        assert "jobs 6–10 of 12" in str(status.render())


async def test_queues_view_counts_and_opens_jobs(make, grid):
    submit(grid, 2)
    submit(grid, 3, queue="gpu")
    app = make()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("2")
        await settle(app, pilot)
        assert app.current_mode == "queues"
        table = app.screen.query_one(QueuesTable)
        by_name = {r["name"]: r for r in rows(table)}
        assert by_name["gpu"]["queued"] == "3" and by_name["default"]["queued"] == "2"
        assert by_name["gpu"]["workers"] == "0"
        await pilot.press("down" if table.cursor_key != "gpu" else "up")
        if table.cursor_key != "gpu":
            await pilot.press("up")
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.current_mode == "jobs" and app.screen.filter.queue == "gpu"
        assert {r["queue"] for r in rows(app.screen.query_one(JobsTable))} == {"gpu"}


async def test_events_view_newest_first(make, grid):
    ids = submit(grid, 2)
    grid.cancel(ids[0], wait=0)
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        shown = rows(app.screen.query_one(EventsTable))
        assert [r["kind"] for r in shown] == ["canceled", "submitted", "submitted"]
        assert shown[0]["job"] == ids[0][:8]


async def test_help_palette_and_quit(make, grid):
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, KeysScreen)
        await pilot.press("question_mark")
        assert not isinstance(app.screen, KeysScreen)
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "CommandPalette"
        await pilot.press(*"View: nodes")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.current_mode == "nodes"
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_bindings_have_ids_and_letters_are_not_priority(make):
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        for mode in ("jobs", "queues", "nodes", "events"):
            app.switch_mode(mode)
            await pilot.pause()
            for binding in [*app.BINDINGS, *app.screen.BINDINGS]:
                if binding.key.isalpha() and len(binding.key) == 1:
                    assert not binding.priority, binding
                if binding.show:
                    assert binding.id, binding
