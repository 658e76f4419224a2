"""`o` opens a job by a short id, as the tables show it; an ambiguous one lists the jobs."""

from __future__ import annotations

import pytest

from console.screens.detail import JobDetailScreen
from gridcore.models import JobSpec
from tests.console.conftest import notes, settle, wait_workers

pytestmark = pytest.mark.asyncio

A = "517e6378" + "a" * 24
B = "517e63ff" + "b" * 24


async def test_open_a_job_by_its_short_id(make, grid):
    for jid in (A, B):
        grid.submit(JobSpec(command="true", name=jid[:4]), job_id=jid)
    app = make(read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("o", *"517e63", "enter")
        await wait_workers(app, pilot)
        assert not isinstance(app.screen, JobDetailScreen)
        assert any(A in n and B in n for n in notes(app))
        await pilot.press("o", *"517e6378", "enter")
        await wait_workers(app, pilot)
        assert isinstance(app.screen, JobDetailScreen) and app.screen.job_id == A
