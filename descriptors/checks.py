"""Checks across fields and tasks that a per-field schema cannot make: one problem line each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

from descriptors.errors import json_path
from descriptors.schema import AXIS_NAME, JOB_ID
from descriptors.sweep import MAX_CELLS, placeholders


@dataclass(frozen=True)
class RawTask:
    """One task object as read from JSON (not yet trusted), with its place in the file."""

    index: int
    loc: tuple[str | int, ...]
    data: Any

    def path(self, *more: str | int) -> str:
        return json_path((*self.loc, *more))

    @property
    def name(self) -> str | None:
        n = self.data.get("name") if isinstance(self.data, dict) else None
        return n if isinstance(n, str) and n else None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str)]
    return []


def _after_entries(data: dict) -> list[tuple[tuple[str | int, ...], str]]:
    """(place inside the task, entry) for each string in `after`, whichever way it was written."""
    after = data.get("after")
    if isinstance(after, dict):
        after, base = after.get("tasks"), ("after", "tasks")
    else:
        base = ("after",)
    if not isinstance(after, list):
        return []
    return [((*base, i), e) for i, e in enumerate(after) if isinstance(e, str) and e.strip()]


def check_task(t: RawTask) -> list[str]:
    """Problems inside one task: command vs argv, sweep axes, max_parallel."""
    d = t.data
    if not isinstance(d, dict):
        return []
    out = []
    has_cmd, has_argv = d.get("command") is not None, d.get("argv") is not None
    if has_cmd and has_argv:
        out.append(f'{t.path()}: has both "command" and "argv"; give exactly one')
    elif not has_cmd and not has_argv:
        out.append(f'{t.path()}: needs exactly one of "command" or "argv"')
    sweep = d.get("sweep")
    if d.get("max_parallel") is not None and sweep is None:
        out.append(f"{t.path('max_parallel')}: only applies to a task with a sweep")
    if isinstance(sweep, dict):
        texts = [*_strings(d.get("command")), *_strings(d.get("argv")), *_strings(d.get("env"))]
        used = set().union(*(placeholders(s) for s in texts))
        axes = [a for a in sweep if isinstance(a, str)]
        for field in ("command", "argv", "env"):
            for name in sorted(set().union(*(placeholders(s) for s in _strings(d.get(field)))) - set(axes)):
                out.append(f"{t.path(field)}: {{{name}}} names no sweep axis (axes: {', '.join(axes) or 'none'}); "
                           f"write ${{{name}}} for a shell variable, or {{{{{name}}}}} for a literal {{{name}}}")
        for axis, values in sweep.items():
            # Bad names and empty axes have their own message from the schema.
            if axis not in used and AXIS_NAME.fullmatch(axis) and isinstance(values, list) and values:
                hint = f" (${{{axis}}} is left to the shell)" if any(f"${{{axis}}}" in s for s in texts) else ""
                out.append(f'{t.path("sweep", axis)}: axis "{axis}" is not used; write {{{axis}}} in command, '
                           f"argv or env{hint}")
        sizes = [len(v) for v in sweep.values() if isinstance(v, list)]
        total = 1
        for n in sizes:
            total *= n
            if total > MAX_CELLS:
                out.append(f"{t.path('sweep')}: expands to more than {MAX_CELLS} jobs; split it into "
                           "several tasks")
                break
    return out


def check_tasks(tasks: Sequence[RawTask]) -> list[tuple[int, str]]:
    """Problems across tasks: duplicate names, `after` naming nothing, dependency cycles."""
    out: list[tuple[int, str]] = []
    first: dict[str, RawTask] = {}
    for t in tasks:
        if t.name is None:
            continue
        if t.name in first:
            out.append((t.index, f'{t.path("name")}: "{t.name}" is also the name of {first[t.name].path()}'))
        else:
            first[t.name] = t
    edges: dict[str, list[str]] = {n: [] for n in first}
    for t in tasks:
        if not isinstance(t.data, dict):
            continue
        for where, entry in _after_entries(t.data):
            if entry == t.name:
                out.append((t.index, f"{t.path(*where)}: a task cannot wait for itself"))
            elif entry in first:
                if t.name is not None and first.get(t.name) is t:
                    edges[t.name].append(entry)
            elif not JOB_ID.fullmatch(entry):
                close = get_close_matches(entry, list(first), n=1, cutoff=0.6)
                hint = f'; did you mean "{close[0]}"?' if close else " (nor a 32-hex-digit job id)"
                out.append((t.index, f'{t.path(*where)}: "{entry}" is not the name of a task in this file{hint}'))
    for cycle in find_cycles(edges):
        t = first[cycle[0]]
        out.append((t.index, f"{t.path('after')}: dependency cycle: {' -> '.join([*cycle, cycle[0]])}"))
    return out


def find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of names (Tarjan's, iterative: files may be long)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            succ = edges.get(v, [])
            if i < len(succ):
                work.append((v, i + 1))
                w = succ[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return [_cycle_in(g, edges) for g in groups]


def _cycle_in(group: list[str], edges: dict[str, list[str]]) -> list[str]:
    """A concrete cycle through the group's first-declared member (breadth-first, shortest)."""
    members = set(group)
    start = next(n for n in edges if n in members)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in edges[v]:
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if w in members and w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]
