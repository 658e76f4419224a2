"""`grid submit --each FILE`: one job per line of a file (or of stdin, `-`), all in one group,
through one pipelined submission.

For the shell-loop user: `for f in data/*; do grid submit -- ./run "$f"; done` starts a process
per job; `ls data/* | sed 's|^|./run |' | grid submit --each -` is one process and a round
trip per 500 jobs. Every line is checked before anything is submitted.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from cli.errors import CliError
from gridcore.models import JobSpec

MAX_LINE = 256 * 1024
"""Bytes of one command line: what a signed envelope holds of a command."""

MAX_PROBLEMS = 20
"""Bad lines named in one error; the count of the rest follows."""


def read_lines(source: str) -> tuple[str, Iterable[bytes]]:
    """The name to show for `source` and its raw lines (`-`: standard input)."""
    if source == "-":
        return "stdin", sys.stdin.buffer
    path = Path(source)
    try:
        return source, path.read_bytes().splitlines(keepends=True)
    except OSError as e:
        raise CliError(f"--each {source}: {e.strerror or e}", 2) from None


def commands(name: str, lines: Iterable[bytes]) -> list[tuple[int, str]]:
    """(line number, command) of every non-blank line; every bad line raises, named, together."""
    found: list[tuple[int, str]] = []
    problems: list[str] = []
    for n, raw in enumerate(lines, 1):
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE:
            problems.append(f"{name}:{n}: longer than {MAX_LINE // 1024} KiB")
        elif b"\0" in raw:
            problems.append(f"{name}:{n}: holds a NUL byte, which no command can")
        else:
            try:
                found.append((n, raw.decode()))
            except UnicodeDecodeError:
                problems.append(f"{name}:{n}: not UTF-8 text")
    if problems:
        more = len(problems) - MAX_PROBLEMS
        shown = problems[:MAX_PROBLEMS] + ([f"... and {more} more bad line(s)"] if more > 0 else [])
        raise CliError("nothing submitted: " + "\n".join(shown), 2)
    if not found:
        raise CliError(f"--each {name}: no command in it (every line is blank)", 2)
    return found


def each_specs(template: JobSpec, found: list[tuple[int, str]], group: str) -> list[JobSpec]:
    """One job per command, each the template's options with its own command, named by its line."""
    return [replace(template, command=cmd, argv=None, group=group,
                    name=f"{template.name}-{n}" if template.name else None, params={"_cell": k, "line": n})
            for k, (n, cmd) in enumerate(found)]


def submit_each(grid, template: JobSpec, source: str, json_out: bool = False) -> None:
    """Submit a job for every line of `source` as one group; print the ids, then the group."""
    import json

    name, lines = read_lines(source)
    found = commands(name, lines)
    gid = uuid.uuid4().hex
    specs = each_specs(template, found, gid)
    title = template.name or f"each {name}"
    ids = grid.submit_many(specs, groups={gid: {"name": title, "max_parallel": None, "axes": ["line"]}})
    if json_out:
        sys.stdout.write(json.dumps({"ids": ids, "group": gid}) + "\n")
        return
    sys.stdout.write("".join(f"{jid}\n" for jid in ids))
    sys.stdout.write(f"group {gid} {title}\n")
