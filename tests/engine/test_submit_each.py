"""`grid submit --each FILE`: a job per line of a file or of stdin, one group, every line checked
before anything is submitted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gridcore import keys


def _grid(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", "from cli.app import run; run()", *args], input=stdin,
                          capture_output=True, env={**os.environ, "GRID_REDIS_URL": url}, timeout=60)


def test_each_line_of_a_file_is_a_job_of_one_group(settings, broker, grid, tmp_path):
    f = tmp_path / "commands.txt"
    f.write_bytes(b"echo one\n\n   \necho 'two words'\r\nexit 3\n")
    p = _grid(broker.url, "submit", "--each", str(f), "--queue", "batch", "--retries", "1", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["ids"]) == 3
    jobs = {j.id: j for j in grid.get_many(out["ids"])}
    assert [jobs[i].command for i in out["ids"]] == ["echo one", "echo 'two words'", "exit 3"]
    assert {jobs[i].queue for i in out["ids"]} == {"batch"}
    group = grid.group(out["group"])
    assert group["size"] == 3 and group["name"] == f"each {f}"
    assert grid.failed_cells(out["group"]) == []
    assert grid.redis.zcard(keys.group_jobs(out["group"])) == 3


def test_each_reads_stdin(settings, broker, grid):
    p = _grid(broker.url, "submit", "--each", "-", "--name", "step", stdin=b"true\nfalse\n")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    ids, (word, gid, name) = lines[:-1], lines[-1].split(" ", 2)
    assert (word, name, len(ids), len(gid)) == ("group", "step", 2, 32)
    assert [j.name for j in grid.get_many(ids)] == ["step-1", "step-2"]


def test_a_bad_line_is_named_and_nothing_is_submitted(settings, broker, grid, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"echo fine\necho \x00nul\n\xff\xfe\necho fine again\n")
    p = _grid(broker.url, "submit", "--each", str(f))
    assert p.returncode == 2
    err = p.stderr.decode()
    assert f"{f}:2:" in err and f"{f}:3:" in err and f"{f}:1:" not in err
    assert grid.redis.zcard(keys.JOBS) == 0


def test_each_refuses_a_command_a_blank_file_and_a_missing_one(settings, broker, grid, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert _grid(broker.url, "submit", "--each", "-", "--", "true", stdin=b"true\n").returncode == 2
    assert _grid(broker.url, "submit", "--each", str(blank)).returncode == 2
    missing = _grid(broker.url, "submit", "--each", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and b"nope.txt" in missing.stderr
    assert grid.redis.zcard(keys.JOBS) == 0
