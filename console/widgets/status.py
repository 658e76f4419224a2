"""The broker-down banner and the one-line grid summary shown on every screen."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.sanitize import clean
from gridcore.models import JobState, NodeState


class Banner(Static):
    """Hidden while the broker answers; says what failed and when the next try is."""

    def show_error(self, message: str, retry_in: float, attempts: int) -> None:
        t = Text(" broker unreachable ", style="bold reverse")
        t.append(" " + clean(message, 300))
        t.append(f" — retrying in {retry_in:.0f}s (attempt {attempts}); data below is stale")
        self.update(t)
        self.add_class("-visible")

    def clear_error(self) -> None:
        self.remove_class("-visible")
        self.update("")


class Summary(Static):
    """Where we are and how the grid is doing, in one line."""

    def show(self, where: str, snap, read_only: bool) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("grid ", style="bold")
        t.append(clean(where, 60))
        if snap is not None and not snap.error:
            states = snap.node_states.values() if snap.node_states is not None else [n.state for n in snap.nodes or ()]
            states = list(states)
            up = sum(1 for s in states if s is NodeState.UP)
            t.append(f" │ nodes {up}/{len(states)} up")
            draining = sum(1 for s in states if s is NodeState.DRAINING)
            if draining:
                t.append(f", {draining} draining", style="yellow")
            counts = {s: 0 for s in (JobState.QUEUED, JobState.RUNNING, JobState.FAILED)}
            for q in snap.queues:
                counts[JobState.QUEUED] += q.queued
                counts[JobState.RUNNING] += q.running
                counts[JobState.FAILED] += q.failed
            t.append(f" │ queued {counts[JobState.QUEUED]} running {counts[JobState.RUNNING]}")
            t.append(f" failed {counts[JobState.FAILED]}", style="red" if counts[JobState.FAILED] else "")
        if read_only:
            t.append(" │ ")
            t.append("READ-ONLY", style="bold yellow")
        self.update(t)
