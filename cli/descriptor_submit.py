"""Submitting descriptor files and printing placement plans (`grid submit -f`, `grid plan`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cli.tasks import print_plan
from descriptors import PlannedTask, load_file, to_specs
from gridcore.client import Grid
from gridcore.models import JobSpec


def load_planned(files: Sequence[Path]) -> list[PlannedTask]:
    """Every task of every file, sweeps expanded; all files' problems raise together."""
    from descriptors import DescriptorError

    planned: list[PlannedTask] = []
    problems: list[str] = []
    for f in files:
        try:
            planned += to_specs(load_file(f))
        except DescriptorError as e:
            problems += [f"{e.source}: {p}" for p in e.problems]
    if problems:
        raise DescriptorError(problems, source="descriptors")
    return planned


def plan_planned(grid: Grid, planned: Sequence[PlannedTask], json_out: bool = False) -> bool:
    """Print where each job would go now; False when one would be refused (no node could ever run it)."""
    from gridcore.placement import Fit, explain, never_fits

    nodes = grid.nodes()
    committed = grid.committed(nodes)
    refused = {id(p): never_fits(p.spec.resources, nodes) if nodes else None for p in planned}
    if json_out:
        out = []
        for p in planned:
            verdicts = explain(p.spec.resources, nodes, committed, queue=p.spec.queue)
            out.append({"name": p.spec.name, "task": p.task, "fits_now": [v.node for v in verdicts if v.fit is Fit.NOW],
                        "not": [str(v) for v in verdicts if v.fit is not Fit.NOW], "refused": refused[id(p)]})
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        print_plan(planned, nodes, committed)
    return not any(refused.values())


def plan_specs(grid: Grid, specs: Sequence[JobSpec], json_out: bool = False) -> bool:
    """`plan_planned` for jobs given on the command line."""
    planned = [PlannedTask(job_id="-", spec=s, task=s.name, path="$") for s in specs]
    return plan_planned(grid, planned, json_out)


def submit_files(grid: Grid, files: Sequence[Path], dry_run: bool = False, json_out: bool = False) -> bool:
    """Submit every job of the files (or, dry, plan them); False when a dry run finds one refused."""
    planned = load_planned(files)
    if dry_run:
        return plan_planned(grid, planned, json_out)
    groups: dict[str, dict] = {}
    for p in planned:
        if p.spec.group and p.spec.group not in groups:
            axes = {k: v for k, v in p.spec.params.items() if not k.startswith("_")}
            groups[p.spec.group] = {"name": p.task or p.spec.group, "max_parallel": p.max_parallel,
                                    "axes": sorted(axes)}
    ids = grid.submit_many([p.spec for p in planned], job_ids=[p.job_id for p in planned], groups=groups)
    if json_out:
        sys.stdout.write(json.dumps({"ids": ids, "groups": sorted(groups)}) + "\n")
        return True
    for p, jid in zip(planned, ids, strict=True):
        sys.stdout.write(f"{jid} {p.spec.name or ''}\n")
    for gid, g in groups.items():
        sys.stdout.write(f"group {gid} {g['name']}\n")
    return True
