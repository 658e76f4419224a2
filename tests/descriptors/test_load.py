"""Loading descriptors: the three file forms, and every problem reported with its JSON path."""

import json

import pytest

from descriptors import DescriptorError, load_file, load_text

OK_TASK = {"name": "a", "command": "echo hi"}


def problems(doc) -> list[str]:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(DescriptorError) as exc:
        load_text(text, source="t.json")
    return exc.value.problems


def test_single_task():
    d = load_text(json.dumps(OK_TASK))
    assert [t.name for t in d.tasks] == ["a"]
    assert d.paths == ("$",)
    assert d.job_count == 1


def test_list_and_file_forms_give_paths():
    two = [OK_TASK, {"name": "b", "argv": ["true"]}]
    assert load_text(json.dumps(two)).paths == ("$[0]", "$[1]")
    assert load_text(json.dumps({"tasks": two})).paths == ("$.tasks[0]", "$.tasks[1]")


def test_defaults_and_units():
    t = load_text(json.dumps({**OK_TASK, "resources": {"memory": "16GB", "gpus": 1}, "timeout": "2h"})).tasks[0]
    assert t.resources.memory == 16 * 10**9
    assert t.resources.cpus == 1.0
    assert t.timeout == 7200.0
    assert t.queue == "default"
    assert t.retry_policy() == (0, ())
    assert t.dependencies() == ((), "success")


def test_retry_and_after_long_forms():
    doc = [OK_TASK, {"name": "b", "command": "x", "retries": {"count": 2, "backoff": ["30s", 60]},
                     "after": {"tasks": ["a"], "on": "any"}}]
    t = load_text(json.dumps(doc)).tasks[1]
    assert t.retry_policy() == (2, (30.0, 60.0))
    assert t.dependencies() == (("a",), "any")


@pytest.mark.parametrize(("doc", "expected"), [
    ({"tasks": [OK_TASK, OK_TASK | {"name": "b"}, OK_TASK | {"name": "c", "resources": {"memory": "16 gigs"}}]},
     '$.tasks[2].resources.memory: "16 gigs" is not a size like "16GB", "512MiB" or a number of bytes'),
    ({"tasks": [OK_TASK | {"colour": "red"}]}, "$.tasks[0].colour: unknown field"),
    ({"tasks": [OK_TASK, {"name": "b"}]}, '$.tasks[1]: needs exactly one of "command" or "argv"'),
    ([OK_TASK | {"argv": ["x"]}], '$[0]: has both "command" and "argv"; give exactly one'),
    (OK_TASK | {"comand": "x"}, '$.comand: unknown field; did you mean "command"?'),
    (OK_TASK | {"resources": {"gpu": 1}}, '$.resources.gpu: unknown field; did you mean "gpus"?'),
    (OK_TASK | {"resources": {"cpus": 0}}, "$.resources.cpus: must be more than 0, got 0"),
    (OK_TASK | {"resources": {"gpus": 1.5}}, "$.resources.gpus: expected a whole number, got 1.5"),
    (OK_TASK | {"resources": {"gpus": True}}, "$.resources.gpus: expected a whole number, got true"),
    (OK_TASK | {"resources": {"cpus": "4"}}, '$.resources.cpus: expected a number, got "4"'),
    (OK_TASK | {"resources": {"memory": -1}}, "$.resources.memory: must not be negative, got -1"),
    (OK_TASK | {"resources": {"labels": "a100"}}, '$.resources.labels: expected a list, got "a100"'),
    (OK_TASK | {"resources": 4}, "$.resources: expected an object, got 4"),
    (OK_TASK | {"timeout": "2 fortnights"},
     '$.timeout: "2 fortnights" is not a duration like "2h", "30m", "90s" or a number of seconds'),
    (OK_TASK | {"timeout": 0}, "$.timeout: must be more than 0 seconds, got 0"),
    (OK_TASK | {"retries": -1}, "$.retries: must be at least 0, got -1"),
    (OK_TASK | {"retries": {"count": 1, "backof": 5}}, '$.retries.backof: unknown field; did you mean "backoff"?'),
    (OK_TASK | {"retries": {"backoff": 5}}, "$.retries.count: is required"),
    (OK_TASK | {"retries": [1]}, '$.retries: expected a number of retries, or {"count": n, "backoff": seconds}'),
    (OK_TASK | {"after": "b"},
     '$.after: expected a list of task names, or {"tasks": [...], "on": "success" | "any"}'),
    (OK_TASK | {"after": {"tasks": ["0" * 32], "on": "ok"}}, '$.after.on: expected "success" or "any", got "ok"'),
    (OK_TASK | {"after": [7]}, "$.after[0]: expected a string, got 7"),
    (OK_TASK | {"env": {"OMP_NUM_THREADS": 4}}, "$.env.OMP_NUM_THREADS: expected a string, got 4"),
    (OK_TASK | {"env": {"MY-VAR": "1"}},
     '$.env["MY-VAR"]: "MY-VAR" is not a variable name (letters, digits, _; not starting with a digit)'),
    (OK_TASK | {"command": "  "}, "$.command: must not be empty"),
    (OK_TASK | {"command": "a\u0000b"}, "$.command: contains a NUL character"),
    (OK_TASK | {"argv": [], "command": None}, "$.argv: must not be empty"),
    (OK_TASK | {"priority": "high"}, '$.priority: expected a whole number, got "high"'),
    (OK_TASK | {"queue": "my queue"}, '$.queue: "my queue" is not a queue name like "default" or "gpu-long"'),
    (OK_TASK | {"name": ""}, "$.name: must not be empty"),
    (OK_TASK | {"max_parallel": 2}, "$.max_parallel: only applies to a task with a sweep"),
    (OK_TASK | {"command": "run {n}", "sweep": {"n": [1]}, "max_parallel": 0},
     "$.max_parallel: must be at least 1, got 0"),
    (OK_TASK | {"sweep": {"n": []}}, "$.sweep.n: must not be empty"),
    (OK_TASK | {"sweep": {}}, "$.sweep: must not be empty"),
    (OK_TASK | {"command": "run {n}", "sweep": {"n": [[1]]}},
     "$.sweep.n[0]: a sweep value must be a string, number or true/false, got a list"),
    (OK_TASK | {"sweep": {"lr": [0.1]}}, '$.sweep.lr: axis "lr" is not used; write {lr} in command, argv or env'),
    (OK_TASK | {"command": "echo ${lr}", "sweep": {"lr": [0.1]}},
     '$.sweep.lr: axis "lr" is not used; write {lr} in command, argv or env (${lr} is left to the shell)'),
    ({"tasks": [OK_TASK], "version": 2}, "$.version: unknown field"),
    ({"tasks": []}, "$.tasks: must not be empty"),
    ([], "$: has no tasks"),
    (5, '$: expected a task object, a list of tasks, or {"tasks": [...]}, got 5'),
    ([OK_TASK, "b"], '$[1]: expected an object, got "b"'),
])
def test_problem_messages(doc, expected):
    assert expected in problems(doc)


def test_every_problem_at_once():
    doc = {"tasks": [
        {"name": "a", "command": "x", "colour": 1, "resources": {"memory": "16 gigs"}},
        {"name": "b"},
        {"name": "a", "command": "y", "after": ["prep"], "timeout": -3},
    ]}
    assert problems(doc) == [
        '$.tasks[0].resources.memory: "16 gigs" is not a size like "16GB", "512MiB" or a number of bytes',
        "$.tasks[0].colour: unknown field",
        '$.tasks[1]: needs exactly one of "command" or "argv"',
        "$.tasks[2].timeout: must be more than 0 seconds, got -3",
        '$.tasks[2].name: "a" is also the name of $.tasks[0]',
        '$.tasks[2].after[0]: "prep" is not the name of a task in this file (nor a 32-hex-digit job id)',
    ]


def test_after_checks():
    doc = [
        {"name": "prep", "command": "x"},
        {"name": "fit", "command": "x", "after": ["prpe", "0123456789abcdef0123456789abcdef"]},
        {"name": "self", "command": "x", "after": {"tasks": ["self"]}},
    ]
    assert problems(doc) == [
        '$[1].after[0]: "prpe" is not the name of a task in this file; did you mean "prep"?',
        "$[2].after.tasks[0]: a task cannot wait for itself",
    ]


def test_dependency_cycles_reported_once_each():
    doc = [
        {"name": "a", "command": "x", "after": ["c"]},
        {"name": "b", "command": "x", "after": ["a"]},
        {"name": "c", "command": "x", "after": ["b"]},
        {"name": "d", "command": "x", "after": ["e"]},
        {"name": "e", "command": "x", "after": ["d", "a"]},
        {"name": "f", "command": "x", "after": ["a", "e"]},
    ]
    assert problems(doc) == [
        "$[0].after: dependency cycle: a -> c -> b -> a",
        "$[3].after: dependency cycle: d -> e -> d",
    ]


def test_long_dependency_chain_is_fine():
    doc = [{"name": f"t{i}", "command": "x", "after": [f"t{i - 1}"] if i else []} for i in range(3000)]
    assert load_text(json.dumps(doc)).job_count == 3000


def test_sweep_too_large():
    doc = OK_TASK | {"command": "x {a} {b}", "sweep": {"a": list(range(200)), "b": list(range(200))}}
    assert problems(doc) == ["$.sweep: expands to more than 10000 jobs; split it into several tasks"]


def test_braces_that_are_no_placeholder_are_not_errors():
    doc = OK_TASK | {"command": "awk '{print $1}' {x} ${HOME} {{other}}", "sweep": {"x": ["f"]}}
    assert load_text(json.dumps(doc)).job_count == 1


def test_empty_command_after_substitution():
    doc = OK_TASK | {"command": "{x}", "sweep": {"x": ["", "ls"]}}
    assert problems(doc) == ['$: sweep cell 0 ({"x": ""}): command is empty']


@pytest.mark.parametrize(("text", "expected"), [
    ('{"command": "x",\n  "name": "a",}', "line 2, column 15: invalid JSON: Expecting property name enclosed in "
                                          "double quotes (a comma before a closing bracket?)"),
    ('[{"command": "x"},\n]', "line 2, column 1: invalid JSON: Expecting value (a comma before a closing bracket?)"),
    ('{"command": "x"', "line 1, column 16: invalid JSON: Expecting ',' delimiter"),
    ('{"command": "x",\n "timeout": NaN}', "line 2, column 13: invalid JSON: NaN is not a JSON number"),
    ('[' * 100_000, "invalid JSON: nested too deeply"),
    ('{"timeout": ' + "9" * 5000 + "}", "invalid JSON: a number has too many digits"),
    ("  \n", 'is empty; expected a task object, a list of tasks, or {"tasks": [...]}'),
])
def test_invalid_json(text, expected):
    assert problems(text) == [expected]


def test_infinite_number_is_refused():
    assert problems('{"command": "x", "resources": {"cpus": 1e999}}') == ["$.resources.cpus: expected a finite number"]


def test_load_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(OK_TASK), encoding="utf-8-sig")  # a BOM is fine
    assert load_file(good).source == str(good)
    with pytest.raises(DescriptorError) as exc:
        load_file(tmp_path / "missing.json")
    assert exc.value.problems == ["cannot read: No such file or directory"]
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"command": "\xff"}')
    with pytest.raises(DescriptorError) as exc:
        load_file(bad)
    assert exc.value.problems == ["not UTF-8 text (byte 13)"]
    assert str(exc.value) == f"{bad}: not UTF-8 text (byte 13)"


def test_messages_do_not_echo_control_characters():
    [msg] = problems({"command": "x", "env": {"A\u009b31m": "1"}})
    assert "\u009b" not in msg and "\\u009b" in msg


def test_lone_surrogates_are_refused_not_crashed_on():
    got = problems('{"command": "echo \\ud800", "name": "\\udc00x", "env": {"\\ud800": "1"}}')
    assert got[:2] == [
        "$.name: contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)",
        "$.command: contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)",
    ]
    # pydantic cannot hand back a lone surrogate in an error's loc, so the key path is approximate.
    assert got[2].startswith("$.env[") and got[2].endswith('"\\ud800" is not a variable name (letters, digits, _; '
                                                           'not starting with a digit)')
    "\n".join(got).encode("utf-8")  # printable as UTF-8
