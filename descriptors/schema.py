"""The descriptor format as pydantic models: one task, its resources, retries and dependencies."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Strict,
    Tag,
    TypeAdapter,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from descriptors.errors import show
from gridcore.units import MAX_SECONDS, parse_duration, parse_size

SCHEMA_ID = "https://science-grid.invalid/schemas/task-descriptor.json"
"""`$id` of the exported JSON Schema (a name, not a URL anything is served from)."""

JOB_ID = re.compile(r"[0-9a-f]{32}")
"""A grid job id (uuid4 hex): an `after` entry shaped like this may name a job already submitted."""

AXIS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
"""Sweep axis names are identifiers written `{axis}` in commands; a leading _ is kept for "_cell"."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def _fail(kind: str, text: str) -> PydanticCustomError:
    # The text goes in as context: pydantic formats the template, and user values hold braces.
    return PydanticCustomError(kind, "{text}", {"text": text})


def _pattern_str(pattern: str, what: str, max_len: int, description: str) -> Any:
    """A strict string matching `pattern`, with a message that says what it should look like."""
    rx = re.compile(pattern)

    def check(v: str) -> str:
        if not v:
            raise _fail("empty", "must not be empty")
        if len(v) > max_len:
            raise _fail("too_long", f"is longer than {max_len} characters")
        if not rx.fullmatch(v):
            raise _fail("bad_text", f"{show(v)} is not {what}")
        return _no_nul(v)

    schema = {"type": "string", "pattern": f"^{pattern}$", "maxLength": max_len, "description": description}
    return Annotated[str, Strict(), AfterValidator(check), WithJsonSchema(schema)]


def _no_nul(v: str) -> str:
    # exec and environment strings end at NUL, and must encode: the agent could not pass it on.
    if "\x00" in v:
        raise _fail("nul", "contains a NUL character")
    if _SURROGATE.search(v):
        raise _fail("surrogate", "contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)")
    return v


def _not_blank(v: str) -> str:
    if not v.strip():
        raise _fail("blank", "must not be empty")
    return v


ExecText = Annotated[str, Strict(), AfterValidator(_no_nul)]
TaskName = _pattern_str(r"[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?", "a task name (printable, "
                        "no leading or trailing spaces)", 100, "Name other tasks use in `after`.")
QueueName = _pattern_str(r"[A-Za-z0-9][A-Za-z0-9_.-]*", 'a queue name like "default" or "gpu-long"', 64,
                         "RQ queue the task goes to.")
Label = _pattern_str(r"[^\s,]+", 'a label like "a100" or "zone=lab1" (no spaces or commas)', 64,
                     "A label the node must carry.")
NodeName = _pattern_str(r"[A-Za-z0-9][A-Za-z0-9_.-]*", 'a node name like "node-a"', 253, "Run only on this node.")
EnvName = _pattern_str(r"[A-Za-z_][A-Za-z0-9_]*", "a variable name (letters, digits, _; not starting with a digit)",
                       256, "Environment variable name.")
AxisName = _pattern_str(AXIS_NAME.pattern, "an axis name (a letter, then letters, digits or _; it is written "
                        "{name} in commands)", 64, "Sweep axis name, substituted where `{name}` appears.")
Tagword = _pattern_str(r"[^\x00-\x1f\x7f]+", "a tag", 64, "Free-form tag shown in listings.")


def _size(v: Any) -> Any:
    if isinstance(v, str):
        n = parse_size(v)
        if n is None:
            raise _fail("size", f'{show(v)} is not a size like "16GB", "512MiB" or a number of bytes')
        return n
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail("size", f'expected a size like "16GB" or a number of bytes, got {show(v)}')
    if v < 0:
        raise _fail("size", f"must not be negative, got {v}")
    return v


def _duration(v: Any, *, allow_zero: bool) -> float:
    if isinstance(v, str):
        secs = parse_duration(v)
        if secs is None:
            raise _fail("duration", f'{show(v)} is not a duration like "2h", "30m", "90s" or a number of seconds')
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = float(v)
        if not math.isfinite(secs):
            raise _fail("duration", "expected a finite number of seconds")
    else:
        raise _fail("duration", f'expected a duration like "2h" or a number of seconds, got {show(v)}')
    if secs < 0 or (secs == 0 and not allow_zero):
        raise _fail("duration", f"must be more than 0 seconds, got {show(v)}" if not allow_zero
                    else f"must not be negative, got {show(v)}")
    if secs > MAX_SECONDS:
        raise _fail("duration", f"{show(v)} is longer than a year")
    return secs


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|"
                                      r"hours?|d|days?)?\s*)+$|^(\d+:)?\d{1,2}:\d{2}$"},
    ],
    "description": 'Seconds, or "90s", "30m", "2h", "1h30m", "1d", "2:00:00".',
}
Size = Annotated[int, BeforeValidator(_size), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0},
              {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?|\.\d+)\s*([KMGTPkmgtp]i?[Bb]?|[Bb])?\s*$"}],
    "description": 'Bytes, or "16GB", "1.5G" (powers of 1000), "512MiB", "16Gi" (powers of 1024).',
})]
Duration = Annotated[float, BeforeValidator(lambda v: _duration(v, allow_zero=False)), WithJsonSchema(_DURATION_SCHEMA)]
Backoff = Annotated[float, BeforeValidator(lambda v: _duration(v, allow_zero=True)),
                    WithJsonSchema({**_DURATION_SCHEMA, "anyOf": [{"type": "number", "minimum": 0},
                                                                  _DURATION_SCHEMA["anyOf"][1]]})]


def _sweep_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise _fail("sweep_value", "expected a finite number")
    if isinstance(v, (str, int, float)):  # bool is an int
        if isinstance(v, str):
            _no_nul(v)
        return v
    raise _fail("sweep_value", f"a sweep value must be a string, number or true/false, got {show(v)}")


SweepValue = Annotated[Any, PlainValidator(_sweep_value), WithJsonSchema({"type": ["string", "number", "boolean"]})]


def _shape(*kinds: str) -> Any:
    """Discriminator for `int | object`, `list | object`, ... unions, by the JSON type of the value."""

    def tag(v: Any) -> str | None:
        if isinstance(v, dict):
            return "~object" if "~object" in kinds else None
        if isinstance(v, list):
            return "~list" if "~list" in kinds else None
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            return "~scalar" if "~scalar" in kinds else None
        return None

    return tag


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Resources(_Model):
    """What a task needs from the node that runs it."""

    cpus: Annotated[float, Strict(), Field(gt=0, description="CPU cores (fractions allowed).")] = 1.0
    gpus: Annotated[int, Strict(), Field(ge=0, description="Whole GPUs, held by no other running job.")] = 0
    memory: Size = Field(default=0, description='Memory, e.g. "16GB"; 0 = no requirement.')
    labels: list[Label] = Field(default_factory=list, description="Labels the node must carry, e.g. [\"a100\"].")
    node: NodeName | None = Field(default=None, description="Pin the task to this node.")


class RetryPolicy(_Model):
    """How often a failed task is tried again, and how long to wait between attempts."""

    count: Annotated[int, Strict(), Field(ge=0, le=1000, description="Retries after the first attempt.")]
    backoff: Annotated[
        Union[Annotated[Backoff, Tag("~scalar")], Annotated[list[Backoff], Tag("~list")]],
        Discriminator(_shape("~scalar", "~list"), custom_error_type="backoff",
                      custom_error_message='expected seconds, a duration like "30s", or a list of them'),
    ] = Field(default=0, description="Wait before each retry; a list gives one wait per retry, the last repeats.")


class After(_Model):
    """Tasks (names in this file, or job ids) this task waits for."""

    tasks: list[Annotated[str, Strict(), AfterValidator(_not_blank)]] = Field(
        min_length=1, description="Task names in this file, or ids of jobs already submitted.")
    on: Literal["success", "any"] = Field(
        default="success", description='"success": run only if all of them succeeded; "any": run once they end.')


_AFTER_SHAPES = 'expected a list of task names, or {"tasks": [...], "on": "success" | "any"}'
_RETRY_SHAPES = 'expected a number of retries, or {"count": n, "backoff": seconds}'


class Task(_Model):
    """One task: a shell command (or argv) with its environment, resources and policies."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["command"]}, {"required": ["argv"]}]})

    name: TaskName | None = None
    command: Annotated[ExecText, AfterValidator(_not_blank)] | None = Field(
        default=None, description="Run by /bin/sh -c. Exactly one of command or argv.")
    argv: Annotated[list[ExecText], Field(min_length=1)] | None = Field(
        default=None, description="Program and arguments, run without a shell. Exactly one of command or argv.")
    cwd: Annotated[ExecText, AfterValidator(_not_blank)] | None = Field(
        default=None, description="Working directory on the node.")
    env: dict[EnvName, ExecText] = Field(default_factory=dict, description="Extra environment variables.")
    queue: QueueName = "default"
    resources: Resources = Field(default_factory=Resources)
    timeout: Duration | None = Field(default=None, description="Kill the task after this long.")
    retries: Annotated[
        Union[Annotated[int, Strict(), Field(ge=0, le=1000), Tag("~scalar")], Annotated[RetryPolicy, Tag("~object")]],
        Discriminator(_shape("~scalar", "~object"), custom_error_type="retries", custom_error_message=_RETRY_SHAPES),
    ] = Field(default=0, description="Retries after a failed attempt: a count, or {count, backoff}.")
    after: Annotated[
        Union[Annotated[list[Annotated[str, Strict(), AfterValidator(_not_blank)]], Tag("~list")],
              Annotated[After, Tag("~object")]],
        Discriminator(_shape("~list", "~object"), custom_error_type="after", custom_error_message=_AFTER_SHAPES),
    ] = Field(default_factory=list, description="Tasks this one waits for: names or job ids.")
    priority: Annotated[int, Strict(), Field(ge=-1_000_000, le=1_000_000)] = Field(
        default=0, description="Higher runs first among waiting tasks of a queue.")
    tags: list[Tagword] = Field(default_factory=list, description="Free-form tags.")
    sweep: Annotated[dict[AxisName, Annotated[list[SweepValue], Field(min_length=1)]], Field(min_length=1)] | None = \
        Field(default=None, description="Parameter axes: one job per combination, `{axis}` substituted "
                                        "in command, argv and env (`{{name}}` is a literal `{name}`).")
    max_parallel: Annotated[int, Strict(), Field(ge=1)] | None = Field(
        default=None, description="At most this many jobs of the sweep run at once.")

    def retry_policy(self) -> tuple[int, tuple[float, ...]]:
        """(count, backoff seconds) whichever way retries was written."""
        if isinstance(self.retries, RetryPolicy):
            b = self.retries.backoff
            return self.retries.count, tuple(b) if isinstance(b, list) else ((b,) if b else ())
        return self.retries, ()

    def dependencies(self) -> tuple[tuple[str, ...], str]:
        """(names or ids, "success" | "any") whichever way after was written."""
        if isinstance(self.after, After):
            return tuple(self.after.tasks), self.after.on
        return tuple(self.after), "success"


class TaskFile(_Model):
    """A file of tasks: `{"tasks": [...]}`."""

    tasks: list[Task] = Field(min_length=1, description="The tasks, in any order.")


FIELDS_AT: dict[tuple[str, ...], tuple[str, ...]] = {
    (): tuple(Task.model_fields),
    ("resources",): tuple(Resources.model_fields),
    ("retries",): tuple(RetryPolicy.model_fields),
    ("after",): tuple(After.model_fields),
}
"""Field names by place inside a task, for "did you mean" on unknown fields."""


def export_schema() -> dict[str, Any]:
    """JSON Schema for a descriptor file: one task, a list of tasks, or {"tasks": [...]}."""
    root = TypeAdapter(Union[Task, Annotated[list[Task], Field(min_length=1)], TaskFile]).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Science Grid task descriptor",
        "description": "One task, a list of tasks, or {\"tasks\": [...]}. Validate with `grid validate FILE`.",
        **root,
    }
