"""Output past the budget: the broker keeps the head and a rolling tail, and says what it left out."""

from __future__ import annotations

import os
import random

import pytest

from agent.output import OutputSink
from gridcore.models import JobSpec
from gridcore.records import EndMarker, Gaps
from tests.support.cli import run_cli

BUDGET = 64 * 1024


def numbered(first: int, n: int) -> bytes:
    return b"".join(b"line %07d of the job's output\n" % i for i in range(first, first + n))


def run_job_output(r, tmp_path, jid: str, data: bytes, *, flush_every: int = 7, stream_of=lambda i: "o",
                   end: bool = True) -> OutputSink:
    """Feed `data` to a sink in uneven writes, flushing as the broker thread would, then end it."""
    sink = OutputSink(r, jid, "node-a", 1000.0, budget=BUDGET, log_dir=tmp_path / "logs", log_cap=2**30, ttl=600)
    rnd = random.Random(7)
    pos = i = 0
    while pos < len(data):
        n = rnd.randint(1, 9000)
        sink.add(stream_of(i), data[pos : pos + n])
        pos, i = pos + n, i + 1
        if i % flush_every == 0:
            sink.flush()
    if end:
        with r.pipeline(transaction=False) as pipe:
            sink.write_last(pipe, EndMarker(0, None, None, None).fields())
            pipe.execute()
    sink.close()
    return sink


@pytest.fixture
def job(grid):
    return grid.submit(JobSpec(command="true", name="chatty"))


def test_head_and_newest_tail_are_kept_and_the_gap_is_exact(r, grid, job, tmp_path):
    data = numbered(0, 40_000)  # ~1.3 MB, 20x the budget
    sink = run_job_output(r, tmp_path, job, data)
    chunks = grid.tail(job, count=100_000)
    out = [c for c in chunks if c.stream == "stdout"]
    kept = b"".join(c.data for c in out)
    head = data[: BUDGET // 2]
    assert kept.startswith(head)
    tail = kept[len(head):]
    assert data.endswith(tail) and BUDGET // 2 - sink.piece_max <= len(tail) <= BUDGET // 2
    assert sink.dropped == len(data) - len(kept)
    gaps = Gaps()
    found = [g for c in out if (g := gaps.gap(c))]
    left_out = data[len(head) : len(data) - len(tail)]
    assert found == [(len(left_out), left_out.count(b"\n"))]
    notes = [c.data.decode() for c in chunks if c.stream == "note"]
    assert any("rolling tail" in n and str(sink.log_path) in n for n in notes)
    assert chunks[-1].stream == "end"
    assert r.xlen(f"grid:out:{job}") < 200  # entries the tail moved past are gone from the stream
    assert (tmp_path / "logs" / f"{job}.log").read_bytes() == data


def test_grid_logs_shows_head_gap_and_the_true_end(r, grid, job, tmp_path, broker):
    data = numbered(0, 40_000)
    run_job_output(r, tmp_path, job, data)
    p = run_cli("logs", job, url=broker.url, env={**os.environ, "COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    shown = p.stdout.encode()
    head = data[: BUDGET // 2]
    assert shown.startswith(head)
    assert shown.endswith(b"line 0039999 of the job's output\n")  # the job's last line, where a traceback is
    left_out = data[len(head) : len(data) - (len(shown) - len(head))]
    gap = [x for x in p.stderr.splitlines() if "not kept in the broker" in x]
    lines = left_out.count(b"\n")
    assert len(gap) == 1 and f"({lines:,} lines)" in gap[0] and "1.3MB" in gap[0]


def test_logs_tail_reaches_the_end(r, grid, job, tmp_path, broker):
    data = numbered(0, 40_000)
    run_job_output(r, tmp_path, job, data)
    p = run_cli("logs", "--tail", "3", job, url=broker.url)
    assert p.returncode == 0, p.stderr
    assert p.stdout == numbered(39_997, 3).decode()


def test_last_lines_counts_both_streams_and_an_open_last_line(r, grid, job, tmp_path):
    data = numbered(0, 50) + b"no newline yet"
    run_job_output(r, tmp_path, job, data, flush_every=1, stream_of=lambda i: "oe"[i % 2], end=False)
    chunks = grid.last_lines(job, 2)
    assert b"".join(c.data for c in chunks if c.stream in ("stdout", "stderr")) == numbered(49, 1) + b"no newline yet"
    everything = grid.last_lines(job, 10_000)
    assert b"".join(c.data for c in everything if c.stream in ("stdout", "stderr")) == data
