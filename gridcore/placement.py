"""Matching a job's resources against nodes: fits now, could fit when free, or never, and why."""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gridcore.models import GpuInfo, JobSpec, Node, NodeState, Resources


@dataclass(frozen=True)
class Committed:
    """What running jobs already hold on one node."""

    cpus: float = 0.0
    memory: int = 0
    gpus: frozenset[int] = frozenset()  # GPU indices
    jobs: int = 0

    def plus(self, res: Resources, gpus: Iterable[int] = ()) -> Committed:
        """This plus one more job holding `res` (and these GPU indices)."""
        return Committed(self.cpus + res.cpus, self.memory + res.memory, self.gpus | frozenset(gpus), self.jobs + 1)


def is_plain(spec: JobSpec, max_parallel: int | None = None) -> bool:
    """A job any slot of its queue may take: one CPU, nothing else asked for (it skips placement)."""
    r = spec.resources
    return r.cpus <= 1 and not r.gpus and not r.memory and not r.labels and not r.node and not max_parallel


class Fit(str, enum.Enum):
    NOW = "fits now"
    LATER = "could fit when free"
    NEVER = "can never fit"


@dataclass(frozen=True)
class NodeVerdict:
    """One node's answer to one request, with the reasons in plain words."""

    node: str
    fit: Fit
    reasons: tuple[str, ...] = ()
    gpus: tuple[int, ...] = ()  # the GPU indices the job would get, when it fits now

    def __str__(self) -> str:
        return f"{self.node}: {'; '.join(self.reasons) if self.reasons else self.fit.value}"


@dataclass
class _Reasons:
    never: list[str] = field(default_factory=list)
    later: list[str] = field(default_factory=list)


def size(n: float) -> str:
    """Bytes in the units descriptors use: 24000000000 -> "24GB"."""
    for unit, scale in (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + unit
    return f"{int(n)}B"


def _num(x: float) -> str:
    return f"{x:g}"


def _plural(n: float, word: str) -> str:
    return f"{_num(n)} {word}" if n == 1 else f"{_num(n)} {word}s"


def _quote(words: Iterable[str]) -> str:
    return ", ".join(f'"{w}"' for w in words)


def choose_gpus(needed: int, node_gpus: Sequence[GpuInfo] | Sequence[int], held: Collection[int]) -> list[int] | None:
    """The lowest `needed` GPU indices that nobody holds; None when there are not enough."""
    if needed <= 0:
        return []
    indices = sorted(g.index if isinstance(g, GpuInfo) else int(g) for g in node_gpus)
    free = [i for i in indices if i not in held]
    return free[:needed] if len(free) >= needed else None


def _capacity(res: Resources, node: Node, out: _Reasons) -> None:
    """Requirements no amount of waiting can meet on this node."""
    if res.node is not None and res.node != node.name:
        out.never.append(f'the job is pinned to "{res.node}"')
    missing = [lbl for lbl in res.labels if lbl not in node.labels]
    if missing:
        out.never.append(f"lacks label{'s' if len(missing) > 1 else ''} {_quote(missing)}")
    if res.gpus > len(node.gpus):
        out.never.append(f"needs {_plural(res.gpus, 'GPU')}, has {len(node.gpus)}")
    # 0 means the inventory did not say; the node is not refused for what it did not report.
    if node.cpus and res.cpus > node.cpus:
        out.never.append(f"needs {_plural(res.cpus, 'CPU')}, has {node.cpus}")
    if node.memory_total and res.memory > node.memory_total:
        out.never.append(f"needs {size(res.memory)} memory, has {size(node.memory_total)}")


def _state(node: Node, out: _Reasons) -> None:
    if node.state == NodeState.DOWN:
        out.later.append("down")
    elif node.state == NodeState.STALE:
        age = f" (no heartbeat for {node.heartbeat_age:.0f}s)" if node.heartbeat_age is not None else ""
        out.later.append(f"stale{age}")
    elif node.state == NodeState.DRAINING or node.draining:
        out.later.append(f"draining ({node.drain_reason})" if node.drain_reason else "draining")


def _load(res: Resources, node: Node, held: Committed, out: _Reasons) -> tuple[int, ...]:
    """What is taken right now; returns the GPUs the job would get."""
    busy = max(node.slots_busy, held.jobs)
    if node.slots_total and busy >= node.slots_total:
        out.later.append(f"all {_plural(node.slots_total, 'slot')} busy")
    # The epsilon keeps sums of fractional cpus (0.1 + 0.2) from refusing an exact fit.
    if node.cpus and res.cpus > node.cpus - held.cpus + 1e-9:
        out.later.append(f"needs {_plural(res.cpus, 'CPU')} free, has {_num(max(node.cpus - held.cpus, 0))}")
    if node.memory_total and res.memory and res.memory > node.memory_total - held.memory:
        out.later.append(f"needs {size(res.memory)} free, has {size(max(node.memory_total - held.memory, 0))}")
    chosen = choose_gpus(res.gpus, node.gpus, held.gpus)
    if chosen is None:
        free = [g.index for g in node.gpus if g.index not in held.gpus]
        out.later.append(f"needs {_plural(res.gpus, 'GPU')} free, has {len(free)}")
        return ()
    return tuple(chosen)


def verdict(res: Resources, node: Node, held: Committed | None = None, queue: str | None = None) -> NodeVerdict:
    """Whether one node can run the job now, later, or never, and every reason it cannot now."""
    out = _Reasons()
    _capacity(res, node, out)
    if queue is not None and node.queues and queue not in node.queues:
        out.never.append(f'does not serve queue "{queue}"')
    if out.never:
        return NodeVerdict(node.name, Fit.NEVER, tuple(out.never))
    _state(node, out)
    gpus = _load(res, node, held or Committed(), out)
    if out.later:
        return NodeVerdict(node.name, Fit.LATER, tuple(out.later))
    return NodeVerdict(node.name, Fit.NOW, (), gpus)


def explain(res: Resources, nodes: Sequence[Node], committed: Mapping[str, Committed],
            queue: str | None = None) -> list[NodeVerdict]:
    """Every node's verdict on the job, fitting nodes first, then by name."""
    rank = {Fit.NOW: 0, Fit.LATER: 1, Fit.NEVER: 2}
    verdicts = [verdict(res, n, committed.get(n.name), queue) for n in nodes]
    return sorted(verdicts, key=lambda v: (rank[v.fit], v.node))


def choose_node(res: Resources, nodes: Sequence[Node], committed: Mapping[str, Committed],
                queue: str | None = None) -> NodeVerdict | None:
    """The node the job should take now, or None; GPU nodes are kept for jobs that need GPUs."""
    by_name = {n.name: n for n in nodes}
    fits = [v for v in explain(res, nodes, committed, queue) if v.fit is Fit.NOW]
    if not fits:
        return None

    def spare(v: NodeVerdict) -> tuple[int, float, str]:
        n, held = by_name[v.node], committed.get(v.node, Committed())
        free_gpus = len([g for g in n.gpus if g.index not in held.gpus]) - res.gpus
        return free_gpus, -(n.cpus - held.cpus), v.node

    return min(fits, key=spare)


def never_fits(res: Resources, nodes: Sequence[Node]) -> str | None:
    """Why no node of the grid could ever run the job, or None if one could.

    Every known node counts, down ones included: they may come back. With no nodes known
    yet (an agent still starting) nothing is refused.
    """
    if not nodes:
        return None
    if res.node is not None:
        pinned = next((n for n in nodes if n.name == res.node), None)
        if pinned is None:
            return f'no node named "{res.node}" on this grid'
        v = verdict(res, pinned)
        return f'node "{res.node}" can never run it: {"; ".join(v.reasons)}' if v.fit is Fit.NEVER else None
    verdicts = [verdict(res, n) for n in nodes]
    if any(v.fit is not Fit.NEVER for v in verdicts):
        return None
    # Name the one requirement no node meets, when there is one; else each node's reasons.
    every_label = {lbl for n in nodes for lbl in n.labels}
    missing = [lbl for lbl in res.labels if lbl not in every_label]
    if missing:
        return f"no node has label{'s' if len(missing) > 1 else ''} {_quote(missing)}"
    most_gpus = max(len(n.gpus) for n in nodes)
    if res.gpus > most_gpus:
        return f"needs {_plural(res.gpus, 'GPU')}; the largest node has {most_gpus}"
    most_cpus = max(n.cpus for n in nodes)
    if all(n.cpus for n in nodes) and res.cpus > most_cpus:
        return f"needs {_plural(res.cpus, 'CPU')}; the largest node has {most_cpus}"
    most_mem = max(n.memory_total for n in nodes)
    if all(n.memory_total for n in nodes) and res.memory > most_mem:
        return f"needs {size(res.memory)} memory; the largest node has {size(most_mem)}"
    return "no node has all of it: " + "; ".join(str(v) for v in sorted(verdicts, key=lambda v: v.node))
