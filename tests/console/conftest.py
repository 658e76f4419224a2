"""Console fixtures: the app on the suite's real broker, with the poll loop under test control."""

from __future__ import annotations

import pytest

from console.app import make_app
from tests.support.wait import eventually_async


@pytest.fixture
def make(settings, grid):
    """Factory for a GridApp that polls only when a test asks (`await settle(app, pilot)`)."""

    def build(**kw):
        kw.setdefault("poll_interval", 3600)
        return make_app(kw.pop("settings", settings), kw.pop("grid", grid), **kw)

    return build


async def settle(app, pilot, ticks: int = 1):
    """Run `ticks` polls to completion and let the UI apply them."""
    for _ in range(ticks):
        await app.poller.refresh()
    await pilot.pause()


async def until(app, pilot, predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll (for real) until `predicate()` holds; fail with `what` after `timeout` seconds."""

    async def polled():
        await settle(app, pilot)
        return predicate()

    await eventually_async(polled, timeout, 0.1, what)


async def wait_workers(app, pilot):
    """Let action workers (submit, cancel, requeue) finish and their notifications land."""
    await app.workers.wait_for_complete([w for w in app.workers if w.group == "actions"])
    await pilot.pause()


def rows(table) -> list[dict[str, str]]:
    """The table as shown: one {column: plain text} per row, in display order."""
    out = []
    for i in range(table.row_count):
        cells = table.get_row_at(i)
        out.append({c.key: str(getattr(v, "plain", v)) for c, v in zip(table.shown, cells, strict=True)})
    return out


def notes(app) -> list[str]:
    """Notification texts, oldest first."""
    return [n.message for n in app._notifications]


def screen_text(app) -> list[str]:
    """The screen as a terminal would show it: one string per row (what the SVG snapshots draw)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text().splitlines()
