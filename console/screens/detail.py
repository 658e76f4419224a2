"""Job detail: every field `grid show` prints, and the live output pane."""

from __future__ import annotations

import json
from dataclasses import replace

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from console import format as fmt
from console.messages import CancelRequested, RequeueRequested
from console.output import OutputBuffer
from console.sanitize import clean
from console.screens.base import ConsoleContext, GridScreen
from console.screens.confirm import job_list
from console.widgets.output import OutputView
from gridcore import efficiency
from gridcore.models import Job, JobState
from gridcore.records import Gaps


COMMAND_LINES = 200
"""Lines of a job's command the detail shows (the fields box scrolls)."""


def job_fields(job: Job, now: float) -> Text:
    """Label/value lines; empty fields are left out so 24 rows go further."""
    rows: list[tuple[str, str, str]] = [
        ("id", job.id, "bold"),
        ("name", job.name, ""),
        ("state", job.state.value + (f" — {job.reason}" if job.reason else ""), fmt.STATE_STYLE.get(job.state, "")),
        ("command", job.command, ""),
        ("cancel", job.cancel, "" if job.cancel.startswith("canceled by") else "bold red"),
        ("signature", job.signature, "" if job.signature.startswith("verified") else "bold red"),
        ("queue", job.queue, ""),
        ("node", f"{job.node or ''}" + (f" slot {job.slot}" if job.slot is not None else ""), ""),
        ("submitter", job.submitter or "", ""),
        ("submitted", f"{fmt.stamp(job.enqueued_at)} ({fmt.ago(job.enqueued_at, now)} ago)" if job.enqueued_at else "", ""),
        ("started", fmt.stamp(job.started_at), ""),
        ("ended", fmt.stamp(job.ended_at), ""),
        ("runtime", fmt.runtime(job, now), ""),
        ("exit", fmt.exit_status(job), "red" if job.exit_code else ""),
        ("timeout", fmt.duration(job.timeout) if job.timeout else "", ""),
        ("retries left", "" if job.retries_left is None else str(job.retries_left), ""),
        ("resources", _compact(job.resources), ""),
        ("gpus", ", ".join(map(str, job.gpus)), ""),
        ("group", job.group or "", ""),
        ("params", _compact(job.params), ""),
        ("tags", ", ".join(map(str, job.tags)), ""),
        ("env", ", ".join(map(str, job.env_names)), ""),  # names only: values are not the viewer's
        ("waiting on", ", ".join(map(str, job.waiting_on)), "yellow"),
        ("output", f"stdout {fmt.size(job.stdout_bytes)}, stderr {fmt.size(job.stderr_bytes)}"
         if job.stdout_bytes or job.stderr_bytes else "", ""),
        ("dropped", f"{fmt.size(job.dropped_bytes)} over the output budget" if job.dropped_bytes else "", "yellow"),
        ("log", job.log_path or "", ""),
        *usage_rows(job),
    ]
    for i, a in enumerate(job.attempts, 1):
        rows.append((f"attempt {i}", _compact(a), "dim"))
    rows += [("problem", p, "yellow") for p in job.problems]  # e.g. a meta that disagrees with its envelope
    t = Text()
    for name, value, style in rows:
        if not value:
            continue
        if t:
            t.append("\n")
        t.append(f"{name:>12} ", style="bold dim")
        if name == "command":
            # A script keeps its lines, each under the one before.
            lines = str(value).splitlines()[:COMMAND_LINES] or [""]
            t.append(("\n" + " " * 13).join(clean(line, 2000) for line in lines), style=style)
            continue
        t.append(clean(value, 300), style=style if isinstance(style, str) else "")
    return t


def usage_rows(job: Job) -> list[tuple[str, str, str]]:
    """Used against asked, then what to ask next time (gridcore/efficiency.py, as `grid show`)."""
    used = efficiency.used_lines(job.usage, job.resources)
    rows = [("usage" if i == 0 else "", f"{u.label} {u.text}", "") for i, u in enumerate(used)]
    advice = efficiency.advice(job.usage, job.resources, job.reason_kind)
    return rows + [("advice" if i == 0 else "", a, "yellow") for i, a in enumerate(advice)]


def _compact(d) -> str:
    if not d:
        return ""
    try:
        return json.dumps(d, separators=(",", ":"), sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(d)


class JobDetailScreen(GridScreen):
    """Pushed over the jobs view; the poller reads this job and its new output."""

    VIEW = "detail"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="detail.back", tooltip="back to the list"),
        Binding("c", "cancel", "Cancel", id="detail.cancel", tooltip="cancel the job (asks first)"),
        Binding("r", "requeue", "Requeue", id="detail.requeue", tooltip="run the failed or canceled job again"),
        Binding("i", "toggle_fields", "Fields", id="detail.fields", tooltip="more or fewer of the job's fields"),
        Binding("y", "copy_id", "Copy id", id="detail.copy", show=False, tooltip="copy the job's id"),
    ]

    def __init__(self, ctx: ConsoleContext, job_id: str) -> None:
        super().__init__(ctx)
        self.job_id = job_id
        self.job: Job | None = None
        self.buffer = OutputBuffer()
        self.fresh = True  # nothing read for the pane yet
        self.gaps = Gaps()
        self._fallback_done = False
        self._shown_version = 0

    def compose(self) -> ComposeResult:
        yield from self.compose_top()
        with VerticalScroll(id="fields-box"):
            yield Static(Text(f"loading job {clean(self.job_id, 64)}…"), id="fields")
        yield Static(id="output-status", classes="status-line")
        yield OutputView(self.buffer, id="output")
        yield from self.compose_bottom()

    def on_mount(self) -> None:
        self.query_one(OutputView).focus()
        self._status()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if not allowed or self.job is None:
            return allowed
        if action == "cancel":
            return not self.job.state.terminal
        if action == "requeue":
            return self.job.state in (JobState.FAILED, JobState.CANCELED)
        return True

    # ---- snapshot -----------------------------------------------------------------------

    def request(self, base):
        return replace(super().request(base), job_id=self.job_id, after=self.buffer.cursor, fresh=self.fresh)

    def apply(self, snap) -> bool:
        if not super().apply(snap) or snap.request.job_id != self.job_id:
            return False
        if snap.request.after != self.buffer.cursor:
            return False  # read for an older cursor (the pane was reset); the next tick rereads
        view = self.query_one(OutputView)
        if snap.request.fresh:
            self.fresh = False
        for chunk in snap.chunks:
            if chunk.stream in ("stdout", "stderr"):
                gap = self.gaps.gap(chunk)
                if gap:
                    self.buffer.gap(gap_line(*gap))
                self.buffer.feed(chunk.stream, chunk.data, chunk.id)
            elif chunk.stream == "end":
                self.buffer.finish()
                self.buffer.note(_end_line(chunk), chunk.id)
            else:
                self.buffer.note(clean(chunk.data, 500), chunk.id)
        if snap.job_missing:
            self.query_one("#fields", Static).update(
                Text(f"job {clean(self.job_id, 64)} is no longer on the grid (expired or deleted)", style="yellow"))
        elif snap.job is not None:
            changed = self.job != snap.job
            self.job = snap.job
            if changed:
                self.query_one("#fields", Static).update(job_fields(snap.job, snap.now))
                self.refresh_bindings()
            self._fallback(snap)
        if self.buffer.version != self._shown_version:
            self._shown_version = self.buffer.version
            view.written()
        self._status()
        return True

    def _fallback(self, snap) -> None:
        """A finished job whose live stream is gone: show the tails kept in its result."""
        job = snap.job
        if self._fallback_done or not job.state.terminal or snap.chunks or len(self.buffer) or self.fresh:
            return
        self._fallback_done = True
        if job.stdout or job.stderr:
            self.buffer.note("live output has expired; the last KiB of each stream from the result:")
            if job.stdout:
                self.buffer.feed("stdout", str(job.stdout).encode())
            if job.stderr:
                self.buffer.feed("stderr", str(job.stderr).encode())
            self.buffer.finish()
        else:
            self.buffer.note("no output was recorded")

    @on(OutputView.Changed)
    def _status(self) -> None:
        view = self.query_one(OutputView)
        b = self.buffer
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{len(b) + b.trimmed:,} lines")
        if b.trimmed:
            t.append(f" ({b.trimmed:,} earliest dropped from view)", style="yellow")
        if self.gaps.bytes or (self.job is not None and self.job.dropped_bytes):
            left_out = max(self.gaps.bytes, self.job.dropped_bytes if self.job is not None else 0)
            t.append(f" │ {fmt.size(left_out)} not kept, full log on the node", style="yellow")
        if view.follow and not view.unseen:
            t.append(" │ following", style="green")
        elif view.unseen:
            t.append(f" │ paused, {view.unseen:,} new below — end to follow", style="bold yellow")
        else:
            t.append(" │ paused — f or end to follow", style="yellow")
        self.query_one("#output-status", Static).update(t)

    # ---- actions ------------------------------------------------------------------------

    def action_cancel(self) -> None:
        if self.job is not None:
            self.confirm("Cancel 1 job?", job_list([self.job]), "Cancel jobs",
                         lambda: self.post_message(CancelRequested((self.job_id,))))

    def action_requeue(self) -> None:
        if self.job is None:
            return

        def confirmed() -> None:
            self.post_message(RequeueRequested((self.job_id,)))
            self._reset_output()

        self.confirm("Requeue 1 job?", job_list([self.job]), "Requeue", confirmed)

    def _reset_output(self) -> None:
        # A requeued job starts a new output stream from scratch.
        self.buffer = OutputBuffer()
        self.fresh = True
        self.gaps = Gaps()
        self._fallback_done = False
        self._shown_version = 0
        self.query_one(OutputView).reset(self.buffer)

    def action_copy_id(self) -> None:
        self.copy(self.job_id)

    def action_toggle_fields(self) -> None:
        self.query_one("#fields-box").toggle_class("-expanded")


def gap_line(size: int, lines: int) -> str:
    """The line that stands where output was left out of the broker."""
    return (f"… {fmt.size(size)} ({lines:,} line{'s' if lines != 1 else ''}) of output not kept in the broker "
            "here; the full log is on the node …")


def _end_line(chunk) -> str:
    if chunk.reason:
        what = clean(chunk.reason, 100)
    elif chunk.signal:
        what = f"killed by signal {chunk.signal}"
    else:
        what = f"exit code {chunk.exit_code}"
    return f"end of output: {what}"
