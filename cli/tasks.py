"""`grid validate`, `grid schema` and the text of `grid plan` / `grid submit --dry-run`."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from descriptors import Descriptor, DescriptorError, PlannedTask, export_schema, load_file, load_text
from gridcore.models import Node
from gridcore.placement import Committed, Fit, choose_node, explain, never_fits
from gridcore.sanitize import clean

EXIT_OK = 0
"""Everything was valid."""

EXIT_BAD_INPUT = 2
"""A descriptor had problems (or could not be read)."""

# Node names and drain reasons come from the broker: untrusted, so no control characters.


def _console() -> Console:
    # soft_wrap: one problem per line even past the terminal width, so output greps well.
    return Console(highlight=False, soft_wrap=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _read(path: Path) -> Descriptor:
    if str(path) == "-":
        return load_text(sys.stdin.read(), "<stdin>")
    return load_file(path)


def validate(
    files: Annotated[list[Path], typer.Argument(help="Descriptor files (JSON); - reads stdin.", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per file: ok, tasks, jobs, problems.")] = False,
) -> None:
    """Check descriptor files and print every problem, each with its JSON path."""
    console = _console()
    bad = False
    report = []
    for path in files:
        try:
            desc = _read(path)
        except DescriptorError as e:
            bad = True
            report.append({"file": e.source, "ok": False, "problems": list(e.problems)})
            if not json_out:
                for problem in e.problems:
                    console.print(Text.assemble((e.source, "bold"), ": ", (problem, "red")))
            continue
        report.append({"file": desc.source, "ok": True, "tasks": len(desc.tasks), "jobs": desc.job_count,
                       "problems": []})
        if not json_out:
            summary = f"ok: {_plural(len(desc.tasks), 'task')} ({_plural(desc.job_count, 'job')} after sweeps)"
            console.print(Text.assemble((desc.source, "bold"), ": ", (summary, "green")))
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    raise typer.Exit(EXIT_BAD_INPUT if bad else EXIT_OK)


def schema() -> None:
    """Print the JSON Schema of task descriptors (for editors and CI)."""
    sys.stdout.write(json.dumps(export_schema(), indent=2) + "\n")


def _label(p: PlannedTask) -> str:
    return p.task or p.path


def _clean(text: str) -> str:
    """Node names and reasons from the broker, through the one sanitizer (whole: nothing cut)."""
    return clean(text, 100_000)


def _groups(planned: Sequence[PlannedTask]) -> list[list[PlannedTask]]:
    """Jobs grouped by the task they came from, in plan order."""
    by_path: dict[str, list[PlannedTask]] = {}
    for p in planned:
        by_path.setdefault(p.path, []).append(p)
    return list(by_path.values())


def plan_lines(planned: Sequence[PlannedTask], nodes: Sequence[Node],
               committed: Mapping[str, Committed]) -> list[Text]:
    """Where each task would go now and why not elsewhere, as styled lines."""
    held = {n.name: replace(committed.get(n.name, Committed()),
                            jobs=max(committed.get(n.name, Committed()).jobs, n.slots_busy)) for n in nodes}
    owner = {p.job_id: _label(p) for p in planned}
    out: list[Text] = []
    for jobs in _groups(planned):
        first = jobs[0]
        res = first.spec.resources
        kind = f", sweep, max_parallel {first.max_parallel}" if first.max_parallel else \
            (", sweep" if first.spec.group else "")
        out.append(Text.assemble((_label(first), "bold"), f"  ({_plural(len(jobs), 'job')}{kind})"))
        if not nodes:
            out.append(Text("  waits: no node has joined the grid yet", "yellow"))
            continue
        refusal = never_fits(res, nodes)
        if refusal:
            out.append(Text(f"  refused: {_clean(refusal)}", "red"))
            continue
        if first.spec.after:
            out.extend(_after_lines(first, owner, nodes, committed))
            continue
        out.extend(_place_lines(jobs, nodes, held))
    return out


def _after_lines(first: PlannedTask, owner: Mapping[str, str], nodes: Sequence[Node],
                 committed: Mapping[str, Committed]) -> list[Text]:
    parents = list(dict.fromkeys(owner[j] for j in first.spec.after if j in owner))
    outside = sum(1 for j in first.spec.after if j not in owner)
    waits = ", ".join(parents)
    if outside:
        waits += (" and " if waits else "") + f"{_plural(outside, 'job')} already submitted"
    cond = " to succeed" if first.spec.after_on == "success" else " to end"
    lines = [Text(f"  waits for {waits}{cond}", "yellow")]
    verdicts = explain(first.spec.resources, nodes, committed)
    fits = [v.node for v in verdicts if v.fit is Fit.NOW]
    if fits:
        lines.append(Text(f"  then could start on {_clean(', '.join(fits))} (as the grid is now)"))
    lines.extend(Text(f"  not on {_clean(str(v))}", "dim") for v in verdicts if v.fit is not Fit.NOW)
    return lines


def _place_lines(jobs: Sequence[PlannedTask], nodes: Sequence[Node], held: dict[str, Committed]) -> list[Text]:
    """Place the task's jobs one by one on the simulated grid; say where and why not."""
    res = jobs[0].spec.resources
    before = explain(res, nodes, held)
    limit = min(len(jobs), jobs[0].max_parallel or len(jobs))
    placed: Counter[str] = Counter()
    stuck = None
    for _ in range(limit):
        choice = choose_node(res, nodes, held)
        if choice is None:
            stuck = explain(res, nodes, held)
            break
        placed[choice.node] += 1
        held[choice.node] = held[choice.node].plus(res, choice.gpus)
    lines = []
    started = sum(placed.values())
    where = ", ".join(f"{n} ×{k}" if k > 1 else n for n, k in placed.items())
    if started == 1 and len(jobs) == 1:
        lines.append(Text(f"  starts now on {_clean(where)}", "green"))
    elif started:
        lines.append(Text(f"  {started} start now: {_clean(where)}", "green"))
    room = limit - started
    if room:
        head = "waits: no node has room now" if len(jobs) == 1 else f"{_plural(room, 'job')} wait for room"
        lines.append(Text(f"  {head}:", "yellow"))
        lines.extend(Text(f"    {_clean(str(v))}", "yellow") for v in stuck or [] if v.fit is Fit.LATER)
    if len(jobs) > limit:
        lines.append(Text(f"  {len(jobs) - limit} wait for max_parallel {limit}", "yellow"))
    also = [v.node for v in before if v.fit is Fit.NOW and v.node not in placed]
    if also and started:
        lines.append(Text(f"  also fits: {_clean(', '.join(also))}", "dim"))
    # Full nodes are already listed under "wait for room"; the rest say why not them.
    shown = {v.node for v in stuck or [] if v.fit is Fit.LATER}
    lines.extend(Text(f"  not on {_clean(str(v))}", "dim") for v in before
                 if v.fit is not Fit.NOW and v.node not in placed and v.node not in shown)
    return lines


def plan_text(planned: Sequence[PlannedTask], nodes: Sequence[Node], committed: Mapping[str, Committed]) -> str:
    """`grid plan` as plain text: where each task would go now and why not elsewhere."""
    return "\n".join(line.plain for line in plan_lines(planned, nodes, committed))


def print_plan(planned: Sequence[PlannedTask], nodes: Sequence[Node], committed: Mapping[str, Committed],
               console: Console | None = None) -> None:
    """`grid plan` on a terminal, in colour where it is one."""
    console = console or _console()
    for line in plan_lines(planned, nodes, committed):
        console.print(line)
