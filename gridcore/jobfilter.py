"""The jobs filter: state, queue, node and free text, typed as `state:failed queue:gpu text`.

One filter for every place that selects jobs by what a person typed: the console's `/` and
its "requeue failed" (`R`), `grid ls --filter` and `grid requeue --all-failed`. The broker has
no full-text index, so the state, queue and node parts select through the grid's indexes and
the text part is matched here, on each job read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gridcore.models import Job, JobState

STATE_CYCLE = (None, JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.FINISHED,
               JobState.CANCELED, JobState.WAITING, JobState.SCHEDULED)
"""Order the `f` key steps through states (running first: what operators look at most)."""


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class JobFilter:
    state: JobState | None = None
    queue: str | None = None
    node: str | None = None
    text: str = ""

    @property
    def active(self) -> bool:
        return bool(self.state or self.queue or self.node or self.text)

    def matches(self, job: Job) -> bool:
        """Does `job` pass every part of the filter? Text matches, case-blind, a word of the
        name, command or failure reason, the reason kind (`lost`) or the start of the id."""
        if self.state is not None and job.state is not self.state:
            return False
        if self.queue and job.queue != self.queue:
            return False
        if self.node and job.node != self.node:
            return False
        needle = self.text.lower()
        if not needle:
            return True
        return (needle in job.name.lower() or needle in job.command.lower() or job.id.startswith(needle)
                or needle in (job.reason or "").lower() or needle == job.reason_kind)

    def next_state(self) -> JobFilter:
        i = STATE_CYCLE.index(self.state) if self.state in STATE_CYCLE else 0
        return replace(self, state=STATE_CYCLE[(i + 1) % len(STATE_CYCLE)])

    def describe(self) -> str:
        parts = []
        if self.state:
            parts.append(f"state:{self.state.value}")
        if self.queue:
            parts.append(f"queue:{self.queue}")
        if self.node:
            parts.append(f"node:{self.node}")
        if self.text:
            parts.append(self.text)
        return " ".join(parts)


def parse(query: str) -> JobFilter:
    """`state:failed queue:gpu node:a words...` -> JobFilter; unknown states are an error."""
    state = queue = node = None
    words = []
    for token in query.split():
        key, sep, value = token.partition(":")
        key = key.lower()
        if sep and key in ("state", "s", "queue", "q", "node", "n") and value:
            if key in ("state", "s"):
                try:
                    state = JobState(value.lower())
                except ValueError:
                    names = ", ".join(s.value for s in JobState)
                    raise FilterError(f"unknown state {value!r} (one of {names})") from None
            elif key in ("queue", "q"):
                queue = value
            else:
                node = value
        else:
            words.append(token)
    return JobFilter(state=state, queue=queue, node=node, text=" ".join(words))
