"""The output pane opens at the job's latest output and follows it until the operator scrolls up."""

from __future__ import annotations

import pytest

from console.format import size
from console.poller import Request
from console.screens.detail import JobDetailScreen
from console.widgets.output import OutputView
from gridcore.models import OutputChunk
from tests.console.test_snapshots import frozen_app, jobs, snapshot

pytestmark = pytest.mark.asyncio


def lines(first: int, n: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(first, first + n))


async def open_with_output(pilot, app, size_lines: int):
    job = jobs()[0]
    app.push_screen(JobDetailScreen(app.context, job.id))
    await pilot.pause()
    detail = app.screen
    req = Request(view="detail", job_id=job.id, after="0-0", fresh=True)
    app.apply_snapshot(snapshot(request=req, job=job, chunks=(OutputChunk("1-1", "stdout", lines(0, size_lines)),)))
    await pilot.pause()
    return detail, job


def more(app, job, after: str, eid: str, first: int, n: int):
    req = Request(view="detail", job_id=job.id, after=after)
    app.apply_snapshot(snapshot(request=req, job=job, chunks=(OutputChunk(eid, "stdout", lines(first, n)),)))


def status(detail) -> str:
    return str(detail.query_one("#output-status").render())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
async def test_a_tall_output_opens_at_its_end_and_follows(size):
    app = frozen_app()
    async with app.run_test(size=size) as pilot:
        detail, job = await open_with_output(pilot, app, 61)
        view = detail.query_one(OutputView)
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y
        for k in range(4):
            more(app, job, detail.buffer.cursor, f"1-{k + 2}", 61 + 6 * k, 6)
            await pilot.pause()
            assert view.scroll_y == view.max_scroll_y, f"batch {k}: not at the end"
            assert "following" in status(detail) and "paused" not in status(detail)
        assert view.plain_lines()[-1] == "  line 84"


async def test_scrolling_up_pauses_and_end_follows_again():
    app = frozen_app()
    async with app.run_test(size=(80, 24)) as pilot:
        detail, job = await open_with_output(pilot, app, 61)
        view = detail.query_one(OutputView)
        await pilot.press("up", "up")
        held = view.scroll_y
        more(app, job, detail.buffer.cursor, "1-2", 61, 6)
        await pilot.pause()
        assert view.scroll_y == held
        assert "paused, 6 new below" in status(detail)
        await pilot.press("end")
        await pilot.pause()
        assert view.scroll_y == view.max_scroll_y and "following" in status(detail)
        await pilot.press("pageup")
        await pilot.press("pagedown", "pagedown", "pagedown")
        await pilot.pause()
        assert "following" in status(detail)  # scrolling back down to the end resumes following


async def test_output_left_out_of_the_broker_is_marked_and_end_is_the_jobs_end():
    app = frozen_app()
    job = jobs()[0]
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(JobDetailScreen(app.context, job.id))
        await pilot.pause()
        detail = app.screen
        head, tail = lines(0, 30), lines(5000, 30)
        chunks = (
            OutputChunk("1-1", "stdout", head[:-5], offset=0, line=0),
            OutputChunk("1-2", "stdout", head[-5:], offset=len(head) - 5, line=29),
            OutputChunk("1-3", "note", b"output past the first 1KB is kept as a rolling tail"),
            OutputChunk("1-9", "stdout", tail, offset=123_456, line=5000),
            OutputChunk("1-10", "end"),
        )
        req = Request(view="detail", job_id=job.id, after="0-0", fresh=True)
        app.apply_snapshot(snapshot(request=req, job=job, chunks=chunks))
        await pilot.pause()
        shown = detail.query_one(OutputView).plain_lines()
        gap = next(i for i, line in enumerate(shown) if "not kept in the broker" in line)
        assert shown[gap - 2] == "  line 29" and shown[gap + 1] == "  line 5000"
        assert f"… {size(123_456 - len(head))} (4,970 lines)" in shown[gap]
        await pilot.press("home", "end")
        view = detail.query_one(OutputView)
        assert view.scroll_y == view.max_scroll_y and shown[-2] == "  line 5029"
