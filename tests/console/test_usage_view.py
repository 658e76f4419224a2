"""The usage view (key 6): the history's last day or week, split as `grid usage --by` splits it."""

from __future__ import annotations

import pytest

from console.screens.keys import KeysScreen
from console.screens.usage import UsageScreen, UsageTable
from tests.console.conftest import rows, settle
from tests.support.records import finished_entry, put_finished

pytestmark = pytest.mark.asyncio


async def test_usage_view_sums_the_last_day_and_splits(make, grid, r):
    now = grid.broker_time()
    put_finished(r, finished_entry("job-a1", start=now - 700, end=now - 100),
                 finished_entry("job-b2", submitter="bob@ws2", node="node-b", start=now - 3000, end=now - 2000,
                                outcome="failed", reason_kind="oom", exit_code=None, signal=9),
                 finished_entry("job-old", start=now - 3 * 86400, end=now - 3 * 86400 + 600))
    app = make()
    async with app.run_test(size=(100, 24)) as pilot:
        await pilot.press("6")
        await settle(app, pilot)
        assert isinstance(app.screen, UsageScreen)
        shown = {row["key"]: row for row in rows(app.screen.query_one(UsageTable))}
        assert set(shown) == {"alice", "bob", "total"}
        assert shown["total"]["jobs"] == "2" and shown["total"]["cpu"] == "0.50"  # 2 x 900 CPU-s
        assert shown["bob"]["failed"] == "1" and shown["bob"]["reasons"] == "oom 1"
        await pilot.press("w")  # the last week holds the 3-day-old job too
        await settle(app, pilot)
        assert rows(app.screen.query_one(UsageTable))[-1]["jobs"] == "3"
        await pilot.press("b")  # by node
        await settle(app, pilot)
        assert {row["key"] for row in rows(app.screen.query_one(UsageTable))} == {"node-a", "node-b", "total"}
        assert "last week, by node" in str(app.screen.query_one("#usage-status").render())
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, KeysScreen)


async def test_usage_view_goes_on_without_a_readable_store(make, grid, r, home):
    (home / "data" / "history.sqlite3").write_text("not a database\n" * 100)
    now = grid.broker_time()
    put_finished(r, finished_entry("job-a1", start=now - 700, end=now - 100))
    app = make()
    async with app.run_test(size=(100, 24)) as pilot:
        await pilot.press("6")
        await settle(app, pilot)
        assert rows(app.screen.query_one(UsageTable))[-1]["jobs"] == "1"
        assert "history store" in str(app.screen.query_one("#usage-status").render())
