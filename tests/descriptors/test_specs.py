"""From descriptors to job specs: ids, sweep cells, groups, and `after` resolved to ids."""

import itertools
import json

from descriptors import load_text, to_specs
from gridcore.models import JobSpec, Resources


def plan(doc):
    counter = itertools.count()
    return to_specs(load_text(json.dumps(doc)), new_id=lambda: f"{next(counter):032x}")


def test_single_task_spec():
    [p] = plan({"name": "train", "command": "python train.py", "cwd": "/data", "env": {"A": "1"}, "queue": "gpu",
                "resources": {"cpus": 4, "gpus": 1, "memory": "16GB", "labels": ["a100"], "node": "node-a"},
                "timeout": "2h", "retries": {"count": 2, "backoff": [1.5, "1m"]}, "priority": 5, "tags": ["x"]})
    assert p.task == "train" and p.path == "$" and p.max_parallel is None
    assert len(p.job_id) == 32
    assert p.spec == JobSpec(
        command="python train.py", name="train", queue="gpu", cwd="/data", env={"A": "1"}, timeout=7200.0,
        retries=2, retry_backoff=(2, 60), priority=5, tags=("x",),
        resources=Resources(cpus=4.0, gpus=1, memory=16 * 10**9, labels=("a100",), node="node-a"),
    )


def test_real_ids_are_uuid4_hex_and_unique():
    d = load_text(json.dumps({"command": "x {i}", "sweep": {"i": list(range(50))}}))
    ids = [p.job_id for p in to_specs(d)]
    assert len(set(ids)) == 50
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_sweep_cells_are_a_cartesian_product():
    planned = plan({"name": "fit", "command": "fit --lr {lr} --seed {seed} --home ${HOME} {{other}}",
                    "argv": None, "env": {"SEED": "{seed}", "HOME_DIR": "${HOME}"},
                    "sweep": {"lr": [0.1, 0.01], "seed": [1, 2, 3]}, "max_parallel": 4})
    assert len(planned) == 6
    assert [p.spec.params for p in planned] == [
        {"lr": lr, "seed": s, "_cell": i}
        for i, (lr, s) in enumerate(itertools.product([0.1, 0.01], [1, 2, 3]))
    ]
    assert planned[4].spec.command == "fit --lr 0.01 --seed 2 --home ${HOME} {other}"
    assert planned[4].spec.env == {"SEED": "2", "HOME_DIR": "${HOME}", "GRID_SWEEP_LR": "0.01", "GRID_SWEEP_SEED": "2",
                                   "GRID_SWEEP_ID": planned[4].spec.group, "GRID_SWEEP_INDEX": "4",
                                   "GRID_SWEEP_SIZE": "6"}
    assert planned[4].spec.name == "fit[4]"
    assert len({p.spec.group for p in planned}) == 1 and planned[0].spec.group
    assert {p.max_parallel for p in planned} == {4}
    assert {p.task for p in planned} == {"fit"}


def test_sweep_into_argv_and_value_rendering():
    planned = plan({"argv": ["run", "--flag={f}", "{name}", "{n}"],
                    "sweep": {"f": [True, False], "name": ["a b"], "n": [1e-05]}})
    assert [p.spec.argv for p in planned] == [("run", "--flag=true", "a b", "1e-05"),
                                             ("run", "--flag=false", "a b", "1e-05")]
    assert planned[0].spec.name is None


def test_after_resolves_names_to_every_cell_and_keeps_job_ids():
    outside = "0123456789abcdef0123456789abcdef"
    planned = plan([
        {"name": "report", "command": "r", "after": {"tasks": ["sim", outside], "on": "any"}},
        {"name": "sim", "command": "s {i}", "sweep": {"i": [1, 2, 3]}, "after": ["prep"]},
        {"name": "prep", "command": "p"},
    ])
    by_task = {}
    for p in planned:
        by_task.setdefault(p.task, []).append(p)
    assert [p.task for p in planned] == ["prep", "sim", "sim", "sim", "report"]  # parents first
    prep_id = by_task["prep"][0].job_id
    assert all(p.spec.after == (prep_id,) and p.spec.after_on == "success" for p in by_task["sim"])
    [report] = by_task["report"]
    assert report.spec.after == (*[p.job_id for p in by_task["sim"]], outside)
    assert report.spec.after_on == "any"
    assert report.path == "$[0]"


def test_each_swept_task_gets_its_own_group():
    planned = plan([{"name": "a", "command": "{x}", "sweep": {"x": ["1", "2"]}},
                    {"name": "b", "command": "{x}", "sweep": {"x": ["1", "2"]}},
                    {"name": "c", "command": "plain"}])
    groups = {p.task: p.spec.group for p in planned}
    assert groups["a"] != groups["b"] and groups["c"] is None
    assert planned[-1].spec.params == {}
