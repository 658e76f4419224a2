"""Actions from the keyboard: submit, cancel (one and many), requeue, copy; read-only mode."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from console.screens.confirm import ConfirmScreen
from console.screens.jobs import JobsTable
from console.screens.submit import SubmitScreen
from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import JobSpec, JobState
from tests.console.conftest import notes, rows, settle, wait_workers

pytestmark = pytest.mark.asyncio


async def test_submit_form_validates_inline_then_submits(make, grid):
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("s")
        assert isinstance(app.screen, SubmitScreen)
        form = app.screen
        await pilot.press("ctrl+s")  # empty command: stays open, says why
        assert isinstance(app.screen, SubmitScreen)
        assert "required" in str(form.query_one("#e-command").render())
        await pilot.press(*"echo hello")
        form.query_one("#f-timeout", Input).value = "soon"
        await pilot.pause()
        assert "unit" in str(form.query_one("#e-timeout").render())
        form.query_one("#f-timeout", Input).value = "5m"
        form.query_one("#f-name", Input).value = "greeting"
        form.query_one("#f-retries", Input).value = "1"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_workers(app, pilot)
        assert not isinstance(app.screen, SubmitScreen)
        jobs, total = grid.list()
        assert total == 1 and jobs[0].name == "greeting" and jobs[0].timeout == 300
        assert any(n.startswith("submitted ") for n in notes(app))
        await settle(app, pilot)
        assert rows(app.screen.query_one(JobsTable))[0]["name"] == "greeting"


async def test_submit_form_escape_abandons(make, grid):
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await pilot.press(*"echo never")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, SubmitScreen)
        assert grid.list()[1] == 0


async def test_cancel_asks_first(make, grid):
    jid = grid.submit(JobSpec(command="sleep 100", name="victim"))
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await wait_workers(app, pilot)
        assert grid.state(jid) is JobState.QUEUED
        await pilot.press("c")
        await pilot.press("y")
        await wait_workers(app, pilot)
        assert grid.state(jid) is JobState.CANCELED
        assert f"canceled {jid}" in notes(app)
        await settle(app, pilot)
        assert rows(app.screen.query_one(JobsTable))[0]["state"] == "canceled"


async def test_enter_in_a_confirmation_is_no(make, grid):
    jid = grid.submit(JobSpec(command="sleep 100", name="victim"))
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.focused.id == "no"  # the safe answer is the default
        await pilot.press("enter")
        await wait_workers(app, pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert grid.state(jid) is JobState.QUEUED


async def test_multi_select_cancel(make, grid):
    ids = [grid.submit(JobSpec(command="sleep 100", name=f"j{i}")) for i in range(4)]
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(JobsTable)
        await pilot.press("space")  # selects j3 and moves down
        await pilot.press("down")
        await pilot.press("space")  # selects j1
        assert app.screen.selected == {ids[3], ids[1]}
        assert [r["sel"] for r in rows(table)] == ["●", " ", "●", " "]
        assert "2 selected" in str(app.screen.query_one("#jobs-status").render())
        await pilot.press("c")
        assert "Cancel 2 jobs?" in app.screen.title_text
        await pilot.press("y")
        await wait_workers(app, pilot)
        assert {grid.state(i) for i in (ids[3], ids[1])} == {JobState.CANCELED}
        assert {grid.state(i) for i in (ids[0], ids[2])} == {JobState.QUEUED}
        assert "canceled 2 jobs" in notes(app)
        assert app.screen.selected == set()


async def test_copy_id(make, grid):
    jid = grid.submit(JobSpec(command="true"))
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("y")
        assert app.clipboard == jid
        assert f"copied {jid}" in notes(app)


async def test_read_only_hides_actions_and_never_writes(make, grid, r, broker, settings):
    jid = grid.submit(JobSpec(command="sleep 100", name="keep me"))
    # A broker user that cannot write at all: any write the console tried would fail loudly.
    r.acl_setuser("viewer", enabled=True, passwords=["+viewerpw"], keys=["*"],
                  commands=["-@all", "+@read", "+@connection", "+time", "+info"])
    ro = settings.model_copy(update={"redis_username": "viewer", "redis_password": "viewerpw", "read_only": True})
    viewer = Grid(connect(ro), ro)
    errors_before = {k: v for k, v in r.info("errorstats").items() if "NOPERM" in k}
    app = make(settings=ro, grid=viewer)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            footer_keys = {b.binding.action for b in app.screen.active_bindings.values() if b.enabled}
            assert not footer_keys & {"app.submit", "cancel", "requeue", "toggle_select"}
            for key in ("s", "c", "space", "r", "R", "y"):
                await pilot.press(key)
                await pilot.pause()
            assert not isinstance(app.screen, (SubmitScreen, ConfirmScreen))
            await pilot.press("enter")
            await settle(app, pilot, ticks=2)
            await pilot.press("c", "r")
            await pilot.press("escape")
            for view in ("2", "3", "4", "1"):
                await pilot.press(view)
                await settle(app, pilot)
            assert app.last_snapshot is not None and app.last_snapshot.error is None
            assert "READ-ONLY" in str(app.screen.query_one("#summary").render())
    finally:
        r.acl_deluser("viewer")
    assert grid.state(jid) is JobState.QUEUED
    # No NOPERM: nothing the console did needed more than read access.
    assert {k: v for k, v in r.info("errorstats").items() if "NOPERM" in k} == errors_before


async def test_submit_a_descriptor_file(make, grid, tmp_path):
    good = tmp_path / "sweep.json"
    good.write_text('{"tasks": [{"name": "sq", "command": "echo {x}", "sweep": {"x": [1, 2, 3]}}]}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": [{"name": "broken", "commnd": "echo"}]}')
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        form = app.screen
        form.query_one("#f-descriptor", Input).value = str(bad)
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SubmitScreen)
        assert "commnd" in str(form.query_one("#e-descriptor").render())
        form.query_one("#f-descriptor", Input).value = str(good)
        await pilot.press("ctrl+s")
        await wait_workers(app, pilot)
        assert not isinstance(app.screen, SubmitScreen)
        jobs, total = grid.list()
        assert total == 3 and sorted(j.name for j in jobs) == ["sq[0]", "sq[1]", "sq[2]"]
        assert f"submitted 3 jobs from {good}" in notes(app)
