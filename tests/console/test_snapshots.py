"""SVG snapshots of the layout on frozen data (no broker, no clock, no poll loop).

Regenerate after an intended layout change with GRID_UPDATE_SNAPSHOTS=1, look at the SVGs,
and commit them with the change.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis

from console.app import make_app
from console.poller import Request, Snapshot
from console.screens.detail import JobDetailScreen
from gridcore.client import Grid, QueueStats
from gridcore.models import GpuInfo, Job, JobState, Node, NodeState, OutputChunk
from gridcore.settings import Settings

pytestmark = pytest.mark.asyncio

HERE = Path(__file__).parent / "snapshots"
NOW = 1_800_000_000.0


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def frozen_app():
    settings = Settings(redis_url="redis://frozen.invalid:1/0", submitter="snap@test")
    # Never used: the poll loop is stopped before it starts, and every snapshot is handed over by the test.
    grid = Grid(redis.Redis(host="frozen.invalid", port=1), settings)
    app = make_app(settings, grid, autostart=False, where="redis://grid-broker:6379/0")
    app.poller.stop()  # a screen's mount asks for a poll too; one would wait seconds on DNS for frozen.invalid
    return app


def jobs() -> tuple[Job, ...]:
    states = [JobState.RUNNING, JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.FINISHED,
              JobState.CANCELED, JobState.WAITING]
    out = []
    for i, st in enumerate(states):
        out.append(Job(
            id=f"{i:02d}" + "ab" * 15, name=["train resnet", "sweep lr=0.1", "[bold]markup[/] stays", "bad input",
                                            "render frames", "long job", "after train"][i],
            state=st, queue="gpu" if i % 2 else "default", command="python x.py",
            node="node-a" if st is not JobState.QUEUED and st is not JobState.WAITING else None,
            exit_code={JobState.FAILED: 3, JobState.FINISHED: 0}.get(st),
            enqueued_at=NOW - 600 + i * 30, started_at=NOW - 300 if st is JobState.RUNNING else None,
            duration=42.0 if st.terminal else None,
        ))
    return tuple(out)


def nodes() -> tuple[Node, ...]:
    return (
        Node(name="node-a", state=NodeState.UP, heartbeat_age=0.4, cpus=32, load=(12.5, 10.0, 9.0),
             memory_total=256 * 2**30, memory_used=100 * 2**30, disk_total=2**40, disk_used=2**39,
             gpus=(GpuInfo(0, "A100-SXM4-80GB", memory_total=80 * 2**30, memory_used=40 * 2**30, utilization=97),
                   GpuInfo(1, "A100-SXM4-80GB", memory_total=80 * 2**30, memory_used=2**30, utilization=3)),
             labels=("gpu", "ib"), slots_total=4, slots_busy=2, running=("00" + "ab" * 15, "01" + "ab" * 15),
             hostname="node-a.lab", agent_pid=4242),
        Node(name="node-b", state=NodeState.STALE, heartbeat_age=9.0, cpus=8, load=(0.5,),
             memory_total=32 * 2**30, memory_used=4 * 2**30, slots_total=8),
        Node(name="laptop", state=NodeState.DOWN, heartbeat_age=3600.0, cpus=4, memory_total=16 * 2**30,
             slots_total=2, draining=True, drain_reason="maintenance"),
    )


def snapshot(**kw) -> Snapshot:
    base = dict(
        request=Request(view="jobs"), now=NOW,
        queues=(QueueStats("default", 1, 1, 0, 1, 1, 1, 0, 2), QueueStats("gpu", 0, 1, 0, 0, 0, 0, 1, 4)),
        jobs=jobs(), total=1234, progress={"00" + "ab" * 15: 0.42, "01" + "ab" * 15: 0.07}, nodes=nodes(),
    )
    base.update(kw)
    return Snapshot(**base)


def check(app, name: str) -> None:
    svg = app.export_screenshot()
    path = HERE / f"{name}.svg"
    if os.environ.get("GRID_UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(svg)
        if not os.environ.get("GRID_UPDATE_SNAPSHOTS"):
            pytest.fail(f"{path.name} was missing and has been written: check it and run again")
    assert svg == path.read_text(), f"{name} differs from {path} (GRID_UPDATE_SNAPSHOTS=1 to accept)"


async def test_jobs_80x24():
    app = frozen_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.apply_snapshot(snapshot())
        await pilot.pause()
        check(app, "jobs_80x24")


async def test_nodes_120x30():
    app = frozen_app()
    async with app.run_test(size=(120, 30)) as pilot:
        app.switch_mode("nodes")
        await pilot.pause()
        app.apply_snapshot(snapshot(request=Request(view="nodes")))
        await pilot.pause()
        check(app, "nodes_120x30")


async def test_detail_with_output_80x24():
    app = frozen_app()
    job = jobs()[0]
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(JobDetailScreen(app.context, job.id))
        await pilot.pause()
        chunks = (
            OutputChunk("1-0", "stdout", b"epoch 1\n\x1b[31mnot red\x1b[0m \xff\n"),
            OutputChunk("2-0", "stderr", b"warning: [red]literal[/red]\n"),
            OutputChunk("3-0", "stderr", b"\r 10%|#         |\r 42%|####      |"),
        )
        req = Request(view="jobs", job_id=job.id, after="0-0", fresh=True)
        app.apply_snapshot(snapshot(request=req, job=job, chunks=chunks))
        await pilot.pause()
        check(app, "detail_80x24")


async def test_broker_down_banner_80x24():
    app = frozen_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.apply_snapshot(snapshot())
        app.apply_snapshot(Snapshot(request=Request(), error="cannot reach the broker at redis://grid-broker:6379/0",
                                    retry_in=4.0, attempt=3))
        await pilot.pause()
        check(app, "banner_80x24")
