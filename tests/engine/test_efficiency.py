"""Used against asked: the arithmetic (gridcore/efficiency.py) and where people read it."""

from __future__ import annotations

import json
import os

from console.screens.detail import job_fields
from console.screens.sweep import group_header
from gridcore import efficiency, keys
from gridcore.models import JobSpec, Resources
from gridcore.records import Usage
from tests.support.cli import run_cli
from tests.support.records import put_node, put_result

GiB = 2**30


def test_used_against_asked_in_words():
    usage = {"wall": 100.0, "cpu_user": 350.0, "cpu_system": 10.0, "memory_peak": int(1.2 * GiB),
             "memory_source": "cgroup", "gpu_memory_peak": 31 * GiB, "gpu_utilization": 85.0,
             "io_read": 2**20, "io_write": 0}
    lines = {u.label: u for u in efficiency.used_lines(usage, {"cpus": 4, "memory": 16 * GiB, "gpus": 1},
                                                       gpu_memory=80 * GiB)}
    assert lines["memory"].text == "1.2 GiB of 16 GiB (7%)" and round(lines["memory"].share, 3) == 0.075
    assert lines["CPU"].text.startswith("3.6 of 4 cores (90%)")
    assert lines["GPU mem"].text == "31 GiB of 80 GiB (39%), 85% busy"
    assert lines["disk IO"].text == "1 MiB read, 0 B written"
    # Far less memory than asked is flagged, with the request that would do; CPU at 90% is not.
    assert efficiency.advice(usage, {"cpus": 4, "memory": 16 * GiB}) == [
        "used 7% of the memory asked: memory 1536MiB would do"]
    # Figures the node could not measure are left out, not shown as zero.
    assert efficiency.used_lines({"wall": 2.0}, {"cpus": 1}) == []
    assert efficiency.used_lines(None, {}) == [] and efficiency.advice("junk", 3) == []


def test_oom_advice_names_the_request_to_make():
    asked = {"cpus": 1, "memory": 64 * 2**20}
    assert efficiency.advice({"memory_peak": 64 * 2**20}, asked, "oom") == [
        "killed for using more than the 64 MiB it asked: ask for memory 256MiB or more"]
    assert efficiency.advice({"memory_peak": 3 * GiB}, {"cpus": 1}, "oom") == [
        "the node ran out of memory after 3 GiB and none was asked: ask for memory 6GiB so it runs where that fits"]
    # An idle 8-core request that ran a while is flagged too.
    assert efficiency.advice({"wall": 60.0, "cpu_user": 55.0, "cpu_system": 5.0}, {"cpus": 8}) == [
        "used 1.0 of 8 cores: cpus 2 would do"]


def test_sweep_median_and_max():
    s = efficiency.spread([3.0, 1.0, 2.0, 10.0])
    assert (s.cells, s.median, s.max) == (4, 2.5, 10.0)
    figures = {"memory": {"cells": 3, "median": 1 * GiB, "max": 3 * GiB}, "cores": {"cells": 3, "median": 0.9, "max": 1.0}}
    lines = efficiency.sweep_lines(figures, {"cpus": 1, "memory": 4 * GiB})
    assert [f"{u.label} {u.text}" for u in lines] == [
        "memory median 1 GiB, max 3 GiB of 4 GiB (75% at most)", "CPU median 0.9, max 1.0 cores of 1"]
    assert efficiency.sweep_request(figures) == '{"cpus": 2, "memory": "3840MiB"}'
    assert efficiency.sweep_lines({"memory": {"cells": "x"}}, None) == []  # anyone's JSON: ignored


def test_show_console_and_groups_read_the_recorded_usage(r, grid, broker, tmp_path):
    limit = 64 * 2**20
    jid = grid.submit(JobSpec(command="python hog.py", resources=Resources(memory=limit)))
    usage = Usage(wall=2.0, cpu_user=1.5, cpu_system=0.1, memory_peak=limit, memory_source="cgroup")
    put_result(r, jid, exit_code=None, signal=9, reason="out of memory", reason_kind="oom", usage=usage)
    p = run_cli("show", jid, url=broker.url, env={**os.environ, "COLUMNS": "100"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("usage"))
    assert lines[at][14:] == "memory 64 MiB of 64 MiB (100%)"
    assert lines[at + 1][14:].startswith("CPU 0.8 of 1 core (80%)")
    assert any(line.startswith("advice") and "ask for memory 256MiB" in line for line in lines)
    console = job_fields(grid.get(jid), 0.0).plain
    assert "usage memory 64 MiB of 64 MiB (100%)" in console and "ask for memory 256MiB" in console

    # A sweep: each measured cell's figures, its median and max in `grid groups` and the grid's header.
    path = tmp_path / "sq.json"
    path.write_text(json.dumps({"tasks": [{"name": "sq", "command": "echo {x}", "sweep": {"x": [1, 2, 3]},
                                           "resources": {"memory": "4GiB"}}]}))
    p = run_cli("submit", "-f", str(path), "--json", url=broker.url)
    assert p.returncode == 0, p.stderr
    (group,) = grid.groups()
    with r.pipeline() as pipe:
        for jid, mem in zip(group["jobs"], (1, 3, 2), strict=True):
            efficiency.record_cell(pipe, group["id"], jid, {"memory_peak": mem * GiB, "wall": 10.0, "cpu_user": 9.0,
                                                            "cpu_system": 0.0}, 60)
        pipe.execute()
    assert r.ttl(keys.group_usage(group["id"], "memory")) > 0
    listed = json.loads(run_cli("groups", "--json", url=broker.url, check=True).stdout)
    assert listed[0]["usage"]["memory"] == {"cells": 3, "median": 2 * GiB, "max": 3 * GiB}
    p = run_cli("groups", url=broker.url, env={**os.environ, "COLUMNS": "200"})
    row = p.stdout.splitlines()[1].split("\t")
    assert row[8:] == ["2 GiB/3 GiB of 4 GiB", "0.9/0.9", '{"cpus": 2, "memory": "3840MiB"}'], row
    header = group_header(grid.group(group["id"]), 0.0).plain
    assert "per cell: memory median 2 GiB, max 3 GiB of 4 GiB (75% at most)" in header


def test_show_puts_gpu_memory_against_the_gpus_held(r, grid, broker):
    put_node(r, "node-a", grid.broker_time())  # one 8 GiB GPU, index 0
    jid = grid.submit(JobSpec(command="python train.py", resources=Resources(gpus=1)))
    put_result(r, jid, exit_code=0, node="node-a", gpus=["0"],
               usage=Usage(wall=10.0, gpu_memory_peak=2 * GiB, gpu_utilization=50.0))
    p = run_cli("show", jid, url=broker.url, env={**os.environ, "COLUMNS": "100"})
    assert p.returncode == 0, p.stderr
    assert "usage         GPU mem 2 GiB of 8 GiB (25%), 50% busy" in p.stdout.splitlines()
