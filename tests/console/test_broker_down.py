"""The broker going away and coming back underneath a running console."""

from __future__ import annotations

import pytest

from console.screens.jobs import JobsTable
from console.widgets.status import Banner
from gridcore.client import Grid
from gridcore.connection import connect
from gridcore.models import JobSpec
from tests.support.brokers import start_broker
from tests.console.conftest import notes, rows, settle

pytestmark = pytest.mark.asyncio


@pytest.fixture
def own_broker(broker):
    """A broker this test may stop and restart (the session's one is shared)."""
    b = start_broker(broker.kind)
    yield b
    b.stop()


async def test_banner_backoff_and_recovery(make, settings, own_broker):
    s = settings.model_copy(update={"redis_url": own_broker.url})
    g = Grid(connect(s), s)
    g.submit(JobSpec(command="echo survive", name="survivor"))
    app = make(settings=s, grid=g)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        banner = app.screen.query_one(Banner)
        assert not banner.has_class("-visible")
        own_broker.stop()
        await settle(app, pilot)
        assert banner.has_class("-visible")
        assert "retrying in 1s" in str(banner.render())
        await settle(app, pilot)
        assert "retrying in 2s" in str(banner.render())  # backs off
        assert app.last_snapshot.error is None  # the last good data stays on screen
        assert rows(app.screen.query_one(JobsTable))[0]["name"] == "survivor"
        assert any("cannot reach the broker" in n for n in notes(app))
        own_broker.start()  # same port, same AOF directory
        await settle(app, pilot, ticks=2)
        assert not banner.has_class("-visible")
        assert "connected to the broker again" in notes(app)
        assert rows(app.screen.query_one(JobsTable))[0]["name"] == "survivor"
