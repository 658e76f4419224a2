"""Whatever a broker writer puts in job, node, event and output records is shown inert."""

from __future__ import annotations

import json

import pytest

from console.screens.detail import JobDetailScreen
from console.screens.events import EventsTable
from console.screens.jobs import JobsTable
from console.screens.nodes import NodesTable
from console.widgets.output import OutputView
from gridcore import keys
from gridcore.models import JobSpec
from gridcore.records import OutputEntry
from tests.console.conftest import rows, settle

pytestmark = pytest.mark.asyncio

EVIL = "\x1b]0;pwned\x07\x1b[2J[bold red]loud[/]\u202eevil\x00"


def plant(r, grid) -> str:
    jid = grid.submit(JobSpec(command="echo hi", name="plain"))
    meta = json.loads(r.hget(keys.rq_job(jid), "meta"))
    meta.update(name=EVIL, submitted="yesterday", resources=5, params=7, timeout="soon", command=EVIL * 1000)
    r.hset(keys.rq_job(jid), "meta", json.dumps(meta))
    r.set(keys.result(jid), json.dumps({"exit_code": "boom", "duration": "long", "start": [1],
                                         "node": {"nested": EVIL}, "stdout": EVIL}))
    now = grid.broker_time()
    r.zadd(keys.NODES, {"evil\x1b[5m": now})
    r.hset(keys.node("evil\x1b[5m"), mapping={"beat": repr(now),
        "inventory": json.dumps({"cpus": 4, "labels": ["[link=http://x]l[/link]"],
                                 "gpus": [{"index": 0, "name": EVIL, "utilization": "hot"}]}),
        "load": json.dumps({"loadavg": ["a", None], "cpu_percent": "x"}),
        "slots": "2", "hostname": EVIL,
    })
    r.xadd(keys.EVENTS, {"t": "later", "kind": EVIL, "job": EVIL, "node": "", "msg": EVIL})
    r.xadd(keys.output(jid), OutputEntry("o", b"\x1b[2J\x1b]52;c;ZXZpbA==\x07ok \xff\n[bold]x[/bold]\n").fields())
    r.xadd(keys.output(jid), {"s": "z", "d": EVIL})  # no such kind: hand-written on purpose
    return jid


def no_escapes(table) -> None:
    for row in rows(table):
        for value in row.values():
            assert "\x1b" not in value and "\x07" not in value and "\u202e" not in value, row


async def test_hostile_records_are_shown_inert(make, grid, r):
    jid = plant(r, grid)
    app = make()
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(JobsTable)
        no_escapes(table)
        assert "[bold red]loud[/]" in rows(table)[0]["name"]
        for view, cls in (("3", NodesTable), ("4", EventsTable)):
            await pilot.press(view)
            await settle(app, pilot)
            no_escapes(app.screen.query_one(cls))
        await pilot.press("1")
        await settle(app, pilot)
        app.open_job(jid)
        await settle(app, pilot, ticks=2)
        assert isinstance(app.screen, JobDetailScreen)
        lines = app.screen.query_one(OutputView).plain_lines()
        assert lines[:2] == ["  ok \ufffd", "  [bold]x[/bold]"]
        assert all("\x1b" not in line for line in lines)
        fields = str(app.screen.query_one("#fields").render())
        assert "\x1b" not in fields and "[bold red]loud[/]" in fields
        assert app.last_snapshot.error is None
        assert app.display_errors == []
        svg = app.export_screenshot()
        assert "pwned" not in svg


async def test_one_malformed_node_does_not_hide_the_others(make, grid, r, agents):
    agents("node-a", slots=1)
    r.zadd(keys.NODES, {"broken": grid.broker_time()})
    r.hset(keys.node("broken"), mapping={"load": json.dumps({"memory_used": "lots"}), "slots": "many",
                                        "beat": repr(grid.broker_time())})
    app = make()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("3")
        await settle(app, pilot)
        assert app.last_snapshot is not None and app.last_snapshot.error is None
        assert "node-a" in {row["name"] for row in rows(app.screen.query_one(NodesTable))}
