"""The shipped examples validate, and the JSON Schema describes the format."""

import json
from pathlib import Path

import pytest

import descriptors
from descriptors import export_schema, load_file, to_specs

EXAMPLES = sorted((Path(descriptors.__file__).parent / "examples").glob("*.json"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"ising-sweep.json", "gpu-training.json", "pipeline.json"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    d = load_file(path)
    assert to_specs(d)


def test_examples_cover_the_three_kinds():
    sweep = load_file(EXAMPLES[0].parent / "ising-sweep.json")
    assert sweep.job_count == 24 and sweep.tasks[0].max_parallel == 4
    gpu = load_file(EXAMPLES[0].parent / "gpu-training.json")
    assert gpu.tasks[0].resources.gpus == 1
    pipeline = load_file(EXAMPLES[0].parent / "pipeline.json")
    assert sum(1 for t in pipeline.tasks if t.after) >= 2


def test_schema_is_json_and_describes_fields():
    schema = export_schema()
    json.dumps(schema)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"$ref": "#/$defs/Task"} in schema["anyOf"]
    task = schema["$defs"]["Task"]
    assert task["additionalProperties"] is False
    assert {"name", "command", "argv", "cwd", "env", "queue", "resources", "timeout", "retries", "after",
            "priority", "tags", "sweep", "max_parallel"} == set(task["properties"])
    assert task["oneOf"] == [{"required": ["command"]}, {"required": ["argv"]}]
    assert schema["$defs"]["Resources"]["properties"]["memory"]["description"]
