"""Reading a descriptor: JSON with line:column errors, then every problem found, or a Descriptor."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from descriptors.checks import RawTask, check_task, check_tasks
from descriptors.errors import DescriptorError, clean_loc, json_path, message, show
from descriptors.schema import FIELDS_AT, Task, TaskFile
from descriptors.specs import Descriptor, to_specs

_TASK_LIST = TypeAdapter(list[Task])
_SHAPES = 'expected a task object, a list of tasks, or {"tasks": [...]}'


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def parse_json(text: str, source: str = "<descriptor>") -> Any:
    """The JSON value of text; DescriptorError with line and column when it is not JSON."""
    if not text.strip():
        raise DescriptorError([f"is empty; {_SHAPES}"], source)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        before = text[: e.pos].rstrip()
        closing = text[e.pos: e.pos + 1] in ("]", "}")
        hint = " (a comma before a closing bracket?)" if closing and before.endswith(",") else ""
        problem = f"line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}{hint}"
    except _BadConstant as e:
        m = re.search(rf"(?<![\w\"]){re.escape(str(e))}", text)
        where = _where(text, m.start()) if m else "somewhere"
        problem = f"{where}: invalid JSON: {e} is not a JSON number"
    except RecursionError:
        problem = "invalid JSON: nested too deeply"
    except ValueError:  # an integer past Python's digit limit
        problem = "invalid JSON: a number has too many digits"
    raise DescriptorError([problem], source)


def _split(data: Any) -> tuple[TypeAdapter | None, list[RawTask], tuple[str | int, ...]]:
    """How the file holds its tasks: (validator, the raw tasks, the loc prefix of a task)."""
    if isinstance(data, dict) and "tasks" in data:
        items = data["tasks"] if isinstance(data["tasks"], list) else []
        return TypeAdapter(TaskFile), [RawTask(i, ("tasks", i), t) for i, t in enumerate(items)], ("tasks", 0)
    if isinstance(data, list):
        return _TASK_LIST, [RawTask(i, (i,), t) for i, t in enumerate(data)], (0,)
    if isinstance(data, dict):
        return TypeAdapter(Task), [RawTask(0, (), data)], ()
    return None, [], ()


def _schema_problems(adapter: TypeAdapter, data: Any, prefix: tuple) -> tuple[Any, list[tuple[int, str]]]:
    try:
        return adapter.validate_python(data), []
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            parts, _ = clean_loc(err["loc"], data)
            inside = parts[len(prefix):-1] if len(parts) > len(prefix) else []
            known = ("tasks",) if prefix and len(parts) == 1 and parts[0] != 0 else \
                FIELDS_AT.get(tuple(p for p in inside if isinstance(p, str)), ())
            task = parts[len(prefix) - 1] if prefix and len(parts) >= len(prefix) else 0
            out.append((task if isinstance(task, int) else -1, f"{json_path(parts)}: {message(err, known)}"))
        return None, out


def load_data(data: Any, source: str = "<descriptor>") -> Descriptor:
    """A Descriptor from an already parsed JSON value; DescriptorError listing every problem."""
    adapter, raw, prefix = _split(data)
    if adapter is None:
        raise DescriptorError([f"$: {_SHAPES}, got {show(data)}"], source)
    if isinstance(data, list) and not data:
        raise DescriptorError(["$: has no tasks"], source)
    value, problems = _schema_problems(adapter, data, prefix)
    for t in raw:
        problems.extend((t.index, p) for p in check_task(t))
    problems.extend(check_tasks(raw))
    if problems:
        # Grouped by task, in file order; the sort is stable, so each task keeps its own order.
        raise DescriptorError([p for _, p in sorted(problems, key=lambda x: x[0])], source)
    tasks = value.tasks if isinstance(value, TaskFile) else value if isinstance(value, list) else [value]
    desc = Descriptor(source=source, tasks=tuple(tasks), paths=tuple(json_path(t.loc) for t in raw))
    counter = itertools.count()
    to_specs(desc, new_id=lambda: f"{next(counter):032x}")  # raises what only expansion can find
    return desc


def load_text(text: str, source: str = "<descriptor>") -> Descriptor:
    """A Descriptor from JSON text; DescriptorError listing every problem."""
    return load_data(parse_json(text, source), source)


def load_file(path: str | Path) -> Descriptor:
    """A Descriptor from a JSON file; DescriptorError listing every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DescriptorError([f"cannot read: {e.strerror or e}"], source) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DescriptorError([f"not UTF-8 text (byte {e.start})"], source) from None
    return load_text(text, source)
