"""The console follows the local grid through `grid down; grid up` (a new port, a new password)."""

from __future__ import annotations

import json
import os

import pytest

from console.app import make_app
from console.widgets.status import Banner
from gridcore.client import Grid
from gridcore.connection import connect, local_state_path
from gridcore.models import JobSpec
from gridcore.settings import load_settings
from tests.support.brokers import Broker, available_kinds, default_kind
from tests.support.wait import eventually_async
from tests.console.conftest import notes, settle

pytestmark = pytest.mark.asyncio


def local_broker(password: str) -> Broker:
    kind = default_kind()
    return Broker(kind=kind, binary=available_kinds()[kind], password=password).start()


def write_state(broker: Broker | None, port: int | None = None) -> None:
    """What `grid up` / `grid down` leave in the local grid's state file."""
    path = local_state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"url": f"redis://127.0.0.1:{broker.port if broker else port}/0",
             "password": broker.password if broker else "gone", "broker_pid": broker.proc.pid if broker else None}
    path.write_text(json.dumps(state))


async def test_console_follows_a_restarted_local_grid(home):
    first = local_broker("first-password")
    second = None
    try:
        write_state(first)
        settings = load_settings(overrides={"submitter": "tester@suite"})
        assert not settings.redis_url  # the local grid, found through its state file
        grid = Grid(connect(settings), settings)
        app = make_app(settings, grid, poll_interval=3600)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            banner = app.screen.query_one(Banner)
            assert not banner.has_class("-visible")
            # grid down: the broker stops, the state file keeps its last address.
            old_port = first.port
            first.stop()
            write_state(None, port=old_port)
            for _ in range(5):
                await settle(app, pilot)
            shown = str(banner.render())
            assert banner.has_class("-visible") and "grid up" in shown
            assert app.poller._last.retry_in <= 2.0  # a local grid is retried every couple of seconds
            # grid up: a new broker on another port with another password.
            second = local_broker("second-password")
            Grid(connect(settings.model_copy(update={"redis_url": second.url, "redis_password": "second-password"})),
                 settings).submit(JobSpec(command="true", name="after restart"))
            write_state(second)

            async def back():
                await settle(app, pilot)
                return not banner.has_class("-visible")

            await eventually_async(back, 10, 0.2, "the console to reconnect to the new local broker")
            assert "connected to the broker again" in notes(app)
            assert app.grid.list()[1] == 1 and f":{second.port}/" in app.link.url
    finally:
        first.stop()
        if second:
            second.stop()
