"""DescriptorError and the translation of validation errors into `<json path>: <message>` lines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from difflib import get_close_matches
from typing import Any

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# json.dumps escapes C0 controls; C1 controls and lone surrogates would reach the terminal.
_UNPRINTABLE = re.compile("[\x7f-\x9f\ud800-\udfff\u2028\u2029]")

TAG_PREFIX = "~"
"""Union branches are tagged "~list", "~object", ...: such loc items are not places in the file."""


class DescriptorError(Exception):
    """A descriptor that cannot be used; `problems` holds every problem, one line each."""

    def __init__(self, problems: Sequence[str], source: str = "<descriptor>"):
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


def safe_json(value: Any) -> str:
    """JSON text of a string or key that is safe to print: control and unpaired characters escaped."""
    text = json.dumps(value, ensure_ascii=False)
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_path(parts: Iterable[str | int], root: str = "$") -> str:
    """`$.tasks[2].env["MY-VAR"]` from ("tasks", 2, "env", "MY-VAR")."""
    out = [root]
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
        elif _IDENT.fullmatch(p):
            out.append(f".{p}")
        else:
            out.append(f"[{safe_json(p)}]")
    return "".join(out)


def show(value: Any) -> str:
    """A short JSON rendering of a bad input for messages; containers are named, not dumped."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return safe_json(value if len(value) <= 60 else value[:57] + "...")
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return type(value).__name__


def _quoted(expected: str) -> str:
    # pydantic writes literals Python-style ('a' or 'b'); descriptors are JSON.
    return expected.replace("'", '"')


def _size(ctx: dict[str, Any], key: str) -> str:
    n = ctx.get(key)
    return f"{n} item" if n == 1 else f"{n} items"


def message(err: dict[str, Any], known_fields: Sequence[str] = ()) -> str:
    """One pydantic error as plain words: what is wrong and what was expected."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        name = str(err["loc"][-1]) if err["loc"] else ""
        close = get_close_matches(name, known_fields, n=1, cutoff=0.6)
        return f'unknown field; did you mean "{close[0]}"?' if close else "unknown field"
    simple = {
        "missing": "is required",
        "string_type": f"expected a string, got {show(got)}",
        "int_type": f"expected a whole number, got {show(got)}",
        "int_from_float": f"expected a whole number, got {show(got)}",
        "float_type": f"expected a number, got {show(got)}",
        "finite_number": "expected a finite number",
        "bool_type": f"expected true or false, got {show(got)}",
        "list_type": f"expected a list, got {show(got)}",
        "dict_type": f"expected an object, got {show(got)}",
        "model_type": f"expected an object, got {show(got)}",
        "model_attributes_type": f"expected an object, got {show(got)}",
    }
    if kind in simple:
        return simple[kind]
    for k in ("gt", "ge", "lt", "le"):
        if isinstance(ctx.get(k), float) and ctx[k].is_integer():
            ctx = {**ctx, k: int(ctx[k])}  # "more than 0", not "more than 0.0"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}, got {show(got)}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {show(got)}"
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}, got {show(got)}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}, got {show(got)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {_size(ctx, 'min_length')}"
    if kind == "too_long":
        return f"has more than {_size(ctx, 'max_length')}"
    if kind == "literal_error":
        return f"expected {_quoted(str(ctx.get('expected')))}, got {show(got)}"
    if kind == "string_pattern_mismatch":
        return f"{show(got)} does not match the pattern {ctx.get('pattern')}"
    # Our own PydanticCustomErrors already carry a finished sentence.
    return str(err.get("msg", "is not valid"))


def clean_loc(loc: Sequence[str | int], raw: Any) -> tuple[list[str | int], bool]:
    """The loc as a path into `raw`, union tags dropped; True when the error is about a key."""
    parts: list[str | int] = []
    node, is_key = raw, False
    for p in loc:
        if p == "[key]":
            is_key = True
        elif isinstance(node, dict) and p in node:
            parts.append(p)
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            parts.append(p)
            node = node[p]
        elif isinstance(p, str) and p.startswith(TAG_PREFIX):
            continue  # a union branch tag, not a place in the file
        else:
            parts.append(p)  # a missing field, named by the error
            node = None
    return parts, is_key
