"""What the screens tell the app: small past-tense messages, every one handled by `GridApp`.

A screen owns what it shows (its filter, page, selection) and never calls the app: it posts
one of these, and the app reads the grid, navigates or runs an action. Write actions arrive
already confirmed by the user (the screen asked); the app asks itself only where it must read
the grid first (`RequeueFailedRequested`, `RetryCellsRequested`).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.screen import Screen

from gridcore.jobfilter import JobFilter


@dataclass
class RefreshRequested(Message):
    """`screen` shows what was not read lately (a new page or filter, or itself again)."""

    screen: Screen

    @property
    def control(self) -> Screen:
        return self.screen


@dataclass
class JobSelected(Message):
    """Open one job's detail and output."""

    job_id: str


@dataclass
class GroupSelected(Message):
    """Open one sweep's parameter grid."""

    group_id: str
    name: str = ""


@dataclass
class QueueSelected(Message):
    """Show the jobs of one queue."""

    queue: str


@dataclass
class NodeSelected(Message):
    """Show the jobs of one node."""

    node: str


@dataclass
class CancelRequested(Message):
    """Cancel these jobs (the user confirmed)."""

    job_ids: tuple[str, ...]


@dataclass
class RequeueRequested(Message):
    """Requeue these failed or canceled jobs (the user confirmed)."""

    job_ids: tuple[str, ...]


@dataclass
class RequeueFailedRequested(Message):
    """Requeue every failed job that `filter` matches, after the app counts them and asks."""

    filter: JobFilter


@dataclass
class RetryCellsRequested(Message):
    """Requeue every failed or canceled cell of a sweep, after the app counts them and asks."""

    group_id: str
    name: str = ""


@dataclass
class DrainRequested(Message):
    """Stop `node` taking new jobs (the user confirmed)."""

    node: str


@dataclass
class ResumeRequested(Message):
    """Let a drained `node` take jobs again."""

    node: str
