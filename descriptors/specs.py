"""From a validated descriptor to job specs: ids assigned, sweeps expanded, `after` resolved."""

from __future__ import annotations

import heapq
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from descriptors.errors import DescriptorError
from descriptors.schema import Task
from descriptors.sweep import cell_count, cells, substitute, sweep_env
from gridcore.models import JobSpec, Resources


@dataclass(frozen=True)
class Descriptor:
    """A descriptor file that passed every check: its tasks, with their JSON paths."""

    source: str
    tasks: tuple[Task, ...]
    paths: tuple[str, ...]

    @property
    def job_count(self) -> int:
        """Jobs after sweeps are expanded."""
        return sum(cell_count(t.sweep) if t.sweep else 1 for t in self.tasks)


@dataclass(frozen=True)
class PlannedTask:
    """One job to submit: its pre-assigned id, its spec, and the task it came from."""

    job_id: str
    spec: JobSpec
    task: str | None  # the task's name in the file
    path: str  # the task's JSON path, e.g. "$.tasks[2]"
    max_parallel: int | None = None  # throttle for the task's sweep group


def _new_id() -> str:
    return uuid.uuid4().hex


def _order(desc: Descriptor) -> list[int]:
    """Task indices with every task after the tasks it waits for, file order otherwise."""
    by_name = {t.name: i for i, t in enumerate(desc.tasks) if t.name}
    children: list[list[int]] = [[] for _ in desc.tasks]
    waiting = [0] * len(desc.tasks)
    for i, t in enumerate(desc.tasks):
        for parent in {by_name[d] for d in t.dependencies()[0] if d in by_name}:
            children[parent].append(i)
            waiting[i] += 1
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    done: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        done.append(i)
        for c in children[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    # The loader rejects cycles; were one here, its tasks still come out, in file order.
    seen = set(done)
    return done + [i for i in range(len(desc.tasks)) if i not in seen]


def to_specs(desc: Descriptor, new_id: Callable[[], str] = _new_id) -> list[PlannedTask]:
    """Every job of the descriptor, parents before children, each with its job id."""
    order = _order(desc)
    ids = [[new_id() for _ in range(cell_count(t.sweep) if t.sweep else 1)] for t in desc.tasks]
    ids_by_name = {t.name: ids[i] for i, t in enumerate(desc.tasks) if t.name}
    out: list[PlannedTask] = []
    for i in order:
        t, path = desc.tasks[i], desc.paths[i]
        names, on = t.dependencies()
        after = tuple(j for n in names for j in ids_by_name.get(n, [n]))
        retries, backoff = t.retry_policy()
        res = Resources(cpus=float(t.resources.cpus), gpus=t.resources.gpus, memory=t.resources.memory,
                        labels=tuple(t.resources.labels), node=t.resources.node)
        group = new_id() if t.sweep else None
        for n, cell in enumerate(cells(t.sweep) if t.sweep else [{}]):
            params = {**cell, "_cell": n} if t.sweep else {}
            try:
                spec = JobSpec(
                    command=substitute(t.command, cell) if t.command is not None else None,
                    argv=tuple(substitute(a, cell) for a in t.argv) if t.argv is not None else None,
                    name=(f"{t.name}[{n}]" if t.sweep else t.name) if t.name else None,
                    queue=t.queue,
                    cwd=t.cwd,
                    env={**(sweep_env(group, n, len(ids[i]), cell) if group else {}),
                         **{k: substitute(v, cell) for k, v in t.env.items()}},
                    timeout=t.timeout,
                    retries=retries,
                    retry_backoff=tuple(math.ceil(b) for b in backoff),
                    resources=res,
                    after=after,
                    after_on=on,
                    priority=t.priority,
                    tags=tuple(t.tags),
                    group=group,
                    params=params,
                )
            except ValueError as e:  # e.g. a command that a sweep value leaves empty
                where = f"{path}: sweep cell {n} ({json.dumps(cell)})" if t.sweep else path
                raise DescriptorError([f"{where}: {e}"], desc.source) from None
            out.append(PlannedTask(job_id=ids[i][n], spec=spec, task=t.name, path=path,
                                   max_parallel=t.max_parallel if t.sweep else None))
    return out
