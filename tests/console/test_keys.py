"""Keys at 80x24: a footer with each screen's keys whole, `?` that lists the grid's keys and
scrolls, paging that the header names and End/PgDn reach."""

from __future__ import annotations

import pytest

from console.screens.detail import JobDetailScreen
from console.screens.jobs import JobsTable
from console.screens.keys import KeysScreen
from gridcore.models import JobSpec
from tests.console.conftest import screen_text, settle
from tests.console.test_snapshots import frozen_app, jobs, snapshot

pytestmark = pytest.mark.asyncio

FOOTERS = {
    "jobs": "s Submit  c Cancel  r Requeue  / Filter  f State  1–5 Views  ? Keys  q Quit",
    "nodes": "d Drain  u Resume  1–5 Views  ? Keys  q Quit",
    "groups": "R Retry failed  1–5 Views  ? Keys  q Quit",
}


async def test_footer_shows_each_screens_keys_whole_at_80_columns():
    app = frozen_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.apply_snapshot(snapshot())
        await pilot.pause()
        for mode, footer in FOOTERS.items():
            app.switch_mode(mode)
            await pilot.pause()
            assert screen_text(app)[-1].strip() == footer
        app.switch_mode("jobs")
        app.push_screen(JobDetailScreen(app.context, jobs()[0].id))
        await pilot.pause()
        assert screen_text(app)[-1].strip() == "f Follow  esc Back  c Cancel  r Requeue  i Fields  1–5 Views  ? Keys  q Quit"


async def test_help_lists_the_grids_keys_first_and_scrolls():
    app = frozen_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.apply_snapshot(snapshot())
        await pilot.pause()
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, KeysScreen)
        first = "\n".join(screen_text(app))
        assert "jobs view" in first and "submit a job" in first
        seen = first
        scroll = app.screen.query_one("#keys-scroll")
        for _ in range(6):
            await pilot.press("pagedown")
            await pilot.pause()
            seen += "\n".join(screen_text(app))
        assert scroll.scroll_y > 0  # it scrolled: the end of the list was below the screen
        assert seen.index("submit a job") < seen.index("everywhere")  # the screen's own keys first
        for key, what in (("r", "run a failed or canceled job again"), ("R", "requeue every failed job"),
                          ("/", "filter:"), ("f", "show the next state"), ("x", "clear the filter"),
                          ("[", "the page before"), ("]", "the next page"), ("y", "copy the job's id"),
                          ("1–5", "views: 1 jobs, 2 queues"), ("o", "open a job by its id"),
                          ("^p", "command palette")):
            assert any(line.split("  ")[0].strip().endswith(key) and what in line
                       for line in (x.strip(" █") for x in seen.splitlines())), (key, what)
        await pilot.press("escape")
        assert not isinstance(app.screen, KeysScreen)


async def test_header_names_the_pages_and_end_and_pgdn_turn_them(make, grid):
    grid.submit_many([JobSpec(command="true", name=f"job {i}") for i in range(53)])
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        screen = app.jobs_screen
        status = lambda: str(screen.query_one("#jobs-status").render())  # noqa: E731
        assert status().startswith("jobs 1–50 of 53 · ] next")
        table = screen.query_one(JobsTable)
        await pilot.press("end")  # the last row of the page
        assert table.cursor_row == 49 and screen.page_start == 0
        await pilot.press("pagedown")  # past it: the next page
        await settle(app, pilot)
        assert screen.page_start == 50 and status().startswith("jobs 51–53 of 53 · [ prev")
        await pilot.press("home", "home")  # the first row, then the first page
        await settle(app, pilot)
        assert screen.page_start == 0
        await pilot.press("end", "end")  # the last row, then the last page
        await settle(app, pilot)
        assert screen.page_start == 50
