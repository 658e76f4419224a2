"""`grid validate`, `grid schema` and the plan text, through a Typer app like the main one."""

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

import descriptors
from cli.tasks import plan_text, schema, validate
from descriptors import load_text, to_specs
from gridcore.models import GpuInfo, Node, NodeState
from gridcore.placement import Committed

EXAMPLES = Path(descriptors.__file__).parent / "examples"
GB = 10**9

app = typer.Typer()
app.command()(validate)
app.command()(schema)
runner = CliRunner()


def test_validate_ok():
    result = runner.invoke(app, ["validate", str(EXAMPLES / "ising-sweep.json"), str(EXAMPLES / "pipeline.json")])
    assert result.exit_code == 0, result.output
    assert "ising-sweep.json: ok: 1 task (24 jobs after sweeps)" in result.output
    assert "pipeline.json: ok: 4 tasks (4 jobs after sweeps)" in result.output


def test_validate_reports_every_problem_and_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": [{"name": "a", "command": "x", "resources": {"memory": "16 gigs"}},
                                         {"name": "b", "colour": "red"}]}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"command": "x",\n "name": [}')
    result = runner.invoke(app, ["validate", str(bad), str(broken), str(EXAMPLES / "gpu-training.json")])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert f'{bad}: $.tasks[0].resources.memory: "16 gigs" is not a size like "16GB", "512MiB" or a number of ' \
           "bytes" in lines
    assert f"{bad}: $.tasks[1].colour: unknown field" in lines
    assert f'{bad}: $.tasks[1]: needs exactly one of "command" or "argv"' in lines
    assert f"{broken}: line 2, column 11: invalid JSON: Expecting value" in lines
    assert any(line.endswith("gpu-training.json: ok: 1 task (1 job after sweeps)") for line in lines)


def test_validate_missing_file_and_markup_in_names(tmp_path):
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"name": "[bold]x[/bold]", "command": "x", "max_parallel": 2}))
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.json"), str(odd)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope.json'}: cannot read: No such file or directory" in result.output
    assert f"{odd}: $.max_parallel: only applies to a task with a sweep" in result.output


def test_validate_stdin():
    result = runner.invoke(app, ["validate", "-"], input='{"command": "true"}')
    assert result.exit_code == 0
    assert "<stdin>: ok: 1 task (1 job after sweeps)" in result.output


def test_schema_prints_json():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "Science Grid task descriptor"


def node(name, *, state=NodeState.UP, cpus=8, mem=32, gpus=0, labels=(), **kw):
    return Node(name=name, state=state, heartbeat_age=1.0, cpus=cpus, memory_total=mem * GB, slots_total=4,
                gpus=tuple(GpuInfo(index=i) for i in range(gpus)), labels=tuple(labels), **kw)


NODES = [
    node("node-a", gpus=2, labels=("cuda",)),
    node("node-b", cpus=4, mem=16),
    node("node-c", state=NodeState.DRAINING, draining=True),
]


def test_plan_text():
    doc = [
        {"name": "prep", "command": "x", "resources": {"memory": "12GB"}},
        {"name": "sim", "command": "s {i}", "sweep": {"i": list(range(10))}, "max_parallel": 3, "after": ["prep"]},
        {"name": "sweep", "command": "s {i}", "sweep": {"i": list(range(10))}, "max_parallel": 3},
        {"name": "train", "command": "t", "resources": {"gpus": 2}},
        {"name": "huge", "command": "t", "resources": {"gpus": 3}},
    ]
    committed = {"node-b": Committed(cpus=2, memory=6 * GB, jobs=1), "node-a": Committed(gpus=frozenset({1}))}
    text = plan_text(to_specs(load_text(json.dumps(doc))), NODES, committed)
    assert text.splitlines() == [
        "prep  (1 job)",
        "  starts now on node-a",
        "  not on node-b: needs 12GB free, has 10GB",
        "  not on node-c: draining",
        "sim  (10 jobs, sweep, max_parallel 3)",
        "  waits for prep to succeed",
        "  then could start on node-a, node-b (as the grid is now)",
        "  not on node-c: draining",
        "sweep  (10 jobs, sweep, max_parallel 3)",
        "  3 start now: node-b ×2, node-a",
        "  7 wait for max_parallel 3",
        "  not on node-c: draining",
        "train  (1 job)",
        "  waits: no node has room now:",
        "    node-a: needs 2 GPUs free, has 1",
        "  not on node-b: needs 2 GPUs, has 0",
        "  not on node-c: needs 2 GPUs, has 0",
        "huge  (1 job)",
        "  refused: needs 3 GPUs; the largest node has 2",
    ]


def test_plan_text_without_nodes_and_with_hostile_names():
    planned = to_specs(load_text('{"command": "x"}'))
    assert plan_text(planned, [], {}) == "$  (1 job)\n  waits: no node has joined the grid yet"
    evil = node("node-\x1b[31m", state=NodeState.DRAINING, draining=True, drain_reason="\x1b]0;pwned\x07")
    text = plan_text(planned, [evil], {})
    assert "\x1b" not in text and "\x07" not in text
