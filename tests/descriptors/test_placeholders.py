"""A sweep's `{name}` must name one of its axes; `{{name}}` writes a literal `{name}`."""

from __future__ import annotations

import json

import pytest

from descriptors import DescriptorError, load_text, to_specs


def task(command: str, **more) -> str:
    return json.dumps({"tasks": [{"name": "ising", "command": command, "sweep": {"T": [1, 2]}, **more}]})


def test_a_placeholder_that_names_no_axis_is_a_problem():
    with pytest.raises(DescriptorError) as e:
        load_text(task("python ising.py --T {T} --seed {seed}"), "d.json")
    (problem,) = e.value.problems
    assert problem.startswith("$.tasks[0].command: {seed} names no sweep axis (axes: T)")
    assert "${seed}" in problem and "{{seed}}" in problem


def test_env_and_argv_are_checked_too():
    with pytest.raises(DescriptorError) as e:
        load_text(json.dumps({"name": "a", "argv": ["run", "{T}", "{Tt}"], "env": {"X": "{y}"},
                              "sweep": {"T": [1]}}), "d.json")
    assert any("$.argv: {Tt} names no sweep axis" in p for p in e.value.problems)
    assert any("$.env: {y} names no sweep axis" in p for p in e.value.problems)


def test_doubled_braces_and_shell_variables_pass_through():
    specs = to_specs(load_text(task("awk '{{print}}' f{T}.txt; echo ${HOME}"), "d.json"))
    assert [s.spec.command for s in specs] == ["awk '{print}' f1.txt; echo ${HOME}", "awk '{print}' f2.txt; echo ${HOME}"]


def test_a_task_without_a_sweep_is_left_as_written():
    specs = to_specs(load_text(json.dumps({"name": "t", "command": "echo {{x}} {y}"}), "d.json"))
    assert specs[0].spec.command == "echo {{x}} {y}"
