"""What the CLI shows is what the grid holds: counts that agree, sizes written one way, orders kept,
`grid show` in words (never Python reprs), every field whole."""

from __future__ import annotations

import json
import os

from gridcore import keys
from gridcore.models import JobSpec, Resources
from tests.support.cli import run_cli
from tests.support.records import node_record, put_node, put_result


def finish(r, jid: str, queue: str, now: float) -> None:
    """Move a job to `queue`'s finished registry, as a slot serving that queue records it."""
    r.hset(keys.rq_job(jid), mapping={"status": "finished", "origin": queue})
    r.zadd(keys.rq_registry("finished", queue), {jid: now})


def test_queue_counts_include_the_node_queues_that_placed_jobs_ran_from(r, grid, broker):
    now = grid.broker_time()
    put_node(r, "node-a", now)
    plain = [grid.submit(JobSpec(command="true")) for _ in range(2)]
    placed = [grid.submit(JobSpec(command="true", resources=Resources(cpus=2))) for _ in range(3)]
    for jid in plain:
        finish(r, jid, "default", now)
    for jid in placed:  # placed on node-a, run from its own queue, which RQ has forgotten since
        r.lrem(keys.rq_queue(keys.PENDING_QUEUE), 0, jid)
        finish(r, jid, keys.node_queue("node-a"), now)
    queues = json.loads(run_cli("queues", "--json", url=broker.url, check=True).stdout)
    listed = json.loads(run_cli("ls", "--state", "finished", "--json", url=broker.url, check=True).stdout)
    assert sum(q["finished"] for q in queues) == listed["total"] == 5
    assert {q["name"]: q["finished"] for q in queues}[keys.node_queue("node-a")] == 3


def test_jobs_submitted_together_list_in_their_order(grid):
    grid.submit_many([JobSpec(command=f"run {i}", name=f"ising[{i}]") for i in range(25)])
    names = [j.name for j in grid.list(limit=30)[0]]
    assert names == [f"ising[{i}]" for i in reversed(range(25))]  # newest first: the last cell first


def test_memory_reads_the_same_in_the_cli_and_the_console(r, grid, broker):
    from console.screens.nodes import node_cells

    used, total = int(23.5 * 2**30), 64 * 2**30
    base = node_record()
    put_node(r, "node-a", grid.broker_time(), node_record(
        inventory=base.inventory.model_copy(update={"memory_total": total}),
        load=base.load.model_copy(update={"memory_used": used})))
    (node,) = grid.nodes()
    console = node_cells(node)["mem"].plain
    shown = run_cli("nodes", url=broker.url, check=True).stdout.splitlines()[1].split("\t")
    assert shown[5] == console == "25.2GB/68.7GB"


def test_show_is_in_words_with_timeout_retries_and_a_whole_log_path(r, grid, broker):
    jid = grid.submit(JobSpec(command="set -e\npython fit.py \\\n  --lr 0.1", name="fit", timeout=1800, retries=2,
                              resources=Resources(cpus=2, memory=16 * 10**9, labels=("a100",))))
    path = "/var/lib/science-grid/logs/" + "deep/" * 12 + f"{jid}.log"
    put_result(r, jid, log_path=path)
    p = run_cli("show", jid, url=broker.url, env={**os.environ, "COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    fields = {line[:12].strip(): line[14:] for line in p.stdout.splitlines() if line[:12].strip()}
    assert fields["exit code"] == "-" and fields["timeout"] == "30m00s" and fields["retries left"] == "2"
    assert fields["resources"] == "cpus 2, memory 16GB, labels a100"
    assert fields["log"] == path  # whole, on its line
    assert "None" not in p.stdout and "{'" not in p.stdout
    command = p.stdout[p.stdout.index("command"):].splitlines()[:3]
    assert [c[14:] for c in command] == ["set -e", "python fit.py \\", "  --lr 0.1"]
