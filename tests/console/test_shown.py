"""What the console shows, right at 80x24: a signal in the exit column, draining nodes in the
header, a command's lines in the job detail."""

from __future__ import annotations

from dataclasses import replace

import pytest

from console.poller import Request
from console.screens.detail import JobDetailScreen
from gridcore.models import JobState, NodeState
from tests.console.conftest import screen_text
from tests.console.test_snapshots import frozen_app, jobs, snapshot

pytestmark = pytest.mark.asyncio


async def test_a_signal_shows_whole_in_the_exit_column():
    app = frozen_app()
    killed = replace(jobs()[5], state=JobState.FAILED, exit_code=None, signal=15)
    async with app.run_test(size=(80, 24)) as pilot:
        app.apply_snapshot(snapshot(jobs=(killed,), total=1))
        await pilot.pause()
        row = next(line for line in screen_text(app) if killed.id[:8] in line)
        assert " sig15 " in row + " "


async def test_the_header_counts_draining_nodes_apart():
    app = frozen_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.apply_snapshot(snapshot(node_states={"node-a": NodeState.DRAINING}))
        await pilot.pause()
        assert "nodes 0/1 up, 1 draining" in screen_text(app)[0]


async def test_the_detail_keeps_a_commands_lines():
    app = frozen_app()
    job = replace(jobs()[0], command="set -e\npython fit.py \\\n  --lr 0.1")
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(JobDetailScreen(app.context, job.id))
        await pilot.pause()
        app.apply_snapshot(snapshot(request=Request(view="detail", job_id=job.id, fresh=True), job=job))
        await pilot.pause()
        shown = screen_text(app)
        at = next(i for i, line in enumerate(shown) if "command set -e" in line)
        assert shown[at + 1].strip() == "python fit.py \\" and shown[at + 2].strip() == "--lr 0.1"
