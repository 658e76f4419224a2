"""`grid ls` and the other tables: fitted at 80 columns on a terminal, whole and tab-separated when piped."""

from __future__ import annotations

import os

import pytest

from gridcore import keys
from gridcore.models import JobSpec
from gridcore.records import Result
from tests.support.cli import run_cli, run_cli_tty

LONG_NAME = "train a very large model on the whole dataset with augmentation enabled"


def plant(r, grid, name: str, status: str, **result) -> str:
    """A job in `status` with the result its slot would record (no agent needed)."""
    jid = grid.submit(JobSpec(command="python train.py", name=name, queue="default"))
    r.hset(keys.rq_job(jid), "status", status)
    if result:
        r.set(keys.result(jid), Result(node="gpu-node-07", duration=4242.0, **result).encode())
    return jid


@pytest.fixture
def jobs(r, grid):
    return {
        "finished": plant(r, grid, "render frames", "finished", exit_code=0),
        "failed": plant(r, grid, "bad input", "failed", exit_code=3, reason="exit code 3", reason_kind="exit"),
        "signal": plant(r, grid, LONG_NAME, "failed", signal=15, reason="killed by signal 15 (SIGTERM)",
                        reason_kind="signal"),
        "canceled": plant(r, grid, "long job", "canceled", signal=15, reason="canceled", reason_kind="canceled"),
        "running": plant(r, grid, "sweep lr=0.1", "started"),
    }


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_ls_fits_a_terminal_with_the_columns_that_matter_whole(jobs, broker, columns):
    code, screen = run_cli_tty("ls", url=broker.url, columns=columns)
    assert code == 0, screen
    lines = screen.splitlines()
    assert all(len(line) <= columns for line in lines), screen
    head = lines[0].split()
    assert head[:3] == ["ID", "NAME", "STATE"] and {"NODE", "RUNTIME", "EXIT"} <= set(head)
    rows = {line[:8]: line for line in lines[1:]}
    for state in ("finished", "failed", "canceled", "running"):
        row = rows[jobs[state][:8]]
        assert f" {state} " in row, row
    sig = rows[jobs["signal"][:8]]
    assert " gpu-node-07 " in sig and " 1h10m " in sig and (" sig15 " in sig or sig.endswith(" sig15"))
    name = sig[8:sig.index(" failed ")].strip()
    assert name.endswith("…") and LONG_NAME.startswith(name[:-1]) and len(name) >= 12  # the name takes what is left


def test_ls_piped_is_whole_and_tab_separated(jobs, broker):
    p = run_cli("ls", url=broker.url, env={**__import__("os").environ, "COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split("\t") == ["ID", "NAME", "STATE", "QUEUE", "NODE", "SUBMITTER", "SUBMITTED", "RUNTIME",
                                    "EXIT", "REASON"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert set(rows) == set(jobs.values())  # whole ids, one row per line
    sig = rows[jobs["signal"]]
    assert sig[1] == LONG_NAME and sig[2] == "failed" and sig[8] == "sig15"
    assert sig[9] == "killed by signal 15 (SIGTERM)" and "…" not in p.stdout


@pytest.mark.parametrize("limit", ["50", "2"])
def test_ls_piped_writes_what_rich_writes(jobs, grid, broker, limit):
    # Piped, `grid ls` writes its lines without Rich (cli/piped.py) when the pipe is surely no
    # terminal; TTY_COMPATIBLE=0 has Rich decide, and it takes the pipe for no terminal too.
    grid.submit(JobSpec(command="true", name="a\ttab, \x1b[31mred\x1b[0m, a\nnewline \u202e and [bold]markup[/]"))
    fast = run_cli("ls", "--limit", limit, url=broker.url)
    through_rich = run_cli("ls", "--limit", limit, url=broker.url, env={**os.environ, "TTY_COMPATIBLE": "0"})
    assert fast.returncode == through_rich.returncode == 0, fast.stderr + through_rich.stderr
    assert (fast.stdout, fast.stderr) == (through_rich.stdout, through_rich.stderr)
    assert len(fast.stdout.splitlines()) == 1 + min(int(limit), len(jobs) + 1)
    assert "\ta   tab, red, a newline  and [bold]markup[/]\t" in fast.stdout  # cleaned, never parsed


def test_other_tables_are_whole_when_piped(jobs, broker, r):
    for command in ("queues", "events", "groups", "nodes"):
        p = run_cli(command, url=broker.url)
        assert p.returncode == 0, p.stderr
        assert "\t" in p.stdout.splitlines()[0] and "…" not in p.stdout


def test_nodes_says_never_for_a_node_that_never_beat(r, grid, broker):
    """As the console and `grid doctor` say it: no heartbeat is "never", not a blank age."""
    from tests.support.records import put_node

    now = grid.broker_time()
    put_node(r, "up", now - 3)
    r.zadd(keys.NODES, {"gone": now})
    p = run_cli("nodes", url=broker.url)
    assert p.returncode == 0, p.stderr
    ages = {row.split("\t")[0]: row.split("\t")[2] for row in p.stdout.splitlines()[1:]}
    assert ages["gone"] == "never" and ages["up"].endswith("s") and ages["up"] != "never"
