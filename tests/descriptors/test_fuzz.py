"""No input crashes the loader: it returns a Descriptor or raises DescriptorError, nothing else."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from descriptors import Descriptor, DescriptorError, load_data, load_text, to_specs

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
FIELDS = ["name", "command", "argv", "cwd", "env", "queue", "resources", "timeout", "retries", "after", "priority",
          "tags", "sweep", "max_parallel", "cpus", "gpus", "memory", "labels", "node", "count", "backoff", "tasks",
          "on", "lr"]
# Task-shaped values: the schema's own keys, so fuzzing reaches past "unknown field".
task_like = st.recursive(
    scalars | st.sampled_from(["16GB", "2h", "{lr}", "${lr}", "a", "0123456789abcdef0123456789abcdef", "success"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6),
    max_leaves=40,
)

NAMES = st.sampled_from(["a", "b", "c", "0123456789abcdef0123456789abcdef"])


def mostly(valid):
    """Usually a valid value, now and then any JSON scalar."""
    return st.one_of(*[valid] * 8, scalars)


# Mostly-valid tasks with a wrong value here and there, so fuzzing also reaches sweeps and `after`.
near_tasks = st.fixed_dictionaries(
    {"name": mostly(NAMES), "command": mostly(st.sampled_from(["echo {lr} {seed}", "x ${lr}", "{lr}", "awk '{x}'"]))},
    optional={
        "argv": mostly(st.lists(st.sampled_from(["run", "{lr}", "{seed}"]), max_size=3)),
        "env": st.dictionaries(st.sampled_from(["A", "B-C", "SEED"]), mostly(st.sampled_from(["{seed}", "1"])),
                               max_size=2),
        "resources": st.fixed_dictionaries({}, optional={
            "cpus": mostly(st.sampled_from([0.5, 1, 64])), "gpus": mostly(st.integers(-1, 4)),
            "memory": mostly(st.sampled_from(["16GB", "512MiB", "16 gigs", 0])),
            "labels": mostly(st.lists(st.sampled_from(["a100", "a b"]))), "node": mostly(NAMES)}),
        "timeout": mostly(st.sampled_from(["2h", "90", "1h30m", 5.5, "soon"])),
        "retries": mostly(st.integers(-1, 3) | st.fixed_dictionaries({"count": st.integers(-1, 3)}, optional={
            "backoff": mostly(st.sampled_from([5, "30s", [1, "1m"], [], "x"]))})),
        "after": mostly(st.lists(mostly(NAMES), max_size=3) | st.fixed_dictionaries(
            {"tasks": st.lists(NAMES, max_size=3)}, optional={"on": st.sampled_from(["success", "any", "x"])})),
        "sweep": mostly(st.dictionaries(st.sampled_from(["lr", "seed", "_x", "bad-axis"]),
                                        mostly(st.lists(st.integers(0, 3) | st.sampled_from(["", "0.1", True]),
                                                        max_size=3)), max_size=2)),
        "max_parallel": mostly(st.integers(-1, 3)),
        "priority": mostly(st.integers()),
        "tags": mostly(st.lists(st.text(max_size=3), max_size=2)),
    },
)


def _check(outcome):
    if isinstance(outcome, Descriptor):
        to_specs(outcome)


def _load(value):
    try:
        _check(load_data(value))
    except DescriptorError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


@SETTINGS
@given(json_values)
def test_any_json_value(value):
    _load(value)


@SETTINGS
@given(task_like)
def test_task_shaped_values(value):
    _load(value)
    _load([value, value])
    _load({"tasks": [value]})


@SETTINGS
@given(st.text(max_size=200))
def test_any_text(text):
    try:
        _check(load_text(text))
    except DescriptorError as e:
        assert e.problems


@SETTINGS
@given(task_like)
def test_json_text_with_damage(value):
    text = json.dumps(value, allow_nan=True)
    for damaged in (text, text[: len(text) // 2], text.replace(":", ",", 1), text + "}"):
        try:
            _check(load_text(damaged))
        except DescriptorError as e:
            assert e.problems


@SETTINGS
@given(st.lists(near_tasks, min_size=1, max_size=3))
def test_near_valid_task_lists(tasks):
    _load(tasks)
    _load({"tasks": tasks})
    _load(tasks[0])
