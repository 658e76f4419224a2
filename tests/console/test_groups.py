"""Sweep groups in the console: the groups view, a sweep's parameter grid, retry of failed cells."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from console.messages import RetryCellsRequested
from console.poller import GROUPS_PAGE, Request
from console.screens.confirm import ConfirmScreen
from console.screens.detail import JobDetailScreen
from console.screens.groups import GroupsScreen, GroupsTable
from console.screens.submit import load_descriptor
from console.screens.sweep import CellsTable, SweepGridScreen
from gridcore import keys
from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import Job, JobSpec, JobState
from tests.console.conftest import notes, rows, screen_text, settle, until, wait_workers
from tests.console.test_snapshots import NOW, check, frozen_app, snapshot, utc  # noqa: F401 - utc is a fixture

pytestmark = pytest.mark.asyncio


def submit_sweep(grid: Grid, tmp_path, command: str, sweep: dict, name: str = "sq") -> tuple[str, list[str]]:
    """Submit a one-task descriptor the way the console's form does; (group id, cell ids in cell order)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"tasks": [{"name": name, "command": command, "sweep": sweep}]}))
    sub, problems = load_descriptor(str(path))
    assert sub is not None, problems
    ids = grid.submit_many(list(sub.specs), job_ids=sub.job_ids, groups=sub.groups)
    (gid,) = sub.groups
    return gid, ids


def shown_text(widget) -> str:
    console = Console(width=60, record=True, file=io.StringIO())
    console.print(widget.render())
    return console.export_text()


def grid_rows(table) -> list[tuple[str, ...]]:
    return [(r["p:x"], r["p:y"], r["state"], r["exit"]) for r in rows(table)]


async def test_sweep_row_grid_and_retry_of_failed_cells(make, grid, agents, tmp_path):
    agents("node-a", slots=2)
    marker = tmp_path / "fixed"
    # x=2 fails until the marker exists: the retry must really run those cells again.
    gid, ids = submit_sweep(grid, tmp_path, f"echo {{y}}; test {{x}} != 2 || test -e {marker}", {"x": [1, 2], "y": ["a", "b"]})
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        assert isinstance(app.screen, GroupsScreen)
        table = app.screen.query_one(GroupsTable)
        await until(app, pilot, lambda: rows(table) and rows(table)[0]["cells"] == "4/4", what="the sweep to end")
        row = rows(table)[0]
        assert (row["name"], row["finished"], row["failed"], row["queued"], row["running"]) == ("sq", "2", "2", "0", "0")
        assert row["progress"].endswith("100%")
        assert table.cursor_key == gid
        assert "sweeps 1–1 of 1" in str(app.screen.query_one("#groups-status").render())

        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, SweepGridScreen) and app.screen.group_id == gid
        cells = app.screen.query_one(CellsTable)
        # 80 columns: both axes, state and exit survive the narrowing.
        assert {"p:x", "p:y", "state", "exit"} <= {c.key for c in cells.shown}
        assert grid_rows(cells) == [("1", "a", "finished", "0"), ("1", "b", "finished", "0"),
                                    ("2", "a", "failed", "1"), ("2", "b", "failed", "1")]
        assert cells.keys == ids
        info = str(app.screen.query_one("#sweep-info").render())
        assert "finished 2" in info and "failed 2" in info and "4/4" in info

        await pilot.press("R")
        await wait_workers(app, pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.title_text == "Retry 2 failed cells of sweep sq?"
        assert "x=2 y=a" in app.screen.body.plain and "x=1" not in app.screen.body.plain
        marker.touch()
        await pilot.press("y")
        await wait_workers(app, pilot)
        assert "requeued 2 cells" in notes(app)
        assert sorted(e.job for e in grid.events(count=50) if e.kind == "requeued") == sorted(ids[2:])
        assert set(grid.wait(ids, timeout=30).values()) == {JobState.FINISHED}
        assert grid.group(gid)["counts"]["finished"] == 4
        await until(app, pilot, lambda: {r["state"] for r in rows(cells)} == {"finished"}, what="the grid to catch up")
        assert [r["exit"] for r in rows(cells)] == ["0"] * 4

        await pilot.press("down", "down", "enter")
        await settle(app, pilot)
        assert isinstance(app.screen, JobDetailScreen) and app.screen.job_id == ids[2]
        await pilot.press("escape")
        await pilot.press("escape")
        await settle(app, pilot)
        assert isinstance(app.screen, GroupsScreen)
        assert rows(table)[0]["failed"] == "0" and rows(table)[0]["finished"] == "4"


async def test_retry_asks_first_and_says_when_nothing_failed(make, grid, tmp_path):
    _, ids = submit_sweep(grid, tmp_path, "echo {x}", {"x": [1, 2, 3]})
    grid.cancel(ids[1], wait=0)
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await settle(app, pilot)
        row = rows(app.screen.query_one(GroupsTable))[0]
        assert (row["queued"], row["canceled"], row["cells"]) == ("2", "1", "1/3")
        await pilot.press("R")  # from the groups view, for the group under the cursor
        await wait_workers(app, pilot)
        assert app.screen.title_text == "Retry 1 failed cell of sweep sq?"
        await pilot.press("n")
        await wait_workers(app, pilot)
        assert grid.state(ids[1]) is JobState.CANCELED
        await pilot.press("R")
        await wait_workers(app, pilot)
        await pilot.press("y")
        await wait_workers(app, pilot)
        assert "requeued 1 cell" in notes(app)
        assert [grid.state(i) for i in ids] == [JobState.QUEUED] * 3
        await pilot.press("R")
        await wait_workers(app, pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert notes(app)[-1] == "no failed or canceled cells in sweep sq"


async def test_read_only_console_refuses_retry(make, grid, r, settings, tmp_path):
    gid, ids = submit_sweep(grid, tmp_path, "echo {x}", {"x": [1, 2]})
    grid.cancel(ids[0], wait=0)
    r.acl_setuser("viewer", enabled=True, passwords=["+viewerpw"], keys=["*"],
                  commands=["-@all", "+@read", "+@connection", "+time", "+info"])
    ro = settings.model_copy(update={"redis_username": "viewer", "redis_password": "viewerpw", "read_only": True})
    errors_before = {k: v for k, v in r.info("errorstats").items() if "NOPERM" in k}
    app = make(settings=ro, grid=Grid(connect(ro), ro))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("5")
            await settle(app, pilot)
            assert rows(app.screen.query_one(GroupsTable))[0]["canceled"] == "1"
            for screen_type in (GroupsScreen, SweepGridScreen):
                if screen_type is SweepGridScreen:
                    await pilot.press("enter")
                    await settle(app, pilot)
                assert isinstance(app.screen, screen_type)
                shown = {b.binding.action for b in app.screen.active_bindings.values() if b.enabled}
                assert "retry_failed" not in shown
                await pilot.press("R")
                await wait_workers(app, pilot)
                assert not isinstance(app.screen, ConfirmScreen)
            # The grid itself is readable.
            assert [r["state"] for r in rows(app.screen.query_one(CellsTable))] == ["canceled", "queued"]
            app.post_message(RetryCellsRequested(gid))  # even when asked for directly, nothing is asked
            await wait_workers(app, pilot)
            assert not isinstance(app.screen, ConfirmScreen)
    finally:
        r.acl_deluser("viewer")
    assert grid.state(ids[0]) is JobState.CANCELED
    assert {k: v for k, v in r.info("errorstats").items() if "NOPERM" in k} == errors_before


async def test_groups_view_reads_one_page(make, grid):
    n = GROUPS_PAGE + 3
    specs = [JobSpec(command="true", group=f"g{i:02d}", params={"x": i, "_cell": 0}) for i in range(n)]
    grid.submit_many(specs, groups={f"g{i:02d}": {"name": f"sweep {i}", "axes": ["x"]} for i in range(n)})
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert "5 sweep groups" in " ".join(screen_text(app))
        await pilot.press("question_mark", "ctrl+p")
        await pilot.pause()
        await pilot.press(*"View: groups")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.current_mode == "groups"
        snap = await app.poller.refresh()
        await pilot.pause()
        assert len(snap.groups) == GROUPS_PAGE and snap.groups_total == n
        table = app.screen.query_one(GroupsTable)
        assert table.row_count == GROUPS_PAGE
        await pilot.press("right_square_bracket")
        await settle(app, pilot)
        assert table.row_count == 3 and app.screen.page_start == GROUPS_PAGE
        assert f"sweeps {GROUPS_PAGE + 1}–{n} of {n}" in str(app.screen.query_one("#groups-status").render())


async def test_grid_pages_cells_and_says_when_the_group_expired(make, grid, r, tmp_path):
    gid, ids = submit_sweep(grid, tmp_path, "echo {x}", {"x": [1, 2, 3]})
    app = make(page_size=2)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_group(gid, "sq")
        await settle(app, pilot)
        table = app.screen.query_one(CellsTable)
        assert [row["p:x"] for row in rows(table)] == ["1", "2"]
        await pilot.press("right_square_bracket")
        await settle(app, pilot)
        assert table.keys == ids[2:] and rows(table)[0]["cell"] == "2"
        assert "cells 3–3 of 3" in str(app.screen.query_one("#cells-status").render())
        r.delete(keys.group(gid))
        await settle(app, pilot)
        assert app.screen.missing and table.row_count == 0
        assert "no longer on the grid" in str(app.screen.query_one("#sweep-info").render())


# ---- layout on frozen data ----------------------------------------------------------------


def frozen_groups() -> tuple[dict, ...]:
    def group(i, name, counts, size, par=None):
        full = {s.value: 0 for s in JobState} | counts
        done = full["finished"] + full["failed"] + full["canceled"]
        return {"id": f"{i:02d}" + "cd" * 15, "name": name, "size": size, "max_parallel": par,
                "submitted": NOW - 900 + i * 60, "submitter": "snap@test", "axes": ["lr", "seed"],
                "counts": full, "progress": done / size, "jobs": []}

    return (
        group(0, "lr x seed", {"running": 2, "queued": 3, "finished": 6, "failed": 1}, 12, par=2),
        group(1, "[bold]render[/] frames", {"finished": 40}, 40),
        group(2, "ablation", {"waiting": 4}, 4),
    )


def frozen_cells() -> tuple[Job, ...]:
    states = [JobState.FINISHED, JobState.FAILED, JobState.RUNNING, JobState.QUEUED]
    out = []
    for n, st in enumerate(states):
        out.append(Job(
            id=f"{n:02d}" + "ef" * 15, name=f"lr x seed[{n}]", state=st, queue="default", command="python t.py",
            node="node-a" if st in (JobState.FINISHED, JobState.FAILED, JobState.RUNNING) else None,
            exit_code={JobState.FAILED: 2, JobState.FINISHED: 0}.get(st), duration=30.0 if st.terminal else None,
            started_at=NOW - 75 if st is JobState.RUNNING else None, group="00" + "cd" * 15,
            params={"lr": [0.1, 0.01][n // 2], "seed": n % 2, "_cell": n},
        ))
    return tuple(out)


async def test_groups_80x24():
    app = frozen_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.switch_mode("groups")
        await pilot.pause()
        app.apply_snapshot(snapshot(request=Request(view="groups"), groups=frozen_groups(), groups_total=3))
        await pilot.pause()
        check(app, "groups_80x24")


async def test_sweep_grid_80x24():
    app = frozen_app()
    group = frozen_groups()[0]
    async with app.run_test(size=(80, 24)) as pilot:
        app.switch_mode("groups")
        app.push_screen(SweepGridScreen(app.context, group["id"], group["name"]))
        await pilot.pause()
        cells = frozen_cells()
        group = group | {"jobs": [c.id for c in cells] * 3}
        req = Request(view="group", group_id=group["id"])
        app.apply_snapshot(snapshot(request=req, group=group, cells=cells, progress={cells[2].id: 0.5}))
        await pilot.pause()
        check(app, "sweep_80x24")
