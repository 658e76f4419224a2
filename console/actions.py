"""The console's grid actions: each runs in a worker thread and hands back an `Outcome`.

An action never touches the UI: it returns what to tell the user (`Note`s), what to ask before
going on (a `Question` whose `then` is the next action), and whether the grid changed. The app
shows an Outcome on the UI thread, and an error an action raised, in one `Worker.StateChanged`
handler.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

from rich.text import Text

from console.sanitize import clean
from console.screens.confirm import CONFIRM_LISTED
from console.screens.submit import Submission
from console.screens.sweep import cell_label
from gridcore.client import Grid, GridError
from gridcore.connection import describe_error
from gridcore.jobfilter import JobFilter
from gridcore.models import JobState

log = logging.getLogger("gridtui")

REQUEUE_ALL_CAP = 10_000
"""Most failed jobs one `R` requeues (the confirmation says so when the cap is hit)."""

FAILED_PAGE = 1000
"""Failed jobs read per call while `R` collects them."""

CANCEL_WAIT = 10.0
"""Seconds a cancel waits for the agent to confirm a running job is dead."""


@dataclass(frozen=True)
class Note:
    """One notification."""

    message: str
    title: str = ""
    severity: str = "information"
    timeout: float | None = None


@dataclass(frozen=True)
class Action:
    """One thing to do in a worker thread: `run(grid)`; `what` titles its failure."""

    what: str
    run: Callable[[Grid], Outcome]
    writes: bool = True  # changes the grid: a read-only console runs none of these


@dataclass(frozen=True)
class Question:
    """Ask before going on: `then` runs only on yes."""

    title: str
    body: Text
    yes: str
    then: Action


@dataclass(frozen=True)
class Outcome:
    """What an action hands back to the UI thread."""

    notes: tuple[Note, ...] = ()
    ask: Question | None = None
    changed: bool = False  # the grid changed: read it again now
    open_job: str | None = None  # a job to open


def failure(what: str, e: BaseException) -> Note:
    """The notification for an error: the grid's own words, else the broker's, else the type."""
    if isinstance(e, (GridError, ValueError)):
        detail = str(e)
    elif isinstance(e, OSError) or type(e).__module__.startswith("redis"):
        detail = describe_error(e)
    else:
        log.error("%s\n%s", what, "".join(traceback.format_exception(e)))
        detail = f"{type(e).__name__}: {e}"
    return Note(detail, title=what, severity="error", timeout=10)


def _s(n: int) -> str:
    return "s" if n > 1 else ""


# ---- actions -----------------------------------------------------------------------------


def submit(sub: Submission) -> Action:
    """Submit the form's jobs (or a descriptor's)."""
    return Action("submit failed", partial(_submit, sub=sub))


def _submit(grid: Grid, sub: Submission) -> Outcome:
    ids = grid.submit_many(list(sub.specs), job_ids=sub.job_ids, groups=sub.groups or None)
    where = f" from {sub.source}" if sub.source else ""
    what = ids[0] if len(ids) == 1 else f"{len(ids)} jobs"
    return Outcome((Note(f"submitted {what}{where}", title="submitted"),), changed=True)


def find_job(typed: str) -> Action:
    """The job a typed id (or a unique start of one) names, to open it; a read, allowed read-only."""
    return Action(f"open job {clean(typed, 40)}", partial(_find_job, typed=typed), writes=False)


def _find_job(grid: Grid, typed: str) -> Outcome:
    return Outcome(open_job=grid.resolve(typed))


def cancel(ids: Sequence[str]) -> Action:
    """Cancel each job, waiting a little for the agent to confirm running ones are dead."""
    return Action("cancel failed", partial(_cancel, ids=tuple(ids)))


def _cancel(grid: Grid, ids: tuple[str, ...]) -> Outcome:
    notes: list[Note] = []
    done = pending = 0
    try:  # the queued ones in one atomic step (none of them starts), then the running ones
        states = grid.cancel_many(ids, wait=CANCEL_WAIT)
    except Exception as e:  # noqa: BLE001 - shown to the user, like any action's failure
        return Outcome((failure("cancel failed", e),), changed=True)
    for jid in ids:
        state = states[jid]
        if state is JobState.CANCELED:
            done += 1
        elif state.terminal:
            notes.append(Note(f"{jid[:8]} had already {state.value}", severity="warning"))
        else:
            pending += 1
    if done:
        notes.append(Note(f"canceled {done} job{_s(done)}" if len(ids) > 1 else f"canceled {ids[0]}",
                          title="canceled"))
    if pending:
        notes.append(Note(f"cancel requested for {pending} job(s); the agent has not confirmed yet",
                          severity="warning"))
    return Outcome(tuple(notes), changed=True)


def requeue(ids: Sequence[str], noun: str = "job") -> Action:
    """Requeue each failed or canceled job; a failure is named, up to a screenful."""
    return Action("requeue failed", partial(_requeue, ids=tuple(ids), noun=noun))


def _requeue(grid: Grid, ids: tuple[str, ...], noun: str) -> Outcome:
    notes: list[Note] = []
    ok = failed = 0
    for jid in ids:
        try:
            grid.requeue(jid)
            ok += 1
        except Exception as e:  # noqa: BLE001 - one job's failure must not stop the others
            failed += 1
            if failed <= CONFIRM_LISTED:
                notes.append(failure(f"requeue {jid[:8]} failed", e))
    if ok:
        notes.append(Note(f"requeued {ok} {noun}{_s(ok)}", title="requeued"))
    if failed:
        notes.append(Note(f"{failed} {noun}{_s(failed)} of {len(ids)} could not be requeued", severity="error"))
    return Outcome(tuple(notes), changed=True)


def requeue_failed_in(flt: JobFilter) -> Action:
    """Collect the failed jobs `flt` matches (bounded), then ask to requeue them."""
    return Action("could not list failed jobs", partial(_requeue_failed_in, flt=flt))


def failed_ids(grid: Grid, flt: JobFilter, cap: int = REQUEUE_ALL_CAP) -> list[str]:
    """Ids of the failed jobs `flt` matches, newest first, at most `cap` (what `R` requeues)."""
    wanted = replace(flt, state=JobState.FAILED)
    ids: dict[str, None] = {}
    offset = 0
    while len(ids) < cap:
        jobs, total = grid.list(state=JobState.FAILED, queue=flt.queue, node=flt.node, offset=offset,
                                limit=FAILED_PAGE)
        ids.update((j.id, None) for j in jobs if wanted.matches(j))
        # Pages are counted in the index read, not in the jobs that passed the filter.
        offset += FAILED_PAGE
        if offset >= total:
            break
    return list(ids)[:cap]


def _requeue_failed_in(grid: Grid, flt: JobFilter) -> Outcome:
    ids = failed_ids(grid, flt)
    if not ids:
        return Outcome((Note("no failed jobs in the current filter", severity="warning"),))
    scope = f" matching '{flt.describe()}'" if flt.active else ""
    more = f" (the first {REQUEUE_ALL_CAP:,})" if len(ids) >= REQUEUE_ALL_CAP else ""
    title = f"Requeue {len(ids):,} failed job{_s(len(ids))}{more}?"
    body = Text(f"every failed job{clean(scope, 120)}")
    return Outcome(ask=Question(title, body, "Requeue all", requeue(ids)))


def retry_cells(group_id: str, name: str = "") -> Action:
    """Collect a sweep's failed or canceled cells (`grid requeue --group`), then ask."""
    label = clean(name or group_id, 60)
    return Action(f"could not read sweep {label}", partial(_retry_cells, group_id=group_id, label=label))


def _retry_cells(grid: Grid, group_id: str, label: str) -> Outcome:
    ids = grid.failed_cells(group_id)
    if not ids:
        return Outcome((Note(f"no failed or canceled cells in sweep {label}", severity="warning"),))
    shown = grid.get_many(ids[:CONFIRM_LISTED])
    body = Text("\n").join(cell_label(j) for j in shown)
    if len(ids) > len(shown):
        body.append(f"\n… and {len(ids) - len(shown):,} more")
    title = f"Retry {len(ids):,} failed cell{_s(len(ids))} of sweep {label}?"
    return Outcome(ask=Question(title, body, "Retry cells", requeue(ids, noun="cell")))


def drain(node: str) -> Action:
    """Stop a node taking new jobs; what it runs finishes."""
    return Action(f"drain {node} failed", partial(_node_op, node=node, drain=True))


def resume(node: str) -> Action:
    """Let a drained node take jobs again."""
    return Action(f"resume {node} failed", partial(_node_op, node=node, drain=False))


def _node_op(grid: Grid, node: str, drain: bool) -> Outcome:
    if drain:
        grid.drain(node, reason="drained from gridtui")
    else:
        grid.resume(node)
    return Outcome((Note(f"{'draining' if drain else 'resumed'} {node}"),), changed=True)
